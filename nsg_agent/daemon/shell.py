"""The daemon's I/O shell (:class:`Daemon`): it runs a Reconciler until SIGTERM/SIGINT.

Watchdog observers on the directories of the config file and of every service-tag file (the
source's ``watch``: editors replace files by rename, so the directory is watched, not the
file), a pyroute2 link monitor, signal handlers (SIGHUP reload, SIGTERM/SIGINT stop), the
systemd watchdog, and the loop that calls ``Reconciler.tick()`` when something is due. All
decisions are the reconciler's (nsg_agent.daemon.reconciler) and its scheduler's; this module
only turns events into ``mark_dirty`` calls and waits.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from nsg_agent.daemon.reconciler import Reconciler
from nsg_agent.host.notify import Notifier

BASELINE_DELAY = 1.0  # seconds of quiet after an apply before the listing baseline is taken


class Daemon:
    """Runs a Reconciler until SIGTERM/SIGINT. See the module docstring."""

    def __init__(self, reconciler: Reconciler, *, netns: str | None = None,
                 notifier: Notifier | None = None, remove_on_exit: bool = False,
                 watch_links: bool = True, watch_files: bool = True, log: Any = None):
        self.reconciler = reconciler
        # The daemon takes the listing fingerprint off the edit path (see step()).
        reconciler.defer_fingerprint = True
        self.netns = netns
        self.notifier = notifier or reconciler.notifier
        self.remove_on_exit = remove_on_exit
        self.watch_links = watch_links
        self.watch_files = watch_files
        self.log = log or reconciler.log
        self._wake = threading.Event()
        self._owner_pid = os.getpid()
        self._stop = False
        self._stop_watch: Any = None
        self._links = None
        self.next_watchdog: float | None = None

    # callbacks (any thread) ------------------------------------------------------------------
    def on_source_change(self, reason: str, complete: bool = False) -> None:
        """The source says it may have changed. ``complete``: a whole new version is there
        (a file renamed into place or closed after writing): no debounce needed."""
        self.reconciler.mark_dirty(reason, complete=complete)
        self._wake.set()

    def on_link(self, event: str, ifname: str) -> None:
        self.log.info(f"link.{event}", interface=ifname, netns=self.netns or "host")
        self.reconciler.mark_dirty(f"link:{event}:{ifname}")
        self._wake.set()

    def on_link_error(self, error: BaseException) -> None:
        self.log.error("link.monitor_failed", error=str(error))

    def _in_forked_child(self, signum: int) -> bool:
        """pyroute2 forks short-lived helpers (e.g. to open a socket in a namespace) and ends
        them with SIGTERM. A fork inherits these handlers; if it ran them it would ignore the
        signal and its parent would wait for it forever. A child takes the default action."""
        if os.getpid() == self._owner_pid:
            return False
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return True

    def handle_sighup(self, signum: int = signal.SIGHUP, frame: Any = None) -> None:
        if self._in_forked_child(signum):
            return
        self.log.info("signal.reload", signal="SIGHUP")
        self.reconciler.mark_dirty("sighup", immediate=True)
        self._wake.set()

    def handle_stop(self, signum: int = signal.SIGTERM, frame: Any = None) -> None:
        if self._in_forked_child(signum):
            return
        self.log.info("signal.stop", signal=signal.Signals(signum).name)
        self._stop = True
        self._wake.set()

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.log.info("agent.starting", config=self.reconciler.origin, netns=self.netns or "host",
                      mode=self.reconciler.mode, resync=self.reconciler.resync_interval, pid=os.getpid())
        if self.watch_files:
            self._stop_watch = self.reconciler.source.watch(self.on_source_change)
        if self.watch_links:
            from nsg_agent.host.links import LinkMonitor

            self._links = LinkMonitor(self.netns, self.on_link, self.on_link_error).start()
        if self.notifier.watchdog_interval:
            self.next_watchdog = self.reconciler.clock()
        self.reconciler.mark_dirty("startup", immediate=True)

    def step(self, max_wait: float = 1.0) -> None:
        """Wait until something is due (or an event arrives), then do it."""
        now = self.reconciler.clock()
        deadline = self.reconciler.next_deadline()
        if self.next_watchdog is not None:
            deadline = min(deadline, self.next_watchdog)
        timeout = max(0.0, min(deadline - now, max_wait))
        if timeout > 0:
            self._wake.wait(timeout)
        self._wake.clear()
        if self._stop:
            return
        self.reconciler.tick()
        now = self.reconciler.clock()
        self._maybe_baseline(now)
        if self.next_watchdog is not None and now >= self.next_watchdog:
            self.notifier.watchdog()
            self.next_watchdog = now + (self.notifier.watchdog_interval or 1.0)

    def _maybe_baseline(self, now: float) -> None:
        """Once the table has been quiet for BASELINE_DELAY after an apply, take its listing
        fingerprint in the background (needed to tell our table from others' when the nft
        generation moves)."""
        rec = self.reconciler
        if (rec.defer_fingerprint and rec.kernel_fingerprint is None and rec.applied_clock is not None
                and rec.kernel_generation is not None and rec.dirty_at is None
                and rec.retry_at is None and now - rec.applied_clock >= BASELINE_DELAY):
            rec.start_baseline()

    def stop(self) -> None:
        self.notifier.stopping()
        if self._links is not None:
            self._links.stop()
        if self._stop_watch is not None:
            self._stop_watch()
        if self.remove_on_exit:
            try:
                self.reconciler.remove()
            except Exception as e:  # noqa: BLE001
                self.log.error("table.remove_failed", error=str(e))
        else:
            self.log.info("table.kept", reason="rules stay in force after exit (use --remove-on-exit to remove)")
        self.log.info("agent.stopped")

    def run(self) -> int:
        previous = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
        signal.signal(signal.SIGHUP, self.handle_sighup)
        signal.signal(signal.SIGTERM, self.handle_stop)
        signal.signal(signal.SIGINT, self.handle_stop)
        try:
            self.start()
            while not self._stop:
                # Short waits keep signal handling prompt (handlers run between bytecodes).
                self.step(max_wait=0.2)
        finally:
            self.stop()
            for s, h in previous.items():
                signal.signal(s, h)
        return 0
