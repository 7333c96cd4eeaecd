"""What follows a reconcile is observers of its Outcome (nsg_agent.daemon.observers): the status
file, the log's report, sd_notify and the conntrack flush, then the given observers. The sync
step writes only the kernel (and the intent before it)."""

from __future__ import annotations

import json

from structlog.testing import capture_logs

from daemon_helpers import BAD_PRIORITY, DENY_SSH, policy_text, write
from nsg_agent.daemon.observers import ConntrackFlush, LogReport, StatusFile, SystemdNotify
from nsg_agent.daemon.outcome import Outcome
from nsg_agent.daemon.reconciler import Reconciler
from nsg_agent.kernel.errors import PermissionDenied
from test_daemon import env  # noqa: F401 - the fixture


def test_the_built_in_observers_come_first_in_their_order_then_the_given_ones(tmp_path):
    from daemon_helpers import fake_compile
    from nsg_agent.daemon.status import StatusStore
    from nsg_agent.testing import FakeBackend, FakeClock

    config = tmp_path / "s.yaml"
    write(config, policy_text())
    seen: list[Outcome] = []
    rec = Reconciler(config, FakeBackend(), StatusStore(tmp_path / "run", "nsgh-obs"), clock=FakeClock(),
                     compile_fn=fake_compile, observers=[seen.append])
    kinds = [type(o) for o in rec.observers[:4]]
    assert kinds == [StatusFile, LogReport, SystemdNotify, ConntrackFlush]
    assert rec.observers[4] == seen.append
    outcome = rec.reconcile("startup")
    assert seen == [outcome] and seen[0] is outcome


def test_every_observer_gets_the_same_outcome_even_when_one_raises(env):  # noqa: F811
    got: list[tuple[str, Outcome]] = []

    def broken(outcome: Outcome) -> None:
        got.append(("broken", outcome))
        raise RuntimeError("sink gone")

    env.rec.observers.insert(1, broken)  # between the status file and the log
    env.rec.observers.append(lambda o: got.append(("last", o)))
    with capture_logs() as logs:
        outcome = env.rec.reconcile("startup")
    assert [name for name, _ in got] == ["broken", "last"] and all(o is outcome for _, o in got)
    events = [e["event"] for e in logs]
    # the observers after the broken one still ran: the log's report and READY
    assert "observer.failed" in events and "config.applied" in events and env.rec.ready
    assert env.notifier.sent[0][0] == "READY=1"
    assert env.store.read().commit.ruleset_sha256 == outcome.ruleset_sha256


def test_the_status_file_follows_the_outcome_cause(env):  # noqa: F811
    assert env.rec.reconcile("startup")
    assert env.store.read().last_error is None
    write(env.config, policy_text(extra_rule=BAD_PRIORITY))
    bad = env.rec.reconcile("file:edit")
    assert (bad.kind, bad.cause) == ("invalid", "config") and bad.problems
    error = env.store.read().last_error
    assert error["kind"] == "config" and error["problems"] == list(bad.problems)
    assert bad.enforcing == env.rec.last_good.loaded.sha256  # the last good state stays
    write(env.config, policy_text(extra_rule=DENY_SSH))
    assert env.rec.reconcile("file:edit").cause is None
    assert env.store.read().last_error is None


def test_an_unsettled_read_writes_nothing(env, tmp_path):  # noqa: F811
    assert env.rec.reconcile("startup")
    before = env.store.path.read_bytes()
    env.rec.status_file(Outcome(kind="unsettled", reason="file:x", origin="f", at=1.0, error="being written"))
    assert env.store.path.read_bytes() == before


def test_the_log_report_names_the_outcome(env):  # noqa: F811
    with capture_logs() as logs:
        env.rec.reconcile("startup")
    applied = next(e for e in logs if e["event"] == "config.applied")
    assert applied["how"] == "replace" and applied["rules"] == 7 and applied["reason"] == "startup"
    timing = next(e for e in logs if e["event"] == "reconcile.timing")
    # the sync step's phases and then each built-in observer's
    assert {"replace_ms", "status_ms", "log_ms", "notify_ms", "flush_ms"} <= set(timing)
    assert timing["outcome"] == "applied"


def test_ready_once_then_status_lines(env):  # noqa: F811
    assert env.rec.reconcile("startup")
    write(env.config, policy_text(extra_rule=DENY_SSH))
    assert env.rec.reconcile("file:edit")
    write(env.config, policy_text(extra_rule=BAD_PRIORITY))
    env.rec.reconcile("file:edit")
    sent = env.notifier.sent
    assert env.notifier.states.count("READY=1") == 1 and sent[0][0] == "READY=1"
    assert sent[1][0].startswith("STATUS=enforcing ")
    assert sent[2] == ("STATUS=config invalid (1 problems); enforcing the last good state",)


def test_the_conntrack_flush_follows_a_new_ruleset_and_tells_its_listeners(env):  # noqa: F811
    cut: list[int] = []
    calls: list[object] = []
    env.rec.flusher = lambda policy: calls.append(policy) or ["flow-a", "flow-b"]
    env.rec.conntrack.listeners.append(cut.append)
    write(env.config, policy_text(flush=True))
    with capture_logs() as logs:
        outcome = env.rec.reconcile("startup")
    assert outcome.kind == "replace" and len(calls) == 1 and calls[0] is outcome.desired.policy
    assert cut == [2]
    flushed = next(e for e in logs if e["event"] == "conntrack.flushed")
    assert flushed["count"] == 2 and flushed["flows"] == ["flow-a", "flow-b"]
    # nothing new in force (the same file again): nothing to cut
    assert env.rec.reconcile("sighup").kind == "unchanged" and len(calls) == 1


def test_without_flush_connection_the_flusher_is_not_called(env):  # noqa: F811
    env.rec.flusher = lambda policy: (_ for _ in ()).throw(AssertionError("called"))
    assert env.rec.reconcile("startup").kind == "replace"


def test_a_fatal_apply_is_recorded_before_the_daemon_stops(env):  # noqa: F811
    import pytest

    from nsg_agent.daemon.reconciler import FatalError

    def refuse(commands):
        raise PermissionDenied("nft refused", error="Operation not permitted")

    env.backend.replace = refuse
    with capture_logs() as logs, pytest.raises(FatalError):
        env.rec.reconcile("startup")
    events = [e["event"] for e in logs]
    assert events.index("apply.failed") < events.index("agent.fatal")
    record = json.loads(env.store.path.read_text())
    assert record["last_error"]["kind"] == "apply"
