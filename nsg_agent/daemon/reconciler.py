"""The reconciling daemon: keep one namespace's ``inet nsg_agent`` equal to the file.

Two layers, so the logic is testable without root, threads or a real clock:


- :class:`Reconciler` holds the state machine. Events only mark it *dirty*; ``tick()`` (called
  by the loop with the current time) does at most one full load + resolve + compile + apply
  once the debounce delay has passed, re-applies the last good ruleset when the periodic
  resync finds the kernel table missing or different, and retries failed applies with
  backoff. Bad input never touches the kernel: the last good state stays enforced and the
  error goes to the log (``config.invalid``) and the status file.

  One reconcile is ``sync()`` — read the source, build (nsg_agent.daemon.pipeline), decide
  with the kernel view (nsg_agent.daemon.kernel_view) and write the kernel — which returns
  an :class:`~nsg_agent.daemon.outcome.Outcome`; every observer then gets it
  (nsg_agent.daemon.observers: status file, log, sd_notify, conntrack flush, then metrics
  and the fleet report). When to reconcile is the pure nsg_agent.daemon.scheduler's call.
- :class:`~nsg_agent.daemon.shell.Daemon` (daemon/shell.py) is the I/O shell around it:
  file and link events, signals, the systemd watchdog, the loop that calls ``tick()``.

Event names are stable and documented in docs/daemon.md.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from nsg_agent.compiler.results import RuleIndex, Summary
from nsg_agent.daemon import kernel_view, pipeline
from nsg_agent.daemon.observers import ConntrackFlush, Flusher, LogReport, StatusFile, SystemdNotify
from nsg_agent.daemon.outcome import Observer, Outcome
from nsg_agent.daemon.scheduler import Scheduler
from nsg_agent.daemon.status import Commit, Status, StatusStore, rule_digests, set_sizes
from nsg_agent.daemon.targets import CompileFn, HostTarget, Target, compile_host, host_interfaces
from nsg_agent.desired import loader
from nsg_agent.errors import LoadError, OperationFailed
from nsg_agent.host.notify import Notifier
from nsg_agent.kernel.backend import Backend, batch_payload, stamp_commands
from nsg_agent.kernel.delta import delta
from nsg_agent.kernel.errors import NftError, PermissionDenied
from nsg_agent.logging import get_logger
from nsg_agent.semantics.policy import Policy
from nsg_agent.sources.base import DesiredSource, Snapshot, SourceUnavailable, Unsettled
from nsg_agent.sources.files import FileSource

DEFAULT_DEBOUNCE = 0.15
DEFAULT_RESYNC = 5.0
IDLE_GC_DELAY = 5.0  # seconds without a reconcile before the deferred full garbage collection
# A file some process still holds open for writing, or that changed while it was read, is
# not final: look again after this long (the last good state stays meanwhile).
UNSETTLED_RETRY = 0.25



@dataclass
class Desired:
    """A loaded, resolved and compiled desired state, ready to apply."""

    loaded: loader.LoadedState
    policy: Policy
    commands: list[dict]
    summary: Summary
    rule_index: RuleIndex
    sha256: str  # of the compiled commands
    files: dict[str, str]  # input -> sha256 at load time (the snapshot's inputs)
    payload: bytes | None = None  # the batch as handed to libnftables (sha256 is its digest)
    snapshot: Snapshot | None = None  # what the source handed out


def payload_and_digest(commands: list[dict]) -> tuple[bytes, str]:
    """Serialize the batch once: the bytes libnftables gets, and their sha256 (the
    ``ruleset_sha256`` that tells an unchanged ruleset apart)."""
    payload = batch_payload(commands)
    return payload, hashlib.sha256(payload).hexdigest()


class _Phases:
    """Milliseconds per reconcile phase, for the ``reconcile.timing`` debug event."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.ms[phase] = round(self.ms.get(phase, 0.0) + (now - self._t) * 1000, 1)
        self._t = now


class FatalError(OperationFailed):
    """The daemon cannot work at all (e.g. no permission to program nftables)."""


def _lacks_permission(error: BaseException) -> bool:
    return isinstance(error, (PermissionError, PermissionDenied)) or \
        getattr(error, "errno", None) in (errno.EPERM, errno.EACCES)


class Reconciler:
    """See the module docstring. All public methods are safe to call from any thread."""

    def __init__(self, source: "DesiredSource | str | os.PathLike | list[str | os.PathLike]", backend: Backend,
                 store: StatusStore, *, load_options: dict[str, Any] | None = None,
                 mode: str = "classify", debounce: float = DEFAULT_DEBOUNCE,
                 resync: float = DEFAULT_RESYNC, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, compile_fn: CompileFn = compile_host,
                 target: Target | None = None, observers: "list[Observer] | None" = None,
                 flusher: Flusher | None = None, notifier: Notifier | None = None, log: Any = None):
        """``source``: where the desired state comes from (nsg_agent.sources); a path or a list of
        paths is a FileSource of those files with ``load_options`` (strict, nsg, parameters,
        limits: see loader.load). ``target``: where it is enforced (default: this namespace's
        interfaces, compiled by ``compile_fn``). ``observers``: called with each reconcile's
        Outcome (and a drift repair's or a rollback's), after the built-in ones
        (nsg_agent.daemon.observers: status file, log, sd_notify, conntrack flush)."""
        self.log = log or get_logger(netns=store.netns or "host")
        if isinstance(source, (str, os.PathLike, list, tuple)):
            source = FileSource(source, load_options=load_options, log=self.log)
        self.source: DesiredSource = source
        self.backend = backend
        self.store = store
        self.mode = mode
        self.debounce = debounce
        self.resync_interval = resync
        self.clock = clock
        self.wall = wall
        self.target: Target = target or HostTarget(compile_fn)
        # what the last build remembers for the next (resolve terms, compiled element lists)
        self.memo = pipeline.Memo()
        self.notifier = notifier or Notifier({})
        self._lock = threading.RLock()
        self.last_good: Desired | None = None
        self.kernel_fingerprint: str | None = None  # listing digest of our commit (None: not taken yet)
        self.kernel_generation: int | None = None  # nft ruleset generation after our commit
        self.full_check_every = 10  # resyncs; list the table at least this often
        # The listing fingerprint costs a full table listing (0.3-1 s at scale). With
        # defer_fingerprint the apply records only the nft generation and the listing is
        # taken later, off the edit path (background thread / the next resync).
        self.defer_fingerprint = False
        # One-shot `nsg-agent apply` asks the kernel for a dry-run check before the replace:
        # a refused batch is then reported before anything is attempted. The daemon skips it
        # (the replace is one transaction either way, and the check costs ~0.45 s at scale).
        self.check_first = False
        # An edit is applied as a delta (only the sets and chains that differ, one
        # transaction) when the kernel provably still holds the last commit; else, and for
        # drift repair, the whole table is replaced.
        self.incremental = True
        self.applied_clock: float | None = None  # clock() of the last commit
        self._baseline: threading.Thread | None = None
        self._phases = _Phases()
        self._started = time.perf_counter()  # of the reconcile in progress (Outcome.duration)
        self._resyncs = 0
        # when to work: dirty reasons, debounce, retries with backoff, resync, deferred gc
        self.schedule = Scheduler(debounce=debounce, resync_interval=resync, now=self.clock())
        self.status = Status(netns=store.netns, pid=os.getpid())
        # What follows each outcome (nsg_agent.daemon.observers), then the given observers.
        self.status_file = StatusFile(store, self.status, self.wall, self.log)
        self.notify = SystemdNotify(self.notifier, self.log)
        self.conntrack = ConntrackFlush(flusher, self.log)
        self.observers: list[Observer] = [self.status_file, LogReport(self.log), self.notify,
                                          self.conntrack, *(observers or [])]
        self.applies = 0
        # The record read at start had an apply's intent without its outcome (a kill between
        # the two): until one apply has gone through, nothing is taken as already enforced.
        self.unverified = False
        self._warned_insecure: set[str] = set()
        # run --confirm-edits SECONDS: an applied edit is rolled back to the state before it
        # unless `nsg-agent confirm` takes the pending record in time (nsg_agent.daemon.confirm).
        self.confirm_edits: float | None = None
        self.pending_edit: dict[str, Any] | None = None  # deadline (clock), previous, sha256
        self.rejected: str | None = None  # sha256 of a file content rolled back: not re-applied
        # The lock-out check before an edit: management sessions (established TCP to port 22
        # in conntrack) that the current policy allows and the edit would deny. host_reader()
        # -> (ifname -> addresses, conntrack entries); None (no netlink, e.g. FakeBackend):
        # the check is skipped.
        self.lockout_check = True
        self.host_reader: Callable[[], tuple[dict, list]] | None = None

    def restore(self, previous: Status) -> None:
        """Start from the record a previous process left: its commit, and whether an apply it
        began was recorded as finished (see nsg_agent.daemon.status: intent before, outcome after)."""
        self.status.commit = previous.commit
        pending = previous.pending
        if pending is None:
            return
        c = previous.commit
        if c is not None and c.ruleset_sha256 == pending.get("ruleset_sha256") \
                and c.applied_at >= pending.get("started_at", 0):
            self.store.clear_intent()  # the outcome was written, only the cleanup was missed
            return
        self.unverified = True
        self.status.pending = pending
        self.log.warning("status.unverified", pending=pending,
                         commit=c.ruleset_sha256 if c else None,
                         action="the next reconcile applies the file in full")

    # events ----------------------------------------------------------------------------------
    def mark_dirty(self, reason: str, *, immediate: bool = False, complete: bool = False) -> None:
        """Ask for a full reconcile after the debounce delay (a burst collapses into one).
        ``complete``: the event says a file is whole (renamed into place, closed after
        writing), so only the short COMPLETE_SETTLE is waited, whatever was pending."""
        with self._lock:
            self.schedule.mark(reason, self.clock(), immediate=immediate, complete=complete)

    # the schedule's state, read (and set by tests) through the reconciler
    @property
    def dirty_at(self) -> float | None:
        return self.schedule.dirty_at

    @dirty_at.setter
    def dirty_at(self, value: float | None) -> None:
        self.schedule.dirty_at = value

    @property
    def dirty_reasons(self) -> list[str]:
        return self.schedule.reasons

    @dirty_reasons.setter
    def dirty_reasons(self, value: list[str]) -> None:
        self.schedule.reasons = value

    @property
    def retry_at(self) -> float | None:
        return self.schedule.retry_at

    @property
    def failures(self) -> int:
        return self.schedule.failures.get("apply", 0)

    @property
    def source_failures(self) -> int:
        return self.schedule.failures.get("source", 0)

    @property
    def gc_due_at(self) -> float | None:
        return self.schedule.gc_due_at

    @property
    def compile_fn(self) -> CompileFn | None:
        """The host target's compiler (tests swap it for a fake or a faulty one)."""
        return getattr(self.target, "compile_fn", None)

    @compile_fn.setter
    def compile_fn(self, fn: CompileFn) -> None:
        self.target = HostTarget(fn)

    @property
    def ready(self) -> bool:
        """Has systemd been told READY=1 (an enforced state reached once)?"""
        return self.notify.ready

    @property
    def flusher(self) -> Flusher | None:
        return self.conntrack.flusher

    @flusher.setter
    def flusher(self, fn: Flusher | None) -> None:
        self.conntrack.flusher = fn

    @property
    def origin(self) -> str:
        """The source, as logs and the status file name it (the config file, an etcd URL)."""
        return self.source.origin

    def use_backend(self, backend: Backend) -> None:
        """A target moved (a lab's fabric rebuilt): enforce through ``backend`` from now on.
        Nothing is known of what the new namespace holds, so the next apply replaces."""
        old, self.backend = self.backend, backend
        self.kernel_fingerprint = None
        self.kernel_generation = None
        close = getattr(old, "close", None)
        if close is not None and old is not backend:
            close()

    def next_deadline(self) -> float:
        with self._lock:
            return self.schedule.next_deadline()

    def tick(self) -> None:
        """Do whatever is due at ``clock()``: a debounced reconcile, a retry, a resync."""
        with self._lock:
            now = self.clock()
            reason = self.schedule.take_reconcile(now)
            if reason is not None:
                self.reconcile(reason)
            if self.pending_edit is not None:
                self._check_pending_edit(now)
            if self.schedule.take_resync(now):
                self.resync()
            if self.schedule.take_gc(now):
                self.idle_collect()

    def idle_collect(self) -> None:
        """The full garbage collection deferred by reconcile(), when nothing is pending."""
        self.schedule.gc_due_at = None
        if not gc.isenabled():  # someone else manages the collector
            return
        t0 = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        self.log.debug("reconcile.gc", ms=round((time.perf_counter() - t0) * 1000, 1))

    # the work ------------------------------------------------------------------------------
    def load(self) -> Desired:
        """Read the source, let the target prepare, resolve and compile (no kernel write)."""
        phases = self._phases
        snapshot = self.source.read()
        loaded = snapshot.loaded
        phases.mark("load")
        self.target.prepare(loaded, self)
        built = pipeline.build(loaded, self.target, self.mode, memo=self.memo, phases=phases)
        rs = built.ruleset
        assert rs is not None  # built with a target
        # Serialized later, and only when needed: before a full replace, or after a delta
        # is in force (so the JSON of the whole table is off the edit's critical path).
        return Desired(loaded, built.policy, list(rs.commands), rs.summary,
                       rs.rule_index, "", dict(snapshot.inputs), snapshot=snapshot)

    def reconcile(self, reason: str) -> Outcome:
        """One full load + resolve + compile + apply, and its Outcome (true when the kernel
        now enforces the source; false when the state is bad or the apply failed: the last
        good state stays). Every observer gets the outcome.

        The cyclic garbage collector is paused from load to replace: with the last good
        policy and batch alive, its passes cost about 40% of load + compile. Afterwards the
        live state is frozen (see below) and one full collection runs once the daemon has
        been idle for IDLE_GC_DELAY seconds (``idle_collect``)."""
        with self._lock:
            phases = _Phases()
            if not gc.isenabled():  # someone else manages the collector: leave it alone
                return self._observe(self.sync(reason, phases), phases)
            gc.disable()
            try:
                return self._observe(self.sync(reason, phases), phases)
            finally:
                # What is alive now is the enforced state: long-lived. Freezing it (O(1)) keeps
                # the collector from scanning it: a pass over a maximum-size state takes
                # ~300 ms, which held up the next edit. The few cycles left over are
                # collected once the daemon has been idle for IDLE_GC_DELAY (idle_collect).
                gc.enable()
                gc.freeze()
                self.schedule.collect_after(self.clock(), IDLE_GC_DELAY)

    def _outcome(self, kind: str, reason: str, desired: Desired | None = None, **kw: Any) -> Outcome:
        """The Outcome of the step that just ended; ``enforcing`` is what is in force now."""
        snap = desired.snapshot if desired is not None else None
        kw.setdefault("enforcing", self.last_good.loaded.sha256 if self.last_good is not None else None)
        return Outcome(kind=kind, reason=reason, origin=self.origin, at=self.wall(),
                       duration=round(time.perf_counter() - self._started, 6),
                       sha256=desired.loaded.sha256 if desired is not None else None,
                       ruleset_sha256=(desired.sha256 or None) if desired is not None else None,
                       revision=snap.revision if snap is not None else None, desired=desired, **kw)

    def _observe(self, outcome: Outcome, phases: _Phases | None = None) -> Outcome:
        """Hand ``outcome`` to every observer, each isolated from the others; then the timing
        line of an enforcing reconcile (the sync step's phases and each observer's)."""
        phases = phases or self._phases
        for observer in self.observers:
            try:
                observer(outcome)
            except Exception as e:  # noqa: BLE001 - an observer must never stop enforcement
                self.log.error("observer.failed", observer=getattr(observer, "__name__", repr(observer)),
                               error=f"{type(e).__name__}: {e}")
            phases.mark(getattr(observer, "phase", "observers"))
        if outcome.ok and outcome.kind != "none":
            label = "applied" if outcome.kind in ("replace", "delta") else outcome.kind
            self.log.debug("reconcile.timing", reason=outcome.reason, outcome=label,
                           total_ms=round(sum(phases.ms.values()), 1),
                           **{f"{k}_ms": v for k, v in phases.ms.items()})
        return outcome

    def sync(self, reason: str, phases: _Phases | None = None) -> Outcome:
        """The sync step: read, build, decide and write the kernel; returns the Outcome
        without telling anyone (``reconcile`` hands it to the observers)."""
        phases = phases or _Phases()
        with self._lock:
            self.log.info("reconcile.start", reason=reason)
            self._started = time.perf_counter()
            self._phases = phases  # load() marks its steps here
            try:
                desired = self.load()
            except Unsettled as e:
                return self._unsettled(str(e), reason)
            except SourceUnavailable as e:
                return self._unavailable(e, reason)
            except LoadError as e:
                problems = tuple(p.as_dict() for p in e.problems)
                return self._outcome("invalid", reason, cause="config", error=str(e), problems=problems)
            except Exception as e:  # noqa: BLE001 - compile/resolve bugs must not kill the daemon
                # logged here, with its traceback: the observers see only the outcome
                self.log.exception("compile.failed", file=self.origin, error=str(e))
                return self._outcome("invalid", reason, cause="compile", error=f"{type(e).__name__}: {e}")
            self.schedule.succeeded("source")
            self._warn_insecure(desired)
            refusal = self._incomplete(desired)
            if refusal is not None:
                return self._outcome("refused", reason, desired, cause="incomplete", error=refusal)
            if self.rejected is not None and desired.loaded.sha256 == self.rejected:
                why = "rolled back (not confirmed in time): edit the file again to apply it"
                return self._outcome("refused", reason, desired, cause="rejected", error=why)
            if desired.loaded.state.enforce == "none":
                return self._enforce_none(desired, reason)
            diff = None
            base = self._delta_base()
            if base is not None:  # the kernel holds the last good table: what differs?
                diff = delta(base.commands, desired.commands)
                phases.mark("diff")
                if diff == [] and base.payload is not None:  # the very same table
                    desired.payload, desired.sha256 = base.payload, base.sha256
            if desired.payload is None and not diff:  # needed now: unchanged check, replace
                phases.mark("load")
                self._serialize(desired)
                phases.mark("serialize")
            committed = self.status.commit
            if committed is not None and desired.payload is not None and desired.sha256 == committed.ruleset_sha256:
                generation = self._generation()
                phases.mark("unchanged_check")
                if self._kernel_holds(committed, generation):
                    # The kernel already holds exactly this ruleset (an edit that changes
                    # nothing, a link event, or a restart of the daemon): keep it, and its
                    # counters. At a start this is adoption: nothing is written to the kernel.
                    adopted = self.last_good is None and self.applies == 0
                    self.last_good = desired
                    self.kernel_fingerprint = committed.kernel_fingerprint
                    self.kernel_generation = generation
                    if self.applied_clock is None:
                        self.applied_clock = self.clock()
                    self.status.commit = self._commit(desired, applied_at=None,
                                                      how="adopted" if adopted else committed.how)
                    phases.mark("commit")
                    return self._outcome("adopted" if adopted else "unchanged", reason, desired)
            # Only a ruleset that changes can cut a session: the lock-out check (a conntrack
            # dump, which walks the kernel's whole conntrack table) runs for those alone.
            lockout = self._lockout(desired)
            phases.mark("lockout_check")
            if lockout is not None:
                return self._outcome("refused", reason, desired, cause="lockout", error=lockout)
            return self._apply(desired, reason, phases, diff=diff)

    def _lockout(self, desired: Desired) -> str | None:
        """Why applying ``desired`` would cut a live management session, or None."""
        if not self.lockout_check or self.host_reader is None:
            return None
        from nsg_agent.daemon import coverage

        try:
            links, entries = self.host_reader()
        except Exception as e:  # noqa: BLE001 - a failed look must not block the firewall
            self.log.warning("coverage.unchecked", error=str(e))
            return None
        local = {a for addrs in links.values() for a in addrs}
        old = self.last_good.policy if self.last_good is not None else None
        cov = coverage.check(desired.policy, host_interfaces(desired.policy), links,
                             coverage.conntrack_sessions(entries, local), old,
                             host_interfaces(old) if old is not None else None)
        for f in cov.findings:
            if f.kind != "lockout":
                self.log.warning("coverage.warning", kind=f.kind, nic=f.nic, interface=f.interface,
                                 message=f.message)
        if cov.lockouts:
            return "; ".join(f.message for f in cov.lockouts) + " (run with --force to apply anyway)"
        return None

    def _arm_confirm(self, desired: Desired, previous: Desired) -> None:
        """After an applied edit with --confirm-edits: the pending record that 'nsg-agent
        confirm' takes (nsg_agent.daemon.confirm); the daemon rolls back itself at the deadline."""
        from nsg_agent.daemon import confirm

        seconds = float(self.confirm_edits or 0)
        self.pending_edit = {"deadline": self.clock() + seconds, "previous": previous,
                             "sha256": desired.loaded.sha256}
        confirm.write_pending(self.store, {
            "deadline": self.wall() + seconds, "seconds": seconds, "daemon_pid": os.getpid(),
            "applied_sha256": desired.loaded.sha256, "previous_sha256": previous.loaded.sha256})
        self.log.info("confirm.pending", sha256=desired.loaded.sha256, seconds=seconds)

    def _check_pending_edit(self, now: float) -> None:
        from nsg_agent.daemon import confirm

        pending = self.pending_edit
        assert pending is not None
        if confirm.pending(self.store) is None:  # 'nsg-agent confirm' took it
            self.pending_edit = None
            self.log.info("confirm.confirmed", sha256=pending["sha256"])
            return
        if now < pending["deadline"] or not confirm.take_for_rollback(self.store):
            return
        self.pending_edit = None
        previous: Desired = pending["previous"]
        self.rejected = pending["sha256"]
        self.log.warning("confirm.rolling_back", sha256=pending["sha256"], to=previous.loaded.sha256)
        self._started = time.perf_counter()
        why = (f"edit {pending['sha256'][:12]} not confirmed within {self.confirm_edits:g} s: "
               f"rolled back to {previous.loaded.sha256[:12]}")
        if self._observe(self._apply(previous, "rollback", undone=why)):
            self.log.info("config.rolled_back", sha256=pending["sha256"], enforcing=previous.loaded.sha256)

    def _unsettled(self, why: str, reason: str) -> Outcome:
        """The source is not final yet (an in-place write in progress): keep the last good
        state and look again shortly."""
        self.schedule.again_after("unsettled", self.clock(), UNSETTLED_RETRY)
        return self._outcome("unsettled", reason, error=why, retry_in=UNSETTLED_RETRY)

    def _unavailable(self, error: SourceUnavailable, reason: str) -> Outcome:
        """The source cannot be reached: the kernel keeps what it enforces (nothing is
        written), and the read is retried with backoff."""
        delay = self.schedule.failed("source", self.clock())
        return self._outcome("unavailable", reason, cause="source", error=str(error),
                             retry_in=round(delay, 3), failures=self.source_failures)

    def _incomplete(self, desired: Desired) -> str | None:
        """Why ``desired`` must not replace what is enforced, or None. A file that describes
        nothing (empty, ``null``, whitespace) or none of this host's NICs, where the last good
        state (or the recorded commit) enforced some, is far more likely a truncated write
        than an intent: removing enforcement takes ``nsg-agent remove`` or ``enforce: none``."""
        state = desired.loaded.state
        if state.enforce == "none":
            return None
        if not (state.networkInterfaces or state.networkSecurityGroups or state.virtualNetworks):
            return ("the file describes nothing (empty, null or only whitespace): not enforced; "
                    "to stop enforcing use 'nsg-agent remove' or 'enforce: none'")
        had = (host_interfaces(self.last_good.policy) if self.last_good is not None
               else (self.status.commit.summary.nics if self.status.commit is not None else None))
        if had and not host_interfaces(desired.policy):
            return (f"the file puts none of this host's NICs under enforcement where the enforced "
                    f"state has {len(had)} ({', '.join(sorted(had))}): not enforced; to stop "
                    f"enforcing use 'nsg-agent remove' or 'enforce: none'")
        return None

    def _enforce_none(self, desired: Desired, reason: str) -> Outcome:
        """``enforce: none``: remove the table and forget the commit."""
        try:
            existed = self.backend.delete_table()
        except Exception as e:  # noqa: BLE001 - like a failed apply: keep running, retry
            delay = max(self.debounce, 0.5)
            self.schedule.retry_after(self.clock(), delay)
            return self._outcome("failed", reason, desired, cause="apply", error=str(e), retry_in=delay,
                                 failures=self.failures)
        self.last_good = None
        self.kernel_fingerprint = self.kernel_generation = None
        self.unverified = False
        self.status.commit = None
        self.status.pending = None
        return self._outcome("none", reason, desired, enforcing=None, table_existed=existed)

    def _warn_insecure(self, desired: Desired) -> None:
        """Files that someone other than root could write decide what the firewall admits:
        said once per file and directory (``config.insecure``)."""
        for problem in desired.snapshot.notices if desired.snapshot is not None else ():
            if problem["path"] not in self._warned_insecure:
                self._warned_insecure.add(problem["path"])
                self.log.warning("config.insecure", **problem)

    @staticmethod
    def _serialize(desired: Desired) -> None:
        """The batch as libnftables gets it, and its digest (what tells rulesets apart)."""
        desired.payload, desired.sha256 = payload_and_digest(desired.commands)

    def _kernel_holds(self, committed: Commit, generation: int | None) -> bool:
        """Does the kernel still hold ``committed`` untouched? (nsg_agent.daemon.kernel_view)"""
        return kernel_view.holds(self.backend, committed, unverified=self.unverified,
                                 generation=generation, fingerprint=self._kernel_fingerprint)

    def resync(self) -> None:
        """Repair drift: re-apply the last good ruleset if the kernel table is missing or
        differs from what was committed; notice file changes the watcher missed."""
        with self._lock:
            try:
                changed = self.source.changed()
            except Exception as e:  # noqa: BLE001 - the next read reports it (source.unavailable)
                self.log.debug("source.check_failed", error=f"{type(e).__name__}: {e}")
                changed = []
            if changed and self.dirty_at is None:
                self.log.info("config.changed", files=changed, via="resync")
                self.mark_dirty("resync:file-changed", immediate=True)
            if self.last_good is None or self.retry_at is not None:
                return
            self._resyncs += 1
            try:
                generation = self._generation()
                untouched = generation is not None and generation == self.kernel_generation
                if untouched and self.kernel_fingerprint is None:
                    # Nothing committed since our apply: the table is ours, list it now for
                    # the baseline (once the table has been stable for a resync interval, so
                    # a run of edits does not pay for listings in between).
                    if self.applied_clock is None or self.clock() - self.applied_clock >= self.resync_interval:
                        self._record_baseline(generation)
                    return
                if untouched and self._resyncs % self.full_check_every:
                    return  # no transaction at all since our commit: nothing can differ
                found = self._kernel_fingerprint() if self.kernel_fingerprint is not None else None
            except Exception as e:  # noqa: BLE001
                self.log.error("resync.failed", error=str(e))
                return
            if self.kernel_fingerprint is not None and found == self.kernel_fingerprint:
                self.kernel_generation = generation  # someone else's table changed, not ours
                return
            if self.kernel_fingerprint is None:
                # Another transaction landed before the baseline listing was taken: whether
                # it touched our table cannot be told, so re-apply (cheap, and certain).
                table = "unverified"
            else:
                table = "missing" if found is None else "changed"
            self.log.warning("drift.detected", table=table, expected=self.kernel_fingerprint, found=found)
            self._started = time.perf_counter()
            if self._observe(self._apply(self.last_good, "drift")):
                self.log.info("drift.repaired", ruleset_sha256=self.last_good.sha256)

    def remove(self) -> bool:
        with self._lock:
            removed = self.backend.delete_table()
            self.kernel_fingerprint = None
            self.log.info("table.removed", existed=removed)
            return removed

    # helpers ---------------------------------------------------------------------------------
    def _kernel_fingerprint(self) -> str | None:
        return self.backend.fingerprint()

    def _generation(self) -> int | None:
        read = getattr(self.backend, "generation", None)
        return read() if read is not None else None

    def _delta_base(self) -> Desired | None:
        """The last good state when the kernel provably still holds it (no nftables
        transaction in the namespace since our commit): an edit can then go as a delta."""
        if not self.incremental or self.last_good is None or self.kernel_generation is None:
            return None
        commit = self.status.commit
        if commit is None or commit.ruleset_sha256 != self.last_good.sha256:
            return None
        return self.last_good if self._generation() == self.kernel_generation else None

    def _apply(self, desired: Desired, reason: str, phases: _Phases | None = None,
               diff: list[dict] | None = None, undone: str | None = None) -> Outcome:
        """Make the kernel enforce ``desired``: ``diff`` (nsg_agent.kernel.delta against the
        table the kernel holds) as one transaction when there is one, else the whole table
        replaced in one transaction. ``undone``: this apply rolls back an edit (why)."""
        phases = phases or _Phases()
        self._phases = phases  # the observers' timing continues it
        if desired.payload is None:  # the digest goes into the intent and the table's stamp
            self._serialize(desired)
            phases.mark("serialize")
        self._write_intent(desired)
        phases.mark("intent")
        try:
            # One transaction: libnftables refuses the batch as a whole (nothing applied) if
            # any command fails; only then does the backend bisect to the failing command.
            how, delta_size = "replace", None
            if diff:
                try:
                    self.backend.transact(diff + stamp_commands(desired.sha256, refresh=True))
                    how, delta_size = "delta", len(diff)
                except NftError as e:  # nothing of it applied: replace the table instead
                    self.log.warning("apply.delta_refused", reason=reason, error=str(e),
                                     commands=len(diff))
            if how == "replace":
                if self.check_first:
                    self.backend.check(desired.commands)
                    phases.mark("check")
                self.backend.replace(desired.commands + stamp_commands(desired.sha256))
            phases.mark("transact" if how == "delta" else "replace")
            # Known window: another process committing between our replace and this read
            # would be taken as part of our commit (microseconds; documented).
            generation = self._generation()
            fingerprint = None
            if generation is None or not self.defer_fingerprint:
                fingerprint = self._kernel_fingerprint()
            phases.mark("generation" if fingerprint is None else "fingerprint")
        except Exception as e:  # noqa: BLE001 - NftError, NetnsError, ...: keep running, retry
            delay = self.schedule.failed("apply", self.clock(), cap=max(self.resync_interval, 0.5))
            detail = e.as_dict() if isinstance(e, NftError) else {"message": f"{type(e).__name__}: {e}"}
            if isinstance(e, NftError) and e.applied_nothing and not self.unverified:
                # refused as a whole: the kernel holds what it held, the intent is void
                self.status_file.clear_intent()
            failed = self._outcome("failed", reason, desired, cause="apply", error=str(e), problems=(detail,),
                                   retry_in=round(delay, 3), failures=self.failures)
            if self.last_good is None and _lacks_permission(e):
                # Retrying cannot help, and under systemd READY would never come: fail fast
                # so the unit shows the reason instead of a watchdog restart loop.
                self._observe(failed)
                self.log.error("agent.fatal", error=str(e),
                               hint="nftables needs CAP_NET_ADMIN in the target namespace")
                raise FatalError(f"cannot program nftables: {e} (CAP_NET_ADMIN missing?)") from e
            return failed
        self.schedule.succeeded("apply")
        self.kernel_fingerprint = fingerprint
        self.kernel_generation = generation
        self.applied_clock = self.clock()
        previous, self.last_good = self.last_good, desired
        self.applies += 1
        self.unverified = False
        self.status.pending = None
        self.status.commit = self._commit(desired, applied_at=self.wall(), how=how)
        if (self.confirm_edits and previous is not None and reason not in ("drift", "rollback")
                and previous.sha256 != desired.sha256):
            self._arm_confirm(desired, previous)
        phases.mark("commit")
        self.target.applied(desired)
        return self._outcome(how, reason, desired, delta_commands=delta_size,
                             cause="rolled-back" if undone else None, error=undone)

    def _write_intent(self, desired: Desired) -> None:
        """Before the transaction: what is about to be applied (a small file of its own, so
        the large status file is written once per apply)."""
        intent = {"ruleset_sha256": desired.sha256, "sha256": desired.loaded.sha256,
                  "source": self._source_of(desired), "started_at": self.wall()}
        try:
            self.store.write_intent(intent)
        except OSError as e:
            self.log.error("status.write_failed", path=str(self.store.intent_path), error=str(e))

    # the listing baseline -------------------------------------------------------------------
    def start_baseline(self) -> threading.Thread | None:
        """Take the listing fingerprint of the current commit in a background thread (the
        backend lists on its own thread and netlink socket, so it never delays a replace).
        Returns the thread, or None when nothing is to be taken."""
        with self._lock:
            if (self.kernel_fingerprint is not None or self.kernel_generation is None
                    or (self._baseline is not None and self._baseline.is_alive())):
                return None
            generation = self.kernel_generation
            t = threading.Thread(target=self._baseline_main, args=(generation,), daemon=True,
                                 name="nsg-baseline")
            self._baseline = t
        t.start()
        return t

    def _baseline_main(self, generation: int) -> None:
        try:
            self._record_baseline(generation, locked=False)
        except Exception as e:  # noqa: BLE001 - the resync takes it later
            self.log.debug("fingerprint.deferred", error=f"{type(e).__name__}: {e}")

    def _record_baseline(self, generation: int, *, locked: bool = True) -> bool:
        """List our table while no transaction has happened since our commit (checked before
        and after the listing) and remember its fingerprint. ``locked=False``: the listing
        runs without holding the reconciler's lock (the background thread)."""
        t0 = time.perf_counter()
        if self._generation() != generation:
            return False
        fingerprint = self._kernel_fingerprint()
        if self._generation() != generation or fingerprint is None:
            return False  # something committed meanwhile: that listing proves nothing
        with self._lock:
            if self.kernel_generation != generation or self.kernel_fingerprint is not None:
                return False
            self.kernel_fingerprint = fingerprint
            if self.status.commit is not None and self.status.commit.kernel_generation == generation:
                self.status.commit.kernel_fingerprint = fingerprint
                self.status_file.write()
            self.log.debug("fingerprint.recorded", fingerprint=fingerprint[:16],
                           ms=round((time.perf_counter() - t0) * 1000, 1), background=not locked)
            return True

    def _commit(self, desired: Desired, applied_at: float | None, how: str = "replace") -> Commit:
        """The record of ``desired`` in force (``applied_at`` None: it was already, keep the
        time of the commit it continues)."""
        prev = self.status.commit
        snap = desired.snapshot
        return Commit(
            source=self._source_of(desired), sha256=desired.loaded.sha256, files=desired.files,
            applied_at=applied_at if applied_at is not None else (prev.applied_at if prev else self.wall()),
            mode=self.mode, ruleset_sha256=desired.sha256, summary=desired.summary,
            rule_index=desired.rule_index, rules=rule_digests(desired.policy, host_interfaces(desired.policy)),
            sets=set_sizes(desired.commands),
            kernel_fingerprint=self.kernel_fingerprint, kernel_generation=self.kernel_generation, how=how,
            revision=snap.revision if snap is not None else None,
            published_at=snap.published_at if snap is not None else None)

    @staticmethod
    def _source_of(desired: Desired) -> str:
        snap = desired.snapshot
        return snap.origin if snap is not None else str(desired.loaded.path.absolute())
