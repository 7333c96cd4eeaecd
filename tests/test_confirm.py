"""apply --confirm's record: confirm and rollback race for one rename; a rollback restores
the previous table (one batch), the status record and the applied desired state."""

from __future__ import annotations

import json
import time

from nsg_agent.compiler.results import RuleIndex, Summary
from nsg_agent.daemon import confirm
from nsg_agent.daemon.status import Commit, Status, StatusStore
from nsg_agent.testing import FakeBackend


def _commit(sha: str) -> Commit:
    return Commit(source=f"/x/{sha}.yaml", sha256=sha, files={}, applied_at=1.0, mode="classify",
                  ruleset_sha256="r", summary=Summary(), rule_index=RuleIndex(), rules={}, sets={})


def _store(tmp_path) -> StatusStore:
    store = StatusStore(tmp_path, "nsgx")
    store.write(Status(netns="nsgx", commit=_commit("old")))
    store.applied_path.parent.mkdir(parents=True, exist_ok=True)
    store.applied_path.write_text('{"virtualNetworks": []}')
    return store


def test_rollback_restores_table_status_and_applied_state(tmp_path):
    store = _store(tmp_path)
    backend = FakeBackend()
    data = confirm.prepare(store, None, 30)  # no table before: the rollback removes ours
    backend.replace([{"add": {"table": {"family": "inet", "name": "nsg_agent"}}}])
    store.write(Status(netns="nsgx", commit=_commit("new")))
    store.applied_path.write_text('{"networkSecurityGroups": []}')
    (store.dir / confirm.PENDING).write_text(json.dumps({**data, "applied_sha256": "new"}))
    assert confirm.describe(store)["rolls_back_to"] == "old"
    assert confirm.rollback(store, backend) is not None
    assert backend.list_table() is None
    status = store.read()
    assert status.commit.sha256 == "old" and status.last_error["kind"] == "rolled-back"
    assert store.applied_path.read_text() == '{"virtualNetworks": []}'
    assert confirm.pending(store) is None
    assert confirm.rollback(store, backend) is None  # nothing left to roll back


def test_confirm_wins_the_race(tmp_path):
    store = _store(tmp_path)
    data = confirm.prepare(store, None, 30)
    (store.dir / confirm.PENDING).write_text(json.dumps({**data, "applied_sha256": "new"}))
    assert confirm.confirm(store)["applied_sha256"] == "new"
    assert confirm.rollback(store, FakeBackend()) is None
    assert confirm.confirm(store) is None


def test_watch_rolls_back_at_the_deadline(tmp_path):
    store = _store(tmp_path)
    backend = FakeBackend()
    backend.close = lambda: None  # the watcher closes the backend it made
    data = confirm.prepare(store, None, 0.2)
    (store.dir / confirm.PENDING).write_text(json.dumps({**data, "applied_sha256": "new"}))
    t0 = time.monotonic()
    assert confirm.watch(store, lambda: backend, poll=0.05) == "rolled-back"
    assert time.monotonic() - t0 >= 0.15
