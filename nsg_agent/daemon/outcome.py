"""What one reconcile did, as a value: the sync step returns an :class:`Outcome` and every
observer gets the same one (nsg_agent.daemon.observers: the status file, the log, sd_notify,
the conntrack flush; then metrics and a fleet's status report).

Kinds:
  replace / delta  the kernel now enforces a new ruleset (whole table / only what differs)
  unchanged        the kernel already held exactly this ruleset (an edit that changes nothing)
  adopted          a start found the kernel holding it: nothing written
  none             ``enforce: none``: the table removed
  invalid          the desired state is invalid (or failed to compile): last good kept
  refused          valid, but not applied: incomplete, would lock out a session, or rolled back
  unsettled        a new version is still being written: looked at again shortly
  unavailable      the source cannot be reached: last good kept, retried with backoff
  failed           the kernel refused or the apply failed: last good kept, retried with backoff

Causes (``cause``, the status file's ``last_error.kind``): why what is enforced is not what
the source holds. config / compile (invalid), incomplete / lockout / rejected (refused),
source (unavailable), apply (failed), rolled-back (an unconfirmed edit undone: the outcome of
the rollback itself is a replace or delta). None: the source's state is enforced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

ENFORCED = frozenset({"replace", "delta", "unchanged", "adopted", "none"})
KINDS = ENFORCED | {"invalid", "refused", "unsettled", "unavailable", "failed"}
CAUSES = frozenset({"config", "compile", "incomplete", "lockout", "rejected", "source", "apply",
                    "rolled-back"})


@dataclass(frozen=True)
class Outcome:
    kind: str
    reason: str  # what asked for the reconcile: startup, file:x.yaml, resync:..., drift, retry
    origin: str  # the source (a path, an etcd URL)
    at: float  # wall-clock time it ended
    duration: float = 0.0  # seconds
    sha256: str | None = None  # of the desired state read
    ruleset_sha256: str | None = None  # of the compiled ruleset (when one was built)
    revision: int | None = None  # the source's version of what was read
    error: str | None = None
    problems: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    delta_commands: int | None = None
    cause: str | None = None  # see the module docstring
    enforcing: str | None = None  # sha256 of the desired state in force afterwards (None: nothing)
    retry_in: float | None = None  # seconds until the next attempt (unsettled, unavailable, failed)
    failures: int = 0  # consecutive failures of this kind so far (unavailable, failed)
    table_existed: bool | None = None  # ``none``: was there a table to remove
    # The desired state it is about (nsg_agent.daemon.reconciler.Desired: loaded, policy,
    # commands, summary), for observers that need more than the digests. Not compared.
    desired: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown outcome kind {self.kind!r}")
        if self.cause is not None and self.cause not in CAUSES:
            raise ValueError(f"unknown outcome cause {self.cause!r}")

    @property
    def ok(self) -> bool:
        """The kernel enforces what the source holds (or was already)."""
        return self.kind in ENFORCED

    def __bool__(self) -> bool:  # `if rec.reconcile(...)`: did it end enforced?
        return self.ok


Observer = Callable[[Outcome], None]
