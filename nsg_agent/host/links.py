"""Link events of the target namespace (pyroute2 rtnetlink, RTMGRP_LINK), in a thread.

The compiled ruleset names interfaces (``iifname``/``oifname`` verdict maps), so a NIC whose
interface appears later is covered as soon as it exists, without a new apply. The daemon
still logs ``link.added`` / ``link.removed`` and asks for a reconcile, which is a no-op when
nothing changed (the compiled ruleset and the kernel fingerprint are compared first).
"""

from __future__ import annotations

import threading
from typing import Callable

from nsg_agent.host import netns

LinkCallback = Callable[[str, str], None]  # (event "added" | "removed", ifname)


class LinkMonitor:
    """Calls ``callback("added"|"removed", ifname)`` for links appearing/disappearing in
    ``netns_name`` (None: the current namespace). RTM_NEWLINK also reports state changes of
    known links; only names not seen before count as "added"."""

    def __init__(self, netns_name: str | None, callback: LinkCallback,
                 on_error: Callable[[BaseException], None] | None = None):
        self.netns_name = netns_name
        self.callback = callback
        self.on_error = on_error
        self._ipr = None
        self._ready = threading.Event()
        self._stopping = False
        self.known: set[str] = set()
        self._thread = threading.Thread(target=self._main, daemon=True,
                                        name=f"links-{netns_name or 'host'}")

    def start(self, timeout: float = 10.0) -> "LinkMonitor":
        self._thread.start()
        self._ready.wait(timeout)
        return self

    def _main(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_LINK

        try:
            if self.netns_name is not None:
                netns.enter(self.netns_name)  # this thread only
            ipr = IPRoute()
            ipr.bind(groups=RTMGRP_LINK)
            self.known = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            self._ipr = ipr
        except BaseException as e:  # noqa: BLE001 - reported to the daemon
            self._ready.set()
            if self.on_error:
                self.on_error(e)
            return
        self._ready.set()
        try:
            while not self._stopping:
                messages = ipr.get()
                if not messages:  # close() was called
                    break
                for msg in messages:
                    self._handle(msg)
        except BaseException as e:  # noqa: BLE001
            if not self._stopping and self.on_error:
                self.on_error(e)
        finally:
            try:
                ipr.close()
            except Exception:  # noqa: BLE001
                pass

    def _handle(self, msg) -> None:
        name = msg.get_attr("IFLA_IFNAME")
        if not name:
            return
        if msg["event"] == "RTM_NEWLINK" and name not in self.known:
            self.known.add(name)
            self.callback("added", name)
        elif msg["event"] == "RTM_DELLINK" and name in self.known:
            self.known.discard(name)
            self.callback("removed", name)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self._ipr is not None:
            try:
                self._ipr.close()
            except Exception:  # noqa: BLE001
                pass
        if self._thread.is_alive():
            self._thread.join(timeout)
