"""The daemon on a remote machine (issue 12): an edit that would lock out a live management
session is refused (unless --force), and with --confirm-edits an applied edit is rolled back
unless 'nsg-agent confirm' takes the pending record in time. Fake kernel, fake clock."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon_helpers import Env, fake_compile, policy_text, write
from nsg_agent.daemon import confirm
from nsg_agent.daemon.reconciler import Reconciler
from nsg_agent.daemon.status import StatusStore
from nsg_agent.host.conntrack import CtFlow
from nsg_agent.testing import FakeBackend, FakeClock

IP = ipaddress.ip_address
ALLOW_SSH = """\
      - name: allow-ssh
        priority: 105
        direction: Inbound
        access: Allow
        protocol: Tcp
        sourceAddressPrefix: Internet
        sourcePortRange: "*"
        destinationAddressPrefix: "*"
        destinationPortRange: "22"
"""
EXTRA = ALLOW_SSH.replace('"22"', '"2222"').replace("allow-ssh", "ssh-2222").replace("105", "106")
LINKS = {"lo": [IP("127.0.0.1")], "eth-srv": [IP("10.50.1.4")]}
SSH = [CtFlow(4, 6, IP("203.0.113.7"), IP("10.50.1.4"), 51000, 22)]


@pytest.fixture
def env(tmp_path: Path):
    config = tmp_path / "desired-state.yaml"
    write(config, policy_text(extra_rule=ALLOW_SSH))
    backend = FakeBackend()
    store = StatusStore(tmp_path / "run", "nsgh-safety")
    clock = FakeClock()
    rec = Reconciler(config, backend, store, clock=clock, compile_fn=fake_compile, debounce=0.1, resync=100.0)
    rec.host_reader = lambda: (LINKS, SSH)

    return Env(config, backend, store, clock, rec)


def _events(logs) -> list[str]:
    return [e["event"] for e in logs]


def test_edit_that_locks_out_the_session_is_refused(env):
    assert env.rec.reconcile("startup")
    before = env.backend.dump()
    write(env.config, policy_text())  # allow-ssh removed: the session's class is denied
    with capture_logs() as logs:
        assert not env.rec.reconcile("file")
    assert "config.lockout" in _events(logs) and env.backend.dump() == before
    problem = next(e for e in logs if e["event"] == "config.lockout")["problem"]
    assert "203.0.113.7:51000 -> 10.50.1.4:22" in problem and "DenyAllInBound" in problem
    assert env.store.read().last_error["kind"] == "lockout"
    env.rec.lockout_check = False  # run --force
    assert env.rec.reconcile("file") and env.backend.dump() != before


def test_first_start_that_would_lock_out_is_refused(env):
    write(env.config, policy_text())
    with capture_logs() as logs:
        assert not env.rec.reconcile("startup")
    assert "config.lockout" in _events(logs) and env.backend.table is None


def test_unconfirmed_edit_is_rolled_back_and_not_reapplied(env):
    env.rec.confirm_edits = 30.0
    assert env.rec.reconcile("startup")
    first = env.backend.dump()
    assert confirm.pending(env.store) is None  # the start is not an edit
    write(env.config, policy_text(extra_rule=ALLOW_SSH + EXTRA))
    assert env.rec.reconcile("file")
    edited = env.backend.dump()
    assert edited != first and confirm.describe(env.store)["seconds_left"] > 0
    env.clock.advance(29)
    env.rec.tick()
    assert env.backend.dump() == edited  # still inside the window
    env.clock.advance(2)
    with capture_logs() as logs:
        env.rec.tick()
    assert "config.rolled_back" in _events(logs)
    assert env.backend.dump() == first and confirm.pending(env.store) is None
    assert env.store.read().last_error["kind"] == "rolled-back"
    with capture_logs() as logs:  # the same content again (a resync, a SIGHUP): kept out
        assert not env.rec.reconcile("sighup")
    assert "config.rejected" in _events(logs) and env.backend.dump() == first


def test_confirmed_edit_stays(env):
    env.rec.confirm_edits = 30.0
    assert env.rec.reconcile("startup")
    write(env.config, policy_text(extra_rule=ALLOW_SSH + EXTRA))
    assert env.rec.reconcile("file")
    edited = env.backend.dump()
    assert confirm.confirm(env.store)["applied_sha256"] == env.rec.last_good.loaded.sha256
    with capture_logs() as logs:
        env.rec.tick()
    assert "confirm.confirmed" in _events(logs)
    env.clock.advance(60)
    env.rec.tick()
    assert env.backend.dump() == edited and env.rec.pending_edit is None
