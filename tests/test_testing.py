"""The test doubles that ship in nsg_agent.testing behave as documented (structlog tests its
``testing`` module the same way): what tests build on must itself be tested."""

from __future__ import annotations

import pytest

from daemon_helpers import fake_compile, policy_text, write
from nsg_agent.daemon.reconciler import Reconciler
from nsg_agent.daemon.status import StatusStore
from nsg_agent.kernel.backend import TABLE_NAME
from nsg_agent.kernel.errors import NftError, NotFound
from nsg_agent.testing import FakeBackend, FakeClock, RecordingNotifier

TABLE = {"family": "inet", "name": TABLE_NAME}
CHAIN = {"family": "inet", "table": TABLE_NAME, "name": "c"}


def _table(*rules: str) -> list[dict]:
    return [{"add": {"table": TABLE}}, {"delete": {"table": TABLE}}, {"add": {"table": TABLE}},
            {"add": {"chain": CHAIN}},
            *({"add": {"rule": {**CHAIN, "chain": "c", "comment": c, "expr": [{"counter": None}, {"accept": None}]}}}
              for c in rules)]


def test_the_clock_moves_only_when_told_and_only_forward():
    clock = FakeClock(5.0)
    assert clock() == 5.0
    clock.advance(1.5)
    assert clock() == 6.5
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_the_notifier_records_instead_of_sending():
    n = RecordingNotifier(watchdog_interval=0.5)
    assert n.ready("enforcing x") and n.status("s") and n.watchdog()
    assert n.sent == [("READY=1", "STATUS=enforcing x"), ("STATUS=s",), ("WATCHDOG=1",)]
    assert n.states == ["READY=1", "STATUS=s", "WATCHDOG=1"] and n.watchdog_interval == 0.5


def test_a_commit_is_all_or_nothing_and_moves_the_generation():
    b = FakeBackend()
    b.replace(_table("a"))
    gen = b.generation()
    with pytest.raises(NotFound):  # the second command refers to a chain that is not there
        b.transact([{"add": {"rule": {**CHAIN, "chain": "c", "comment": "b", "expr": [{"accept": None}]}}},
                    {"add": {"rule": {**CHAIN, "chain": "nope", "comment": "x", "expr": [{"accept": None}]}}}])
    assert [r["comment"] for r in b.table.rules] == ["a"] and b.generation() == gen
    b.fail_next("replace", "No such file or directory")
    with pytest.raises(NftError):
        b.replace(_table("z"))
    assert [r["comment"] for r in b.table.rules] == ["a"]


def test_hooks_run_around_each_commit_and_listing():
    b = FakeBackend()
    seen: list[tuple] = []
    b.before_commit.append(lambda op, cmds: seen.append(("before", op, len(cmds), b.gen)))
    b.after_commit.append(lambda op, cmds: seen.append(("after", op, len(cmds), b.gen)))
    b.before_list.append(lambda: seen.append(("list",)))
    b.replace(_table("a"))
    b.list_table()
    b.delete_table()
    assert seen == [("before", "replace", 5, 1), ("after", "replace", 5, 2), ("list",),
                    ("before", "delete_table", 0, 2), ("after", "delete_table", 0, 3)]


def test_a_before_commit_hook_that_raises_refuses_the_batch():
    b = FakeBackend()
    b.replace(_table("a"))

    def refuse(op, commands):
        raise NftError("refused by the hook")

    b.before_commit.append(refuse)
    with pytest.raises(NftError):
        b.replace(_table("b"))
    assert [r["comment"] for r in b.table.rules] == ["a"]


def test_someone_elses_commit_in_the_window_after_ours(tmp_path):
    """The window the reconciler documents: a transaction in another table right after our
    commit, before the generation is read, is taken as part of our commit. The hook puts one
    exactly there; the listing baseline still finds our table as committed, so nothing is
    re-applied and the next resync agrees."""
    config = tmp_path / "s.yaml"
    write(config, policy_text())
    backend, clock = FakeBackend(), FakeClock()
    rec = Reconciler(config, backend, StatusStore(tmp_path / "run", "nsgh-window"), clock=clock,
                     compile_fn=fake_compile, resync=2.0)
    backend.after_commit.append(lambda op, cmds: backend.foreign_commit())
    assert rec.reconcile("startup").kind == "replace"
    backend.after_commit.clear()
    assert rec.kernel_generation == backend.gen  # the foreign commit is inside "ours"
    replaces = backend.calls.count("replace")
    for _ in range(3):
        clock.advance(2.0)
        rec.tick()
    assert backend.calls.count("replace") == replaces and rec.kernel_fingerprint == backend.fingerprint()


# --- Namespaces: the name checks (no root needed: they refuse before any command runs) -----------


def test_namespaces_refuse_a_prefix_outside_nsg():
    from nsg_agent.testing import Namespaces

    for bad in ("tn", "", "nsgh-", "nsg/h", "nsg h"):
        with pytest.raises(ValueError):
            Namespaces(prefix=bad)
    for bad in ("tn", "nsgh-"):
        with pytest.raises(ValueError):
            Namespaces.sweep(bad)


def test_namespaces_refuse_names_outside_their_prefix_and_namespaces_they_did_not_make():
    from nsg_agent.testing import Namespaces

    ns = Namespaces(prefix="nsgt")
    for bad in ("nsgtx-a", "nsgt", "nsgt-", "other-a", "nsgt-a/b", "nsgh-a"):
        with pytest.raises(ValueError, match="does not start with|invalid"):
            ns.add(bad)
    with pytest.raises(ValueError, match="not made by this registry"):
        ns.veth("nsgt-a", "a", "nsgt-b", "b")
    with pytest.raises(ValueError, match="not made by this registry"):
        ns.addr("nsgt-a", "eth0", "10.0.0.1/24")
    with pytest.raises(ValueError, match="not made by this registry"):
        ns.remove("nsgt-a")
    assert ns.names == () and ns.veths == ()
    ns.teardown()  # nothing recorded: nothing run
    ns.teardown()
