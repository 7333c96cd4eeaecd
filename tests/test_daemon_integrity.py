"""Issue 13 without root: only complete files are enforced, element-level drift is seen and
repaired, the record never lies, a restart adopts what the kernel holds, the status file and
its directory are handled safely, one daemon per namespace (FakeBackend, fake clock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon_helpers import DENY_SSH, policy_text, write
from nsg_agent.cli.enforce import render_plan, render_status
from nsg_agent.daemon.operations import build_plan, collect_status
from nsg_agent.daemon.reconciler import Reconciler
from nsg_agent.daemon.status import NamespaceLocked, Status, StatusFileError, StatusStore, UnsafePath
from nsg_agent.daemon.targets import compile_host
from nsg_agent.kernel.backend import stamp_commands
from nsg_agent.testing import FakeBackend
from test_daemon import env, events  # noqa: F401 - the reconciler fixture

ELEMENT = ["7003", {"accept": None}]  # what an outsider adds to a verdict map


def real(env):  # noqa: F811
    """The fixture's reconciler with the real compiler and a generated policy whose
    classify levels use a named verdict map (something to tamper with)."""
    from bench.generate import Scale, generate

    state = generate(Scale(rules=4, prefixes=8, nics=1, asgs=2, seed=1)).state_with_interface("eth-srv")
    write(env.config, json.dumps(state))
    env.rec.compile_fn = compile_host
    return env


def a_map(backend: FakeBackend) -> str:
    return next(n for n, s in sorted(backend.table.sets.items()) if s.kind == "map")


class TestOnlyCompleteFiles:
    @pytest.mark.parametrize("text", ["", "   \n\n  \n", "null\n", "~\n", "# all commented out\n"],
                             ids=["empty", "whitespace", "null", "tilde", "comments-only"])
    def test_a_file_that_describes_nothing_is_never_enforced(self, env, text):  # noqa: F811
        """The last good state stays, config.incomplete is logged and recorded."""
        assert env.rec.reconcile("startup")
        before = env.backend.dump()
        write(env.config, text)
        with capture_logs() as logs:
            assert not env.rec.reconcile("file")
        assert env.backend.dump() == before
        err = [e for e in logs if e["event"] == "config.incomplete"][0]
        assert "describes nothing" in err["problem"] and "enforce: none" in err["problem"]
        assert env.store.read().last_error["kind"] == "incomplete"

    def test_an_empty_file_at_the_first_start_enforces_nothing(self, env):  # noqa: F811
        """No last good state: still refused, nothing is written to the kernel."""
        write(env.config, "")
        assert not env.rec.reconcile("startup")
        assert env.backend.table is None and not env.rec.ready

    def test_a_file_without_this_hosts_nics_is_refused(self, env):  # noqa: F811
        """The NIC lost its interface (a truncated or wrong file): the last good state stays."""
        assert env.rec.reconcile("startup")
        before = env.backend.dump()
        write(env.config, policy_text().replace("    interface: eth-srv\n", ""))
        with capture_logs() as logs:
            assert not env.rec.reconcile("file")
        assert env.backend.dump() == before
        assert "none of this host's NICs" in [e for e in logs if e["event"] == "config.incomplete"][0]["problem"]

    def test_a_restarted_daemon_compares_with_the_recorded_commit(self, env, tmp_path):  # noqa: F811
        """After a restart (no last good state in memory) the recorded commit's NICs count."""
        env.rec.compile_fn = compile_host
        assert env.rec.reconcile("startup")
        rec2 = Reconciler(env.config, env.backend, env.store, compile_fn=compile_host)
        rec2.restore(env.store.read())
        write(env.config, policy_text().replace("    interface: eth-srv\n", ""))
        assert not rec2.reconcile("startup")
        assert env.store.read().last_error["kind"] == "incomplete"

    def test_enforce_none_removes_the_table(self, env):  # noqa: F811
        """The explicit way: the table goes, the commit is forgotten, the daemon stays up."""
        assert env.rec.reconcile("startup")
        write(env.config, "enforce: none\n" + policy_text())
        with capture_logs() as logs:
            assert env.rec.reconcile("file")
        assert env.backend.table is None and env.store.read().commit is None
        assert "config.enforce_none" in events(logs)
        env.clock.advance(5)
        env.rec.tick()  # the resync has nothing to repair
        assert env.backend.table is None
        write(env.config, policy_text())
        assert env.rec.reconcile("file") and env.backend.table is not None

    def test_a_file_open_for_writing_is_not_read_as_final(self, env):  # noqa: F811
        """An in-place write in progress (the file held open for writing): the half-written,
        valid file is not enforced; once closed, the complete file is."""
        assert env.rec.reconcile("startup")
        before = env.backend.dump()
        with open(env.config, "w") as f:  # in place: truncate, write half, keep it open
            f.write(policy_text())
            f.flush()
            with capture_logs() as logs:
                env.clock.advance(1)
                assert not env.rec.reconcile("file")
            assert env.backend.dump() == before
            assert [e["why"] for e in logs if e["event"] == "config.unsettled"] == ["open for writing"]
            assert env.rec.dirty_at is not None  # looked at again shortly
            f.write(DENY_SSH)
        env.clock.advance(1)
        env.rec.tick()
        assert "srv-nsg: UserRule_deny-ssh" in {r["comment"] for r in env.backend.table.rules}

    def test_a_file_changed_while_read_is_read_again(self, env, monkeypatch):  # noqa: F811
        """Size/mtime/inode differing before and after the read: not taken as final."""
        assert env.rec.reconcile("startup")
        write(env.config, policy_text(extra_rule=DENY_SSH))
        from nsg_agent.sources import files as file_source

        load = file_source.loader.load

        def load_then_touch(*args, **kwargs):  # the file source's read: the file moves under it
            out = load(*args, **kwargs)
            os.utime(env.config, ns=(1, 1))
            return out

        monkeypatch.setattr(file_source.loader, "load", load_then_touch)
        with capture_logs() as logs:
            assert not env.rec.reconcile("file")
        assert [e["why"] for e in logs if e["event"] == "config.unsettled"] == ["changed while it was read"]
        monkeypatch.setattr(file_source.loader, "load", load)
        env.clock.advance(1)
        env.rec.tick()
        assert "srv-nsg: UserRule_deny-ssh" in {r["comment"] for r in env.backend.table.rules}


class TestElementDrift:
    def test_resync_repairs_an_element_added_while_the_generation_moved_for_another_reason(self, env):  # noqa: F811
        """The kernel's fingerprint covers set elements: an element-only edit is drift even
        when another table's transaction also moved the generation."""
        real(env)
        assert env.rec.reconcile("startup")
        env.clock.advance(2.5)
        env.rec.tick()  # the baseline fingerprint is taken
        assert env.rec.kernel_fingerprint is not None
        good = env.backend.dump()
        env.backend.foreign_commit()
        env.backend.tamper_element(a_map(env.backend), ELEMENT)
        assert env.backend.dump() != good
        with capture_logs() as logs:
            env.clock.advance(2.5)
            env.rec.tick()
        assert [e["table"] for e in logs if e["event"] == "drift.detected"] == ["changed"]
        assert env.backend.dump() == good  # the element is gone, everything else as committed

    def test_plan_and_status_see_the_element_and_apply_repairs_it(self, env):  # noqa: F811
        """plan says drift (not "no changes"), status says DIFFERS, apply of the same file
        makes the kernel equal to it again."""
        real(env)
        assert env.rec.reconcile("startup")
        env.rec._record_baseline(env.backend.gen)
        env.rec.status.commit = env.rec._commit(env.rec.last_good, applied_at=None)
        env.rec.status_file.write()
        good = env.backend.dump()
        env.backend.tamper_element(a_map(env.backend), ELEMENT)
        plan, summary = build_plan(str(env.config), "classify", env.store, env.backend)
        assert plan.drift and not plan.empty and "no changes" not in render_plan(plan, summary)
        data = collect_status(env.store, env.backend)
        assert data["kernel"]["matches_commit"] is False
        assert "DIFFERS" in render_status(data)
        rec = Reconciler(env.config, env.backend, env.store, compile_fn=compile_host)
        rec.restore(env.store.read())
        assert rec.reconcile("apply")
        assert env.backend.dump() == good
        assert env.backend.calls.count("replace") == 2


class TestRecord:
    def test_intent_before_the_transaction_outcome_after(self, env):  # noqa: F811
        """While the kernel commits, intent.json names the ruleset being applied; after the
        commit is recorded it is gone."""
        seen = []
        replace = env.backend.replace

        def watching(commands, payload=None):
            seen.append(env.store.read().pending)
            replace(commands)

        env.backend.replace = watching
        assert env.rec.reconcile("startup")
        assert seen[0]["ruleset_sha256"] == env.rec.last_good.sha256
        assert env.store.read().pending is None and not env.store.intent_path.exists()

    def test_a_kill_between_intent_and_outcome_leaves_an_unverified_record(self, env):  # noqa: F811
        """The next start never adopts on such a record: it applies, and the record is true."""
        assert env.rec.reconcile("startup")
        write(env.config, policy_text(extra_rule=DENY_SSH))

        def killed(commands, payload=None):
            FakeBackend.replace(env.backend, commands)
            raise SystemExit("kill -9")  # the process dies after the kernel committed

        env.backend.replace = killed
        env.rec.incremental = False
        with pytest.raises(SystemExit):
            env.rec.reconcile("file")
        status = env.store.read()
        assert status.unverified and status.commit.ruleset_sha256 != env.backend.stamp()
        assert status.pending["ruleset_sha256"] == env.backend.stamp()
        data = collect_status(env.store, env.backend)
        assert data["kernel"]["matches_commit"] is False
        assert "UNVERIFIED" in render_status(data) and "the pending ruleset" in render_status(data)

        del env.backend.replace
        rec2 = Reconciler(env.config, env.backend, env.store, compile_fn=env.rec.compile_fn)
        with capture_logs() as logs:
            rec2.restore(env.store.read())
            assert rec2.reconcile("startup")
        assert "status.unverified" in events(logs) and "config.applied" in events(logs)
        status = env.store.read()
        assert not status.unverified and status.commit.ruleset_sha256 == env.backend.stamp()

    def test_a_refused_apply_clears_its_intent(self, env):  # noqa: F811
        """Refused as a whole: the kernel holds what it held, the record stays verified."""
        env.backend.fail_next("replace", "Error: No buffer space available")
        assert not env.rec.reconcile("startup")
        assert env.store.read().pending is None


class TestAdopt:
    def test_a_restart_adopts_without_writing(self, env):  # noqa: F811
        """Same file, same kernel: no replace, no delta; status says adopted."""
        assert env.rec.reconcile("startup")
        writes = [c for c in env.backend.calls if c in ("replace", "transact", "delete_table")]
        rec2 = Reconciler(env.config, env.backend, env.store, compile_fn=env.rec.compile_fn)
        rec2.restore(env.store.read())
        with capture_logs() as logs:
            assert rec2.reconcile("startup")
        assert [c for c in env.backend.calls if c in ("replace", "transact", "delete_table")] == writes
        assert "config.adopted" in events(logs)
        data = collect_status(env.store, env.backend)
        assert data["commit"]["how"] == "adopted" and "adopted" in render_status(data)

    def test_a_table_carrying_another_ruleset_is_not_adopted(self, env):  # noqa: F811
        """The generation moved and the stamp names another ruleset: replaced."""
        assert env.rec.reconcile("startup")
        env.rec._record_baseline(env.backend.gen)
        env.rec.status.commit = env.rec._commit(env.rec.last_good, applied_at=None)
        env.rec.status_file.write()
        commands = env.rec.last_good.commands
        env.backend.transact(stamp_commands("0" * 64, refresh=True))
        rec2 = Reconciler(env.config, env.backend, env.store, compile_fn=env.rec.compile_fn)
        rec2.restore(env.store.read())
        with capture_logs() as logs:
            assert rec2.reconcile("startup")
        assert "config.adopted" not in events(logs) and env.backend.stamp() == env.rec.last_good.sha256
        assert env.rec.last_good.commands == commands


FOREIGN = {
    "json-list": "[1, 2]", "null": "null", "string": '"hello"', "not-json": "{status",
    "missing-keys": json.dumps({"commit": {"source": "x"}}),
    "extra-keys": json.dumps({"netns": None, "commit": None, "last_error": None, "pid": 1, "owner": "someone"}),
    "wrong-type": json.dumps({"commit": [], "pid": 1}),
}


class TestStatusFile:
    @pytest.mark.parametrize("content", FOREIGN.values(), ids=FOREIGN.keys())
    def test_a_foreign_status_file_is_an_error_naming_it(self, tmp_path, content):
        store = StatusStore(tmp_path, "nsgh-x")
        store.dir.mkdir(parents=True)
        store.path.write_text(content)
        with pytest.raises(StatusFileError) as err:
            store.read()
        assert str(store.path) in str(err.value)

    @pytest.mark.parametrize("content", FOREIGN.values(), ids=FOREIGN.keys())
    def test_apply_sets_it_aside_and_rebuilds(self, tmp_path, content):
        """``apply`` (the CLI's reconciler): the file is moved aside, the apply goes through,
        a new record is written; ``status`` and ``plan`` report it instead of a traceback."""
        import argparse

        from nsg_agent.cli.enforce import _reconciler

        config = tmp_path / "desired-state.yaml"
        write(config, policy_text())
        store = StatusStore(tmp_path / "run", "nsgh-x")
        store.dir.mkdir(parents=True)
        store.path.write_text(content)
        backend = FakeBackend()
        data = collect_status(store, backend)
        assert str(store.path) in data["record_error"] and "UNUSABLE" in render_status(data)
        plan, summary = build_plan(str(config), "classify", store, backend)
        assert plan.record_problem and str(store.path) in render_plan(plan, summary)
        with capture_logs() as logs:
            rec = _reconciler(str(config), argparse.Namespace(state_dir=str(tmp_path / "run"), netns="nsgh-x",
                                                              mode="classify"), backend)
            assert rec.reconcile("apply")
        corrupt = [e for e in logs if e["event"] == "status.corrupt"][0]
        assert Path(corrupt["moved_to"]).read_text() == content
        assert store.read().commit.sha256 == rec.last_good.loaded.sha256


class TestPaths:
    def test_dirs_and_files_get_safe_modes(self, tmp_path):
        store = StatusStore(tmp_path / "run", "nsgh-x")
        store.write(Status())
        assert (store.dir.stat().st_mode & 0o777, (tmp_path / "run").stat().st_mode & 0o777) == (0o750, 0o750)
        assert store.path.stat().st_mode & 0o777 == 0o640

    @pytest.mark.parametrize("planted", ["state-root", "namespace-dir"])
    def test_a_planted_symlink_is_refused_never_followed(self, tmp_path, planted):
        """The state root or the namespace directory replaced by a symlink: writing is refused
        and nothing appears in the link's target."""
        target = tmp_path / "elsewhere"
        target.mkdir()
        root = tmp_path / "run"
        if planted == "state-root":
            root.symlink_to(target)
        else:
            root.mkdir()
            (root / "nsgh-x").symlink_to(target)
        store = StatusStore(root, "nsgh-x")
        with pytest.raises(UnsafePath):
            store.write(Status())
        with pytest.raises(UnsafePath):
            store.lock()
        with pytest.raises(StatusFileError):
            store.read()
        assert list(target.iterdir()) == []

    def test_a_symlink_as_the_status_file_is_not_followed(self, tmp_path):
        store = StatusStore(tmp_path, "nsgh-x")
        store.dir.mkdir(parents=True)
        secret = tmp_path / "secret"
        secret.write_text("{}")
        store.path.symlink_to(secret)
        with pytest.raises(StatusFileError):
            store.read()
        store.write(Status())  # the rename replaces the link itself
        assert not store.path.is_symlink() and secret.read_text() == "{}"

    def test_a_world_writable_state_dir_is_refused(self, tmp_path):
        root = tmp_path / "run"
        root.mkdir()
        root.chmod(0o777)
        with pytest.raises(UnsafePath):
            StatusStore(root, "nsgh-x").write(Status())

    def test_config_writable_by_others_is_warned_about(self, env):  # noqa: F811
        env.config.chmod(0o666)
        with capture_logs() as logs:
            assert env.rec.reconcile("startup")
            env.rec.reconcile("again")
        warned = [e for e in logs if e["event"] == "config.insecure"]
        assert [w["path"] for w in warned] == [str(env.config)] and "others" in warned[0]["problem"]


class TestLock:
    def test_a_second_daemon_on_the_namespace_is_refused(self, tmp_path):
        """The lock is per namespace directory and held by another process: a clear error
        naming the holder's pid."""
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys; from nsg_agent.daemon.status import StatusStore; "
             "s = StatusStore(sys.argv[1], 'nsgh-x'); s.lock(); print('locked', flush=True); sys.stdin.read()",
             str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parent.parent)
        try:
            assert holder.stdout.readline().strip() == "locked"
            with pytest.raises(NamespaceLocked) as err:
                StatusStore(tmp_path, "nsgh-x").lock()
            assert f"pid {holder.pid}" in str(err.value) and "nsgh-x" in str(err.value)
            other = StatusStore(tmp_path, "nsgh-y")
            other.lock()  # another namespace: free
            other.unlock()
        finally:
            holder.stdin.close()
            holder.stdout.close()
            holder.wait(10)
        again = StatusStore(tmp_path, "nsgh-x")
        again.lock()  # released with the process
        again.unlock()
