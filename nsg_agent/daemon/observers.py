"""What happens after a reconcile, as observers of its :class:`~nsg_agent.daemon.outcome.Outcome`.

The sync step (``Reconciler._reconcile`` / ``_apply``) decides and writes the kernel; it
returns an Outcome and touches nothing else. Everything that *reports* or *follows from*
that outcome is an observer here, each called with the same value, in this order:

1. :class:`StatusFile` — the status record (``status.json``): the commit, the last error,
   then the apply's intent cleared (intent before the transaction, outcome after: a kill in
   between leaves the record unverified, never wrong).
2. :class:`LogReport` — the outcome's log event (``config.applied``, ``config.invalid``,
   ``apply.failed``, ...; docs/daemon.md lists them).
3. :class:`SystemdNotify` — READY=1 after the first enforced state, STATUS= after each.
4. :class:`ConntrackFlush` — flushConnection: after a new ruleset is in force, the conntrack
   entries it denies are cut.

Then the observers the reconciler is given (a fleet's status report, metrics). Each one is
isolated: an observer that raises is logged (``observer.failed``) and the next runs; none can
stop enforcement. Adding a sink (a metrics backend, an event bus) is one more observer: the
reconciler does not change.

Two steps stay in the sync step on purpose: the apply's *intent* is written before the
transaction (it must exist before the kernel changes, so it cannot follow the outcome), and
the traceback of a compiler bug is logged where it is caught (an observer sees the outcome,
not the stack).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from nsg_agent.daemon.outcome import Outcome
from nsg_agent.daemon.status import Status, StatusStore
from nsg_agent.host.notify import Notifier

if TYPE_CHECKING:
    from nsg_agent.semantics.policy import Policy

Flusher = Callable[["Policy"], list]  # cuts the entries a policy denies; returns the cuts made

# Outcomes that put a new ruleset in force (the kernel was written).
COMMITTED = frozenset({"replace", "delta"})


class StatusFile:
    """Persist the reconciler's record after each outcome (``nsg_agent.daemon.status``).

    The sync step keeps the in-memory :class:`Status` (its ``commit`` is what the kernel view
    compares the kernel with); this observer sets ``last_error`` from the outcome and writes
    the file. A failed write is logged (``status.write_failed``) and enforcement goes on: the
    record is a report, the kernel is the truth."""

    phase = "status"

    def __init__(self, store: StatusStore, status: Status, wall: Callable[[], float], log: Any):
        self.store, self.status, self.wall, self.log = store, status, wall, log

    def __call__(self, outcome: Outcome) -> None:
        if outcome.kind == "unsettled":
            return  # nothing happened yet: looked at again in a moment
        if outcome.cause is None:
            self.status.last_error = None
        else:
            self.status.last_error = {"time": self.wall(), "kind": outcome.cause,
                                      "message": outcome.error or "", "problems": list(outcome.problems)}
        self.write()
        desired = outcome.desired
        if desired is not None and outcome.kind in COMMITTED | {"adopted", "unchanged"} \
                and (outcome.kind in COMMITTED or not self.store.applied_path.exists()):
            # what the new commit enforces (or none remembered yet), for plan's rule diffs
            try:
                self.store.write_applied(desired.loaded.state)
            except OSError as e:
                self.log.error("status.write_failed", path=str(self.store.applied_path), error=str(e))
        if outcome.ok:
            self.clear_intent()  # the outcome is recorded: the intent has served

    def write(self) -> None:
        try:
            self.store.write(self.status)
        except OSError as e:
            self.log.error("status.write_failed", path=str(self.store.path), error=str(e))

    def clear_intent(self) -> None:
        try:
            self.store.clear_intent()
        except OSError as e:
            self.log.error("status.write_failed", path=str(self.store.intent_path), error=str(e))


class LogReport:
    """The outcome's one log event (docs/daemon.md, "Events")."""

    phase = "log"

    def __init__(self, log: Any):
        self.log = log

    def __call__(self, o: Outcome) -> None:
        d = o.desired
        if o.kind in COMMITTED:
            s = d.summary
            self.log.info("config.applied", reason=o.reason, how=o.kind, delta_commands=o.delta_commands,
                          file=str(d.loaded.path), sha256=o.sha256, ruleset_sha256=o.ruleset_sha256,
                          chains=s.chains, rules=s.rules, sets=s.sets, set_elements=s.set_elements,
                          modes=list(s.modes_used))
        elif o.kind in ("adopted", "unchanged"):
            self.log.info(f"config.{o.kind}", reason=o.reason, file=o.origin, sha256=o.sha256,
                          ruleset_sha256=o.ruleset_sha256)
        elif o.kind == "none":
            self.log.info("config.enforce_none", file=o.origin, sha256=o.sha256, table_existed=o.table_existed)
        elif o.kind == "unsettled":
            self.log.warning("config.unsettled", file=o.origin, why=o.error, retry_in=o.retry_in)
        elif o.kind == "unavailable":
            self.log.error("source.unavailable", origin=o.origin, error=o.error, retry_in=o.retry_in,
                           failures=o.failures, enforcing=o.enforcing)
        elif o.kind == "failed":
            self.log.error("apply.failed", reason=o.reason, error=o.error, retry_in=o.retry_in,
                           failures=o.failures, enforcing=o.enforcing)
        elif o.cause == "config":
            self.log.error("config.invalid", file=o.origin, problems=list(o.problems), enforcing=o.enforcing)
        elif o.cause in ("incomplete", "lockout"):
            self.log.error(f"config.{o.cause}", file=o.origin, problem=o.error, enforcing=o.enforcing)
        elif o.cause == "rejected":
            self.log.warning("config.rejected", file=o.origin, sha256=o.sha256, why=o.error)
        # cause "compile": logged with its traceback where it was caught (compile.failed)


class SystemdNotify:
    """sd_notify(3): READY=1 with the first enforced state (so ``systemctl start`` returns once
    the policy is in force), STATUS= with every outcome worth a line in ``systemctl status``."""

    phase = "notify"

    def __init__(self, notifier: Notifier, log: Any):
        self.notifier, self.log = notifier, log
        self.ready = False

    def __call__(self, o: Outcome) -> None:
        d = o.desired
        if o.kind in COMMITTED | {"adopted", "unchanged"}:
            s = d.summary
            self._enforcing(f"enforcing {d.loaded.path.name} sha256={(o.sha256 or '')[:12]} "
                            f"rules={s.rules} elements={s.set_elements}")
        elif o.kind == "none":
            self._enforcing(f"enforcing nothing ({d.loaded.path.name} says enforce: none)", log=False)
        else:
            kept = "enforcing the last good state" if o.enforcing else "nothing enforced"
            if o.cause == "config":
                self.notifier.status(f"config invalid ({len(o.problems)} problems); {kept}")
            elif o.cause == "incomplete":
                self.notifier.status(f"config refused (incomplete); {kept}")
            elif o.cause == "lockout":
                self.notifier.status("config refused (it would lock out a management session)")
            elif o.kind == "unavailable":
                self.notifier.status(f"desired-state source unavailable; {kept}")

    def _enforcing(self, text: str, log: bool = True) -> None:
        if self.ready:
            self.notifier.status(text)
            return
        self.ready = True
        self.notifier.ready(text)
        if log:
            self.log.info("agent.ready")


class ConntrackFlush:
    """flushConnection (nsg-semantics.md): once a new ruleset is in force, cut the conntrack
    entries it denies, so established flows meet the new rules too. Only when some NIC's NSG
    asks for it. ``listeners`` are told how many entries were cut (metrics)."""

    phase = "flush"

    def __init__(self, flusher: Flusher | None, log: Any):
        self.flusher, self.log = flusher, log
        self.listeners: list[Callable[[int], None]] = []

    def __call__(self, o: Outcome) -> None:
        d = o.desired
        if self.flusher is None or o.kind not in COMMITTED or d is None \
                or not any(n.flush_connection for n in d.policy.nics.values()):
            return
        try:
            cuts = self.flusher(d.policy)
        except Exception as e:  # noqa: BLE001 - the ruleset is in force; only the cut failed
            self.log.error("conntrack.flush_failed", error=str(e))
            return
        self.log.info("conntrack.flushed", count=len(cuts),
                      flows=[c.as_log() if hasattr(c, "as_log") else str(c) for c in cuts[:50]])
        for listener in self.listeners:
            listener(len(cuts))
