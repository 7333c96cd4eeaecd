"""The daemon's scheduler alone (nsg_agent.daemon.scheduler): pure, driven by a fake clock."""

from __future__ import annotations

from nsg_agent.daemon.scheduler import COMPLETE_SETTLE, MAX_BACKOFF, Scheduler


def sched(debounce: float = 0.15, resync: float = 5.0) -> Scheduler:
    return Scheduler(debounce=debounce, resync_interval=resync, now=100.0)


def test_a_burst_of_partial_writes_is_one_reconcile_after_the_last_plus_debounce():
    s = sched()
    for t in (100.0, 100.1, 100.2):
        s.mark("file:a.yaml", t)
    assert s.take_reconcile(100.3) is None  # 100.2 + 0.15 not reached
    assert s.take_reconcile(100.36) == "file:a.yaml"  # reasons once each
    assert s.take_reconcile(100.4) is None and s.idle


def test_a_complete_file_waits_only_the_settle_even_behind_a_debounce():
    s = sched()
    s.mark("file:a.yaml", 100.0)
    s.mark("file:b.yaml", 100.0, complete=True)
    assert s.dirty_at == 100.0 + COMPLETE_SETTLE
    assert s.take_reconcile(100.0 + COMPLETE_SETTLE) == "file:a.yaml,file:b.yaml"


def test_immediate_and_again_after():
    s = sched()
    s.mark("startup", 100.0, immediate=True)
    assert s.take_reconcile(100.0) == "startup"
    s.mark("file:a.yaml", 100.0)
    s.again_after("unsettled", 100.0, 0.05)  # earlier than the debounce: wins
    assert s.take_reconcile(100.05) == "file:a.yaml,unsettled"


def test_failures_back_off_exponentially_up_to_the_cap_and_reset_on_success():
    s = sched()
    delays = [s.failed("apply", 100.0, cap=4.0) for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert s.retry_at == 104.0 and s.take_reconcile(103.9) is None and s.take_reconcile(104.0) == "retry"
    s.succeeded("apply")
    assert s.failed("apply", 200.0) == 0.5
    s.succeeded("apply")
    source = [s.failed("source", 300.0) for _ in range(8)]  # kinds count apart; capped at MAX_BACKOFF
    assert source[-1] == MAX_BACKOFF and source == sorted(source)


def test_a_pending_reconcile_comes_before_a_retry():
    s = sched()
    s.failed("apply", 100.0)
    s.mark("file:a.yaml", 100.0, immediate=True)
    assert s.take_reconcile(101.0) == "file:a.yaml"
    assert s.take_reconcile(101.0) == "retry"


def test_resync_cadence_and_deadline():
    s = sched(resync=5.0)
    assert s.next_deadline() == 105.0
    assert not s.take_resync(104.9) and s.take_resync(105.0) and s.next_resync == 110.0
    s.mark("x", 106.0)
    assert s.next_deadline() == 106.15


def test_deferred_collection_waits_for_idle():
    s = sched()
    s.collect_after(100.0, 5.0)
    s.mark("file:a.yaml", 104.0)
    assert not s.take_gc(105.5)  # a reconcile is pending: not now
    s.take_reconcile(104.2)
    assert s.take_gc(105.5) and s.gc_due_at is None
