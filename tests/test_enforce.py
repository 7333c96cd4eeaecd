"""plan and status without root: FakeBackend as the kernel, a temporary status directory."""

from __future__ import annotations

import json

import pytest

from daemon_helpers import BAD_PRIORITY, DENY_SSH, policy_text, write
from nsg_agent.cli.enforce import render_plan, render_status
from nsg_agent.daemon.operations import build_plan, collect_status
from nsg_agent.daemon.reconciler import Reconciler
from nsg_agent.daemon.status import StatusStore
from nsg_agent.daemon.targets import compile_host
from nsg_agent.testing import FakeBackend


@pytest.fixture
def applied(tmp_path):
    """A file applied by the reconciler (real compiler) onto a fake kernel."""
    config = tmp_path / "desired-state.yaml"
    write(config, policy_text())
    store = StatusStore(tmp_path / "run", "nsgh-x")
    backend = FakeBackend()
    assert Reconciler(config, backend, store, compile_fn=compile_host).reconcile("test")
    return config, store, backend


class TestPlan:
    def test_same_file_plans_nothing(self, applied):
        """Planning the applied file against the committed state shows no change."""
        config, store, backend = applied
        plan, summary = build_plan(str(config), "classify", store, backend)
        assert plan.empty and plan.table_present and not plan.drift
        assert "no changes" in render_plan(plan, summary)
        assert summary == store.read().commit.summary  # the same file compiles to the recorded summary

    def test_edit_shows_added_rule(self, applied, tmp_path):
        """A new rule appears as added, by its comment."""
        config, store, backend = applied
        edited = tmp_path / "edited.yaml"
        write(edited, policy_text(extra_rule=DENY_SSH))
        plan, summary = build_plan(str(edited), "classify", store, backend)
        assert "srv-nsg: UserRule_deny-ssh" in plan.added and not plan.removed
        text = render_plan(plan, summary)
        assert "+ srv-nsg: UserRule_deny-ssh" in text and "1 added" in text

    def test_removed_rule_and_missing_table(self, tmp_path, applied):
        """Dropping a rule shows it removed; a deleted kernel table is reported."""
        config, store, backend = applied
        write(config, policy_text(extra_rule=DENY_SSH))
        Reconciler(config, backend, store, compile_fn=compile_host).reconcile("test")
        backend.delete_table()
        write(config, policy_text())
        plan, summary = build_plan(str(config), "classify", store, backend)
        assert plan.removed == ["srv-nsg: UserRule_deny-ssh"]
        assert plan.table_present is False
        assert "absent" in render_plan(plan, summary)
        json.dumps(plan.as_dict())

    def test_drift_is_reported(self, applied):
        """A table changed behind the agent's back shows as drift."""
        config, store, backend = applied
        backend.tamper()
        plan, summary = build_plan(str(config), "classify", store, backend)
        assert plan.drift and not plan.empty
        assert "drift" in render_plan(plan, summary)


class TestStatus:
    def test_status_shows_commit_counts_and_hits(self, applied):
        """status joins the commit with live counters and the rule index."""
        config, store, backend = applied
        backend.hit("srv-nsg: UserRule_allow-http", packets=7, nbytes=700)
        data = collect_status(store, backend)
        assert data["commit"]["source"] == str(config.absolute())
        assert data["kernel"]["table_present"] and data["kernel"]["matches_commit"]
        hits = [r for r in data["kernel"]["rules"] if r["packets"]]
        assert [(r["comment"], r["packets"], r["bytes"], r["rule"]) for r in hits] == [
            ("srv-nsg: UserRule_allow-http", 7, 700, "UserRule_allow-http")]
        text = render_status(data)
        assert "matches the commit" in text and "srv-nsg: UserRule_allow-http" in text
        assert data["commit"]["sha256"] in text

    def test_status_shows_last_error_and_drift(self, applied):
        """A bad edit's error and a deleted table both show up."""
        config, store, backend = applied
        rec = Reconciler(config, backend, store, compile_fn=compile_host)
        rec.status.commit = store.read().commit
        write(config, policy_text(extra_rule=BAD_PRIORITY))
        rec.reconcile("test")
        backend.delete_table()
        data = collect_status(store, backend)
        assert data["last_error"]["kind"] == "config"
        assert data["kernel"]["table_present"] is False
        text = render_status(data)
        assert "last error (config" in text and "absent" in text

    def test_status_without_kernel_access(self, applied):
        """Without a backend (not root) status still prints the remembered commit."""
        _, store, _ = applied
        data = collect_status(store, None)
        assert data["kernel"] is None and data["commit"]["counts"]["rules"] > 0
        assert "not read" in render_status(data)

    def test_nothing_applied_yet(self, tmp_path):
        """A namespace the agent never touched has no commit."""
        data = collect_status(StatusStore(tmp_path, "nsgh-none"), FakeBackend())
        assert data["commit"] is None
        assert "enforcing: nothing" in render_status(data)


@pytest.mark.parametrize("argv", [["plan", "f.yaml"], ["apply", "f.yaml", "--netns", "x"],
                                  ["status", "--json"], ["remove"], ["run", "--config", "f.yaml", "--resync", "2"]],
                         ids=["plan", "apply", "status", "remove", "run"])
def test_commands_are_registered(argv):
    """Every enforcement command parses and has a handler."""
    from nsg_agent.cli.main import build_parser

    args = build_parser().parse_args(argv)
    assert callable(args.func)


@pytest.mark.parametrize("tamper", [False, True], ids=["untouched", "tampered"])
def test_status_before_the_listing_baseline(tmp_path, tamper):
    """A daemon commit that so far records only the nft generation (the listing fingerprint
    comes later) reads as matching while untouched, and as drift once the table changed."""
    config = tmp_path / "desired-state.yaml"
    write(config, policy_text())
    store = StatusStore(tmp_path / "run", "nsgh-x")
    backend = FakeBackend()
    rec = Reconciler(config, backend, store, compile_fn=compile_host)
    rec.defer_fingerprint = True
    assert rec.reconcile("test")
    assert store.read().commit.kernel_fingerprint is None
    if tamper:
        backend.tamper()
    data = collect_status(store, backend)
    assert data["kernel"]["matches_commit"] is not tamper
    plan, _ = build_plan(str(config), "classify", store, backend)
    assert plan.drift is tamper
