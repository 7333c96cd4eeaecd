"""When the daemon works (pure: no I/O, no threads; times come from the caller's clock).

The :class:`Scheduler` owns the *dirty reasons* and the deadlines: a reconcile after the
debounce (a burst of editor events collapses into one run; a file renamed into place or a
store's transaction waits only the short settle), a retry with exponential backoff after a
failed apply or an unreachable source, the periodic resync, and the deferred garbage
collection once the daemon is idle. The reconciler asks it what is due; tests drive it with
a fake clock (tests/test_scheduler.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_BACKOFF = 30.0
# A file renamed into place or closed after writing is complete: reconcile after this short
# settle time (enough to coalesce several files renamed together) instead of the debounce.
COMPLETE_SETTLE = 0.02


@dataclass
class Scheduler:
    debounce: float
    resync_interval: float
    now: float  # the clock when the schedule starts
    reasons: list[str] = field(default_factory=list)
    dirty_at: float | None = None  # when the pending reconcile may run
    retry_at: float | None = None  # when a failed one is tried again
    next_resync: float = 0.0
    gc_due_at: float | None = None  # when the deferred full collection may run
    failures: dict[str, int] = field(default_factory=dict)  # kind ("apply", "source") -> in a row

    def __post_init__(self) -> None:
        self.next_resync = self.now + self.resync_interval

    # asking for work ------------------------------------------------------------------------
    def mark(self, reason: str, now: float, *, immediate: bool = False, complete: bool = False) -> None:
        """A reconcile is wanted: at once, after the short settle (``complete``), or after
        the debounce, each partial-write event pushing the deadline out."""
        self.reasons.append(reason)
        if immediate:
            self.dirty_at = now
        elif complete:
            due = now + min(self.debounce, COMPLETE_SETTLE)
            self.dirty_at = due if self.dirty_at is None else min(self.dirty_at, due)
        else:
            due = now + self.debounce
            self.dirty_at = due if self.dirty_at is None else max(self.dirty_at, due)

    def again_after(self, reason: str, now: float, delay: float) -> None:
        """Look again after ``delay`` (a version still being written), whatever else is pending."""
        self.reasons.append(reason)
        due = now + delay
        self.dirty_at = due if self.dirty_at is None else min(self.dirty_at, due)

    # what is due ----------------------------------------------------------------------------
    def take_reconcile(self, now: float) -> str | None:
        """The reason for a reconcile due at ``now`` (its reasons joined, in order, once
        each; "retry" for a retry), or None. Taking it clears it."""
        if self.dirty_at is not None and now >= self.dirty_at:
            reasons, self.reasons, self.dirty_at = self.reasons, [], None
            return ",".join(dict.fromkeys(reasons)) or "dirty"
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            return "retry"
        return None

    def take_resync(self, now: float) -> bool:
        if now >= self.next_resync:
            self.next_resync = now + self.resync_interval
            return True
        return False

    def take_gc(self, now: float) -> bool:
        if self.gc_due_at is not None and now >= self.gc_due_at and self.dirty_at is None:
            self.gc_due_at = None
            return True
        return False

    def next_deadline(self) -> float:
        return min(t for t in (self.next_resync, self.dirty_at, self.retry_at) if t is not None)

    @property
    def idle(self) -> bool:
        """Nothing pending: no reconcile asked for, no retry waiting."""
        return self.dirty_at is None and self.retry_at is None

    # outcomes -------------------------------------------------------------------------------
    def failed(self, kind: str, now: float, *, cap: float = MAX_BACKOFF) -> float:
        """A ``kind`` of failure (another in a row): retry after an exponential backoff from
        max(debounce, 0.5 s), at most ``cap`` (and MAX_BACKOFF). Returns the delay."""
        n = self.failures[kind] = self.failures.get(kind, 0) + 1
        delay = min(MAX_BACKOFF, cap, max(self.debounce, 0.5) * (2 ** (n - 1)))
        self.retry_at = now + delay
        return delay

    def retry_after(self, now: float, delay: float) -> None:
        self.retry_at = now + delay

    def succeeded(self, kind: str) -> None:
        self.failures[kind] = 0
        if kind == "apply":
            self.retry_at = None

    def collect_after(self, now: float, delay: float) -> None:
        self.gc_due_at = now + delay
