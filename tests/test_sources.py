"""The DesiredSource seam: the reconciler enforces whatever a source hands out, learns nothing
of where it lives, keeps the last good state when the source is unreachable or invalid, and
tells every observer the Outcome of each reconcile (nsg_agent.sources.base,
nsg_agent.daemon.outcome)."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon_helpers import BAD_PRIORITY, DENY_SSH, fake_compile, policy_text, write
from nsg_agent.daemon.outcome import Outcome
from nsg_agent.daemon.reconciler import Reconciler
from nsg_agent.daemon.status import StatusStore
from nsg_agent.desired import loader
from nsg_agent.errors import LoadError
from nsg_agent.sources.base import Snapshot, SourceUnavailable
from nsg_agent.sources.files import FileSource
from nsg_agent.testing import FakeBackend, FakeClock


class MemorySource:
    """A source holding its state in memory, with a revision, that can be taken down."""

    origin = "memory://fleet/"

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.revision = 0
        self.text = policy_text()
        self.down = False
        self.reads = 0
        self.marks = None
        self._read_revision: int | None = None

    def publish(self, text: str) -> None:
        self.text, self.revision = text, self.revision + 1
        if self.marks is not None:
            self.marks(f"revision:{self.revision}", True)

    def read(self) -> Snapshot:
        self.reads += 1
        if self.down:
            raise SourceUnavailable("connection refused")
        self._read_revision = self.revision
        loaded = loader.load_bytes(self.text.encode(), self.tmp / "published.yaml")  # LoadError if invalid
        return Snapshot(loaded=loaded, origin=self.origin, inputs={"state": loaded.sha256},
                        revision=self.revision, published_at=1_600_000_000.0 + self.revision)

    def changed(self) -> list[str]:
        return [] if self._read_revision == self.revision else [f"revision {self.revision}"]

    def watch(self, mark):
        self.marks = mark
        return self.close

    def close(self) -> None:
        self.marks = None


@pytest.fixture
def fleet(tmp_path):
    source = MemorySource(tmp_path)
    backend = FakeBackend()
    store = StatusStore(tmp_path / "run", "nsgh-src")
    seen: list[Outcome] = []
    clock = FakeClock()
    rec = Reconciler(source, backend, store, clock=clock, wall=lambda: 1_700_000_000.0,
                     compile_fn=fake_compile, debounce=0.15, resync=2.0, observers=[seen.append])
    return source, backend, store, rec, seen, clock


def rules(backend: FakeBackend) -> set[str]:
    return {r["comment"] for r in backend.table.rules} if backend.table else set()


def test_the_reconciler_enforces_what_the_source_hands_out(fleet):
    source, backend, store, rec, seen, _ = fleet
    assert rec.reconcile("startup")
    commit = store.read().commit
    assert (commit.source, commit.revision, commit.published_at) == ("memory://fleet/", 0, 1_600_000_000.0)
    source.publish(policy_text(extra_rule=DENY_SSH))
    assert rec.reconcile("revision:1")
    assert "srv-nsg: UserRule_deny-ssh" in rules(backend)
    assert store.read().commit.revision == 1
    assert [o.kind for o in seen] == ["replace", "replace"] and seen[-1].revision == 1
    assert seen[-1].origin == "memory://fleet/" and seen[-1].ok


def test_an_unreachable_source_keeps_the_last_good_state_and_retries_with_backoff(fleet):
    source, backend, store, rec, seen, clock = fleet
    assert rec.reconcile("startup")
    good = backend.dump()
    source.down = True
    with capture_logs() as logs:
        out = rec.reconcile("revision:1")
    assert not out and out.kind == "unavailable" and "connection refused" in out.error
    assert backend.dump() == good  # nothing written, nothing removed
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["source.unavailable"]
    assert store.read().last_error["kind"] == "source"
    delays = []
    for _ in range(4):  # each failed retry waits longer
        delays.append(rec.retry_at - clock())
        clock.advance(rec.retry_at - clock())
        rec.tick()
    assert delays == sorted(delays) and delays[-1] > delays[0]
    assert all(o.kind == "unavailable" for o in seen[1:])
    source.down = False
    source.publish(policy_text(extra_rule=DENY_SSH))
    clock.advance(rec.retry_at - clock())
    rec.tick()
    assert seen[-1].kind == "replace" and "srv-nsg: UserRule_deny-ssh" in rules(backend)
    assert rec.source_failures == 0 and store.read().last_error is None


def test_an_invalid_published_state_is_refused_and_observed(fleet):
    source, backend, store, rec, seen, _ = fleet
    assert rec.reconcile("startup")
    good = backend.dump()
    source.publish(policy_text(extra_rule=BAD_PRIORITY))
    out = rec.reconcile("revision:1")
    assert out.kind == "invalid" and out.problems and backend.dump() == good
    assert store.read().commit.revision == 0  # still the last good revision


def test_an_unchanged_state_is_an_unchanged_outcome(fleet):
    source, backend, store, rec, seen, _ = fleet
    assert rec.reconcile("startup")
    source.publish(policy_text())  # a new revision with the same content
    out = rec.reconcile("revision:1")
    assert out.kind == "unchanged" and out.revision == 1


def test_the_watch_marks_the_reconciler_and_resync_notices_a_missed_change(fleet):
    source, backend, store, rec, seen, clock = fleet
    assert rec.reconcile("startup")
    source.watch(lambda reason, complete: rec.mark_dirty(reason, complete=complete))
    source.publish(policy_text(extra_rule=DENY_SSH))
    assert rec.dirty_reasons == ["revision:1"]
    clock.advance(0.1)
    rec.tick()
    assert "srv-nsg: UserRule_deny-ssh" in rules(backend)
    source.close()  # no watch: only the resync can notice
    source.publish(policy_text())
    clock.advance(2.1)
    with capture_logs() as logs:
        rec.tick()
    assert any(e["event"] == "config.changed" and e.get("via") == "resync" for e in logs)
    clock.advance(0.1)
    rec.tick()
    assert "srv-nsg: UserRule_deny-ssh" not in rules(backend)


def test_a_failing_observer_never_stops_enforcement(fleet):
    source, backend, store, rec, seen, _ = fleet

    def broken(outcome):
        raise RuntimeError("metrics sink gone")

    rec.observers.insert(0, broken)
    with capture_logs() as logs:
        assert rec.reconcile("startup")
    assert rules(backend) and [e["event"] for e in logs if e["event"] == "observer.failed"]
    assert seen[-1].kind == "replace"


def test_the_file_source_snapshot_names_every_file_read(tmp_path):
    config = tmp_path / "state.yaml"
    write(config, policy_text())
    source = FileSource(config)
    snap = source.read()
    assert snap.revision is None and snap.origin == str(config.absolute())
    assert snap.inputs == {str(config.absolute()): snap.loaded.sha256}
    assert source.changed() == []
    write(config, policy_text(extra_rule=DENY_SSH))
    assert source.changed() == [str(config.absolute())]
    write(config, policy_text(extra_rule=BAD_PRIORITY))
    with pytest.raises(LoadError):
        source.read()
    assert source.changed() == []  # a failed read counts as seen: no reconcile storm at each resync


def test_outcome_kinds_are_checked():
    with pytest.raises(ValueError):
        Outcome(kind="applied", reason="x", origin="y", at=0.0)
    assert not Outcome(kind="failed", reason="x", origin="y", at=0.0)
