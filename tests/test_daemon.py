"""The reconciler without root: FakeBackend, a fake clock and a stand-in compiler."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon_helpers import BAD_PRIORITY, DENY_SSH, Env, fake_compile, policy_text, write
from nsg_agent.daemon.reconciler import Reconciler
from nsg_agent.daemon.shell import Daemon
from nsg_agent.daemon.status import StatusStore
from nsg_agent.daemon.targets import compile_host
from nsg_agent.testing import FakeBackend, FakeClock, RecordingNotifier


@pytest.fixture
def env(tmp_path: Path):
    """A config file, a fake kernel, a status store, a fake clock and a reconciler."""
    config = tmp_path / "etc" / "desired-state.yaml"
    config.parent.mkdir()
    write(config, policy_text())
    backend = FakeBackend()
    store = StatusStore(tmp_path / "run", "nsgh-test")
    clock = FakeClock()
    notifier = RecordingNotifier()
    rec = Reconciler(config, backend, store, clock=clock, wall=lambda: 1_700_000_000.0,
                     compile_fn=fake_compile, debounce=0.15, resync=2.0, notifier=notifier)

    return Env(config, backend, store, clock, rec, notifier)


def comments(backend: FakeBackend) -> set[str]:
    return {r["comment"] for r in backend.table.rules} if backend.table else set()


def policy_rules(backend: FakeBackend) -> list[dict]:
    """The table's rules without the stamp (the digest the table carries)."""
    from nsg_agent.kernel.backend import STAMP_CHAIN

    return [r for r in backend.table.rules if r["chain"] != STAMP_CHAIN]


def events(logs: list[dict]) -> list[str]:
    return [entry["event"] for entry in logs]


class TestReconcile:
    def test_good_file_is_applied_and_recorded(self, env):
        """A valid file ends up in the fake kernel, the status file records it, READY is sent."""
        with capture_logs() as logs:
            assert env.rec.reconcile("startup")
        assert "srv-nsg: UserRule_allow-http" in comments(env.backend)
        status = env.store.read()
        assert status.commit is not None and status.last_error is None
        assert status.commit.sha256 == __import__("hashlib").sha256(env.config.read_bytes()).hexdigest()
        assert status.commit.summary.rules == len(policy_rules(env.backend))
        assert env.backend.stamp() == status.commit.ruleset_sha256  # the table says what it holds
        assert "config.applied" in events(logs) and "agent.ready" in events(logs)
        assert env.notifier.sent[0][0] == "READY=1"

    def test_bad_edit_keeps_last_good_state_and_reports(self, env):
        """A bad edit leaves the kernel untouched and puts every problem in the status file."""
        env.rec.reconcile("startup")
        before = env.backend.dump()
        write(env.config, policy_text(extra_rule=BAD_PRIORITY))
        with capture_logs() as logs:
            assert not env.rec.reconcile("file")
        assert env.backend.dump() == before
        invalid = [e for e in logs if e["event"] == "config.invalid"]
        assert invalid and any("priority" in p["path"] for p in invalid[0]["problems"])
        status = env.store.read()
        assert status.last_error["kind"] == "config"
        assert status.commit.sha256 != __import__("hashlib").sha256(env.config.read_bytes()).hexdigest()

    def test_later_good_edit_is_applied(self, env):
        """After a bad edit, a good one is applied and clears the error."""
        env.rec.reconcile("startup")
        write(env.config, policy_text(extra_rule=BAD_PRIORITY))
        env.rec.reconcile("file")
        write(env.config, policy_text(extra_rule=DENY_SSH))
        assert env.rec.reconcile("file")
        assert "srv-nsg: UserRule_deny-ssh" in comments(env.backend)
        assert env.store.read().last_error is None

    def test_bad_file_at_start_enforces_nothing_and_sends_no_ready(self, env):
        """With no good state yet, a bad file applies nothing and READY is not sent."""
        write(env.config, policy_text(extra_rule=BAD_PRIORITY))
        assert not env.rec.reconcile("startup")
        assert env.backend.table is None and env.backend.batches == []
        assert not any(m[0] == "READY=1" for m in env.notifier.sent)

    def test_unchanged_ruleset_is_not_reapplied(self, env):
        """An edit that compiles to the same ruleset (a comment) does not touch the kernel."""
        env.rec.reconcile("startup")
        env.backend.hit("srv-nsg: UserRule_allow-http", packets=3)
        write(env.config, "# a comment\n" + policy_text())
        with capture_logs() as logs:
            assert env.rec.reconcile("file")
        assert "config.unchanged" in events(logs)
        assert len(env.backend.batches) == 1
        assert sum(c.packets for c in env.backend.counters().values()) == 3

    def test_restart_adopts_the_committed_table(self, env):
        """A new reconciler (daemon restart) keeps an identical kernel table and its counters."""
        env.rec.reconcile("startup")
        rec2 = Reconciler(env.config, env.backend, env.store, clock=env.clock, compile_fn=fake_compile,
                          notifier=RecordingNotifier())
        rec2.status.commit = env.store.read().commit
        assert rec2.reconcile("startup")
        assert len(env.backend.batches) == 1 and rec2.ready


class TestDrift:
    def test_deleted_table_is_restored_on_resync(self, env):
        """Someone deletes the table: the next resync re-applies the last good ruleset."""
        env.rec.reconcile("startup")
        good = env.backend.dump()
        env.backend.delete_table()
        env.clock.advance(2.0)
        with capture_logs() as logs:
            env.rec.tick()
        assert env.backend.dump() == good
        drift = [e for e in logs if e["event"] == "drift.detected"]
        assert drift and drift[0]["table"] == "missing" and "drift.repaired" in events(logs)

    def test_edited_table_is_restored_on_resync(self, env):
        """Someone removes a rule from the agent's table: resync notices and repairs it, by
        replacing the whole table (a delta assumes the kernel holds the last commit)."""
        write(env.config, policy_text(extra_rule=DENY_SSH))
        env.rec.reconcile("startup")
        good = env.backend.dump()
        env.backend.tamper()
        env.clock.advance(2.0)
        env.rec.tick()
        assert env.backend.dump() == good
        assert "transact" not in env.backend.calls and env.backend.calls.count("replace") == 2

    def test_drift_repair_uses_last_good_state_not_a_bad_file(self, env):
        """Drift is repaired with the last good ruleset even while the file is bad."""
        env.rec.reconcile("startup")
        good = env.backend.dump()
        write(env.config, policy_text(extra_rule=BAD_PRIORITY))
        env.rec.reconcile("file")
        env.backend.delete_table()
        env.clock.advance(2.0)
        env.rec.tick()
        assert env.backend.dump() == good

    def test_no_drift_no_apply(self, env):
        """A resync that finds the committed table does nothing."""
        env.rec.reconcile("startup")
        env.clock.advance(2.0)
        env.rec.tick()
        assert len(env.backend.batches) == 1


class TestFailures:
    def test_replace_failure_keeps_state_and_retries(self, env):
        """A refused replace leaves the old table, records the error, and is retried later."""
        env.rec.reconcile("startup")
        good = env.backend.dump()
        write(env.config, policy_text(extra_rule=DENY_SSH))
        env.backend.fail_next("replace", "Error: Could not process rule: No buffer space available")
        with capture_logs() as logs:
            assert not env.rec.reconcile("file")
        assert env.backend.dump() == good
        assert "apply.failed" in events(logs)
        assert env.store.read().last_error["kind"] == "apply"
        assert "No buffer space" in env.store.read().last_error["message"]
        env.clock.now = env.rec.next_deadline()
        env.rec.tick()
        assert "srv-nsg: UserRule_deny-ssh" in comments(env.backend)
        assert env.store.read().last_error is None

    def test_no_permission_at_startup_is_fatal(self, env):
        """Without CAP_NET_ADMIN the first apply can never succeed: the daemon stops with a
        clear error instead of retrying forever without READY."""
        from nsg_agent.daemon.reconciler import FatalError

        env.backend.fail_next("replace", "Error: Could not process rule: Operation not permitted")
        with capture_logs() as logs, pytest.raises(FatalError, match="CAP_NET_ADMIN"):
            env.rec.reconcile("startup")
        assert "agent.fatal" in events(logs)

    def test_no_permission_later_keeps_running(self, env):
        """Once rules are enforced, a permission error is retried like any other failure."""
        env.rec.reconcile("startup")
        write(env.config, policy_text(extra_rule=DENY_SSH))
        env.backend.fail_next("replace", "Error: Operation not permitted")
        assert not env.rec.reconcile("file")

    def test_apply_is_one_replace_without_dry_run(self, env):
        """The normal path runs the batch once (one transaction), no separate dry-run check."""
        assert env.rec.reconcile("startup")
        assert env.backend.calls.count("replace") == 1 and "check" not in env.backend.calls

    def test_check_first_runs_a_dry_run_before_the_transaction(self, env):
        """One-shot `nsg-agent apply`: the kernel checks the batch, then one replace."""
        env.rec.check_first = True
        assert env.rec.reconcile("apply")
        ops = [c for c in env.backend.calls if c in ("check", "replace")]
        assert ops == ["check", "replace"]

    def test_refused_check_attempts_no_transaction(self, env):
        env.rec.reconcile("startup")
        good = env.backend.dump()
        env.rec.check_first = True
        write(env.config, policy_text(extra_rule=DENY_SSH))
        env.backend.fail_next("check", "Error: Could not process rule")
        assert not env.rec.reconcile("apply")
        assert env.backend.calls.count("replace") == 1  # only the startup one
        assert env.backend.dump() == good
        assert env.store.read().last_error["kind"] == "apply"

    def test_refused_command_changes_nothing_and_is_named(self, env):
        """A batch with one bad command applies nothing and the error names that command."""
        env.rec.reconcile("startup")
        good = env.backend.dump()

        def bad(policy, interfaces, mode):
            rs = fake_compile(policy, interfaces, mode)
            rs.commands.append({"add": {"rule": {"family": "inet", "table": "nsg_agent",
                                                 "chain": "no_such_chain", "expr": []}}})
            return rs

        env.rec.compile_fn = bad
        write(env.config, policy_text(extra_rule=DENY_SSH))
        assert not env.rec.reconcile("file")
        assert env.backend.dump() == good
        problem = env.store.read().last_error["problems"][0]
        assert problem["command"]["add"]["rule"]["chain"] == "no_such_chain"

    def test_retry_backs_off(self, env):
        """Consecutive failures push the retry further out."""
        env.backend.fail_next("replace", times=3)
        env.rec.reconcile("startup")
        first = env.rec.retry_at - env.clock()
        env.clock.now = env.rec.retry_at
        env.rec.tick()
        second = env.rec.retry_at - env.clock()
        assert second > first

    def test_foreign_table_commands_are_refused(self, env):
        """A batch that touches another table is refused before it reaches the kernel."""
        def evil(policy, interfaces, mode):
            rs = fake_compile(policy, interfaces, mode)
            rs.commands.append({"flush": {"ruleset": None}})
            return rs

        env.rec.compile_fn = evil
        assert not env.rec.reconcile("startup")
        assert env.backend.table is None
        assert "only touches its own table" in env.store.read().last_error["message"]


class TestDebounce:
    def test_burst_collapses_into_one_reconcile(self, env):
        """Ten events within the debounce window cause exactly one apply."""
        env.rec.reconcile("startup")
        write(env.config, policy_text(extra_rule=DENY_SSH))
        for _ in range(10):
            env.rec.mark_dirty("file:desired-state.yaml")
            env.clock.advance(0.05)
            env.rec.tick()
        assert len(env.backend.batches) == 1  # still waiting: each event pushed the deadline
        env.clock.advance(0.2)
        with capture_logs() as logs:
            env.rec.tick()
        assert events(logs).count("reconcile.start") == 1
        assert len(env.backend.batches) == 2

    def test_nothing_happens_before_the_deadline(self, env):
        """A dirty mark waits for the debounce delay."""
        env.rec.mark_dirty("file")
        env.clock.advance(0.1)
        env.rec.tick()
        assert env.backend.batches == []
        env.clock.advance(0.1)
        env.rec.tick()
        assert len(env.backend.batches) == 1

    def test_resync_notices_a_change_the_watcher_missed(self, env):
        """If no file event arrives, the periodic resync still sees the new file hash."""
        env.rec.reconcile("startup")
        write(env.config, policy_text(extra_rule=DENY_SSH))
        env.clock.advance(2.0)
        env.rec.tick()  # resync marks dirty (immediately due)
        env.rec.tick()
        assert "srv-nsg: UserRule_deny-ssh" in comments(env.backend)


class TestDaemonShell:
    def test_sighup_handler_triggers_reload(self, env):
        """SIGHUP marks the reconciler dirty immediately; the next step reloads."""
        daemon = Daemon(env.rec, watch_links=False, watch_files=False)
        env.rec.reconcile("startup")
        write(env.config, policy_text(extra_rule=DENY_SSH))
        with capture_logs() as logs:
            daemon.handle_sighup(signal.SIGHUP, None)
            daemon.step(max_wait=0)
        assert "signal.reload" in events(logs)
        assert "srv-nsg: UserRule_deny-ssh" in comments(env.backend)

    def test_sigterm_stops_and_keeps_rules(self, env):
        """SIGTERM ends the loop; the table stays unless --remove-on-exit."""
        daemon = Daemon(env.rec, watch_links=False, watch_files=False)
        env.rec.reconcile("startup")
        daemon.handle_stop(signal.SIGTERM, None)
        with capture_logs() as logs:
            daemon.stop()
        assert env.backend.table is not None
        assert "table.kept" in events(logs) and ("STOPPING=1",) in env.notifier.sent

    def test_forked_child_takes_default_sigterm(self, env):
        """A fork of the daemon (pyroute2's namespace helpers) dies on SIGTERM instead of
        running the daemon's handler, which would keep it alive and hang its parent."""
        daemon = Daemon(env.rec, watch_links=False, watch_files=False)
        previous = signal.signal(signal.SIGTERM, daemon.handle_stop)
        try:
            pid = os.fork()
            if pid == 0:  # the child: wait to be terminated; exit 0 would mean it survived
                try:
                    time.sleep(5)
                finally:
                    os._exit(0)
            time.sleep(0.1)
            os.kill(pid, signal.SIGTERM)
            _, status = os.waitpid(pid, 0)
        finally:
            signal.signal(signal.SIGTERM, previous)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        assert daemon._stop is False

    def test_remove_on_exit_deletes_the_table(self, env):
        """With remove_on_exit the table is deleted when the daemon stops."""
        daemon = Daemon(env.rec, watch_links=False, watch_files=False, remove_on_exit=True)
        env.rec.reconcile("startup")
        daemon.stop()
        assert env.backend.table is None

    def test_watchdog_keepalive_when_requested(self, env):
        """With WATCHDOG_USEC set, the loop sends WATCHDOG=1 every half interval."""
        env.notifier.watchdog_interval = 0.5
        daemon = Daemon(env.rec, watch_links=False, watch_files=False)
        daemon.start()
        for _ in range(4):
            env.clock.advance(0.5)
            daemon.step(max_wait=0)
        assert env.notifier.sent.count(("WATCHDOG=1",)) >= 3

    def test_link_event_is_logged_and_reconciles_without_change(self, env):
        """A new interface is logged as link.added; the reconcile it triggers changes nothing."""
        daemon = Daemon(env.rec, watch_links=False, watch_files=False)
        env.rec.reconcile("startup")
        with capture_logs() as logs:
            daemon.on_link("added", "eth-srv")
            env.clock.advance(0.2)
            daemon.step(max_wait=0)
        assert "link.added" in events(logs) and "config.unchanged" in events(logs)
        assert len(env.backend.batches) == 1


class TestRealCompiler:
    def test_example_compiles_and_applies_on_the_fake(self, tmp_path, examples_dir):
        """The real compiler's batch for an example applies on the fake and is recorded."""
        store = StatusStore(tmp_path, None)
        backend = FakeBackend()
        rec = Reconciler(examples_dir / "port80-subnet-nic.yaml", backend, store, compile_fn=compile_host)
        assert rec.reconcile("startup")
        commit = store.read().commit
        assert commit.summary.rules == len(policy_rules(backend))
        assert commit.rule_index and all("|" in k for k in commit.rule_index.to_json())
        json.dumps(commit.rule_index.to_json())
        assert commit.rule_index == rec.last_good.rule_index and commit.summary == rec.last_good.summary


def test_every_log_event_is_documented(repo_dir):
    """Each event name the daemon emits appears in docs/daemon.md."""
    import re

    source = (repo_dir / "nsg_agent" / "daemon" / "reconciler.py").read_text()
    emitted = set(re.findall(r'log\.(?:info|error|warning|debug|exception)\(\s*"([a-z_.]+)"', source))
    emitted |= {"link.added", "link.removed"}  # f"link.{event}"
    doc = (repo_dir / "docs" / "daemon.md").read_text()
    assert emitted and not {e for e in emitted if f"`{e}`" not in doc}


class TestFileWatcher:
    def test_rename_into_place_marks_dirty(self, env):
        """An editor-style replace (write temp file, rename over) is seen by the watcher."""
        import time as _time

        env.rec.clock = _time.monotonic
        daemon = Daemon(env.rec, watch_links=False, watch_files=True)
        with capture_logs() as logs:
            daemon.start()
            try:
                env.rec.dirty_at = None  # forget the startup mark; wait for the file event
                write(env.config, policy_text(extra_rule=DENY_SSH))
                deadline = _time.monotonic() + 5
                while env.rec.dirty_at is None and _time.monotonic() < deadline:
                    _time.sleep(0.02)
            finally:
                daemon.stop()
        assert env.rec.dirty_at is not None
        changed = [e for e in logs if e["event"] == "config.changed"]
        assert changed and changed[0]["change"] in ("moved", "created", "closed", "modified")
        assert changed[0]["path"] == str(env.config)

    def test_unrelated_files_are_ignored(self, env):
        """Other files in the same directory do not trigger a reconcile."""
        import time as _time

        env.rec.clock = _time.monotonic
        daemon = Daemon(env.rec, watch_links=False, watch_files=True)
        daemon.start()
        try:
            env.rec.dirty_at = None
            (env.config.parent / "notes.txt").write_text("hello")
            write(env.config.parent / "other.yaml", "x: 1\n")
            _time.sleep(0.5)  # negative check: give inotify time to deliver (bounded)
        finally:
            daemon.stop()
        assert env.rec.dirty_at is None


class TestGenerationShortcut:
    def test_unchanged_generation_skips_the_listing(self, env):
        """While the nft generation has not moved, resync does not list the table."""
        env.rec.reconcile("startup")
        env.backend.calls.clear()
        for _ in range(3):
            env.clock.advance(2.0)
            env.rec.tick()
        assert "generation" in env.backend.calls and "list_table" not in env.backend.calls

    def test_every_tenth_resync_lists_anyway(self, env):
        """A full listing still happens periodically, whatever the generation says."""
        env.rec.reconcile("startup")
        env.backend.calls.clear()
        for _ in range(env.rec.full_check_every):
            env.clock.advance(2.0)
            env.rec.tick()
        assert env.backend.calls.count("list_table") == 1

    def test_moved_generation_without_drift_is_accepted(self, env):
        """Another table's change moves the generation; our table is checked and kept."""
        env.rec.reconcile("startup")
        env.backend.gen += 5  # someone committed elsewhere in the namespace
        env.clock.advance(2.0)
        env.rec.tick()
        assert len(env.backend.batches) == 1 and env.rec.kernel_generation == env.backend.gen

    def test_unchanged_ruleset_with_same_generation_is_not_listed(self, env):
        """An edit that compiles to the committed ruleset is recognised from the generation
        alone: no table listing, no apply."""
        env.rec.reconcile("startup")
        env.backend.calls.clear()
        write(env.config, "# only a comment\n" + policy_text())
        assert env.rec.reconcile("file")
        assert "list_table" not in env.backend.calls and "replace" not in env.backend.calls


class TestDeferredFingerprint:
    """The daemon's mode: the apply records the generation only; the listing comes later."""

    @pytest.fixture
    def rec(self, env):
        env.rec.defer_fingerprint = True
        return env.rec

    def test_apply_does_not_list_the_table(self, env, rec):
        """With a deferred fingerprint, an apply is one replace plus a generation read."""
        assert rec.reconcile("startup")
        assert "list_table" not in env.backend.calls and rec.kernel_fingerprint is None
        assert env.store.read().commit.kernel_generation == env.backend.gen

    def test_resync_takes_the_baseline_after_a_quiet_interval(self, env, rec):
        """The first resync a full interval after the apply lists the table once and records it."""
        rec.reconcile("startup")
        env.clock.advance(2.0)
        with capture_logs() as logs:
            rec.tick()
        assert rec.kernel_fingerprint == env.backend.fingerprint()
        assert env.store.read().commit.kernel_fingerprint == rec.kernel_fingerprint
        assert "fingerprint.recorded" in events(logs)

    def test_background_baseline(self, env, rec):
        """start_baseline lists in a thread and records the fingerprint of our commit."""
        rec.reconcile("startup")
        t = rec.start_baseline()
        assert t is not None
        t.join(5)
        assert rec.kernel_fingerprint == env.backend.fingerprint()

    def test_baseline_refused_after_a_foreign_commit(self, env, rec):
        """A listing taken after someone else's transaction is not trusted as the baseline."""
        rec.reconcile("startup")
        env.backend.gen += 1
        assert not rec._record_baseline(rec.kernel_generation)
        assert rec.kernel_fingerprint is None

    def test_foreign_commit_before_baseline_reapplies(self, env, rec):
        """If the generation moves before any baseline exists, the resync re-applies the last
        good ruleset (it cannot tell whether our table was touched)."""
        rec.reconcile("startup")
        env.backend.tamper()
        env.clock.advance(2.0)
        with capture_logs() as logs:
            rec.tick()
        drift = [e for e in logs if e["event"] == "drift.detected"]
        assert drift and drift[0]["table"] == "unverified" and len(env.backend.batches) == 2

    def test_drift_detected_after_baseline(self, env, rec):
        """With a baseline, an edited table is told apart from a foreign commit and repaired."""
        rec.reconcile("startup")
        good = env.backend.dump()
        env.clock.advance(2.0)
        rec.tick()  # baseline
        env.backend.tamper()
        env.clock.advance(2.0)
        with capture_logs() as logs:
            rec.tick()
        drift = [e for e in logs if e["event"] == "drift.detected"]
        assert drift and drift[0]["table"] == "changed" and env.backend.dump() == good

    def test_timing_event_names_the_phases(self, env, rec):
        """Each apply logs reconcile.timing (debug) with the duration of every phase."""
        with capture_logs() as logs:
            rec.reconcile("startup")
        timing = [e for e in logs if e["event"] == "reconcile.timing"]
        assert timing and timing[0]["outcome"] == "applied"
        assert {"load_ms", "resolve_ms", "compile_ms", "replace_ms", "status_ms"} <= set(timing[0])


class TestSettle:
    @pytest.mark.parametrize("pending", [False, True], ids=["idle", "after-partial-write"])
    def test_complete_file_skips_the_debounce(self, env, pending):
        """A file renamed into place is reconciled after the short settle, even if a partial
        write event had pushed the debounce deadline out."""
        from nsg_agent.daemon.scheduler import COMPLETE_SETTLE

        env.rec.reconcile("startup")
        write(env.config, policy_text(extra_rule=DENY_SSH))
        if pending:
            env.rec.mark_dirty("file:desired-state.yaml")
        env.rec.mark_dirty("file:desired-state.yaml", complete=True)
        env.clock.advance(COMPLETE_SETTLE)
        env.rec.tick()
        assert len(env.backend.batches) == 2


class TestDelta:
    """Edits go to the kernel as a delta when it provably still holds the last commit."""

    @staticmethod
    def fresh(commands) -> str:
        """The fake after a full replace of ``commands`` (stamped with their digest)."""
        import hashlib

        from nsg_agent.kernel.backend import batch_payload, stamp_commands

        fake = FakeBackend()
        fake.replace(commands + stamp_commands(hashlib.sha256(batch_payload(commands)).hexdigest()))
        return fake.dump()

    EDIT = policy_text().replace("access: Allow", "access: Deny", 1)  # allow-http now denies

    @pytest.fixture(autouse=True)
    def real_compiler(self, env):
        env.rec.compile_fn = compile_host  # the fake's one chain per NIC makes every edit ~100 %

    def test_edit_goes_as_a_delta(self, env):
        env.rec.reconcile("startup")
        write(env.config, self.EDIT)
        with capture_logs() as logs:
            assert env.rec.reconcile("file")
        assert "transact" in env.backend.calls and env.backend.calls.count("replace") == 1
        assert env.backend.dump() == self.fresh(env.rec.last_good.commands)
        applied = [e for e in logs if e["event"] == "config.applied"][0]
        assert applied["how"] == "delta" and 0 < applied["delta_commands"] < len(env.rec.last_good.commands)
        # the whole batch is serialized before the delta: its digest is the intent written
        # before the transaction and the stamp the delta leaves in the table
        import hashlib

        from nsg_agent.kernel.backend import batch_payload
        assert env.rec.last_good.payload == batch_payload(env.rec.last_good.commands)
        assert env.store.read().commit.ruleset_sha256 == hashlib.sha256(env.rec.last_good.payload).hexdigest()
        assert env.backend.stamp() == env.rec.last_good.sha256
        timing = [e for e in logs if e["event"] == "reconcile.timing"][0]
        assert list(timing).index("serialize_ms") < list(timing).index("intent_ms") < list(timing).index("transact_ms")

    def test_another_transaction_means_a_full_replace(self, env):
        """Any nftables transaction since our commit (generation moved): no delta."""
        env.rec.reconcile("startup")
        env.backend.gen += 1  # someone else committed something in the namespace
        write(env.config, self.EDIT)
        with capture_logs() as logs:
            assert env.rec.reconcile("file")
        assert "transact" not in env.backend.calls and env.backend.calls.count("replace") == 2
        assert [e for e in logs if e["event"] == "config.applied"][0]["how"] == "replace"

    def test_refused_delta_falls_back_to_replace(self, env):
        env.rec.reconcile("startup")
        write(env.config, self.EDIT)
        env.backend.fail_next("transact", "Error: Could not process rule: Device or resource busy")
        with capture_logs() as logs:
            assert env.rec.reconcile("file")
        assert "apply.delta_refused" in events(logs)
        ops = [c for c in env.backend.calls if c in ("transact", "replace")]
        assert ops == ["replace", "transact", "replace"]
        assert env.backend.dump() == self.fresh(env.rec.last_good.commands)

    def test_no_delta_option_always_replaces(self, env):
        env.rec.incremental = False
        env.rec.reconcile("startup")
        write(env.config, self.EDIT)
        assert env.rec.reconcile("file")
        assert "transact" not in env.backend.calls and env.backend.calls.count("replace") == 2


def test_live_state_is_frozen_and_collected_when_idle(env):
    """After a reconcile the enforced state is frozen out of the collector's passes; the full
    collection waits until the daemon has been idle."""
    import gc

    from nsg_agent.daemon.reconciler import IDLE_GC_DELAY

    gc.unfreeze()
    assert env.rec.reconcile("startup")
    assert gc.isenabled() and gc.get_freeze_count() > 0
    with capture_logs() as logs:
        env.clock.advance(IDLE_GC_DELAY / 2)
        env.rec.tick()
        assert gc.get_freeze_count() > 0 and "reconcile.gc" not in events(logs)
        env.clock.advance(IDLE_GC_DELAY)
        env.rec.tick()
    assert gc.get_freeze_count() == 0 and "reconcile.gc" in events(logs)
