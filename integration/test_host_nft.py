"""The real libnftables backend and the namespace worker, in a throwaway namespace."""

from __future__ import annotations

import os
import threading

import pytest

from host_helpers import run
from nsg_agent.host.netns import NetnsError, NetnsRunner, current_inode
from nsg_agent.kernel.backend import TABLE_NAME, NftBackend
from nsg_agent.kernel.errors import NftError

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root_nft_guard")]

T = {"family": "inet", "name": TABLE_NAME}


def batch(*rules: str) -> list[dict]:
    cmds = [{"add": {"table": T}}, {"delete": {"table": T}}, {"add": {"table": T}},
            {"add": {"chain": {"family": "inet", "table": TABLE_NAME, "name": "input", "type": "filter",
                               "hook": "input", "prio": 0, "policy": "accept"}}}]
    for comment in rules:
        cmds.append({"add": {"rule": {"family": "inet", "table": TABLE_NAME, "chain": "input",
                                      "comment": comment, "expr": [{"counter": None}, {"accept": None}]}}})
    return cmds


@pytest.fixture
def backend(host_pair):
    b = NftBackend(host_pair.srv)
    try:
        yield b
    finally:
        b.close()


def test_runner_moves_only_its_thread(host_pair):
    """The worker thread is in the target namespace; the calling thread is not moved."""
    mine = current_inode()
    with NetnsRunner(host_pair.srv) as r:
        theirs = r.call(current_inode)
        assert theirs != mine
        assert r.call(threading.current_thread).name != threading.current_thread().name
    assert current_inode() == mine
    assert os.stat(f"/run/netns/{host_pair.srv}").st_ino == theirs


def test_missing_namespace_is_an_error_and_not_created():
    """A namespace that does not exist is reported, never created."""
    with pytest.raises(NetnsError, match="does not exist"):
        NetnsRunner("nsgh-doesnotexist")
    assert not os.path.exists("/run/netns/nsgh-doesnotexist")


def test_replace_list_counters_delete(backend, host_pair):
    """A batch replaces the table; listing, counters and delete work in the namespace only."""
    backend.check(batch("nsg: UserRule_a"))
    backend.replace(batch("nsg: UserRule_a", "nsg: UserRule_b"))
    assert set(c for _, c in backend.counters()) == {"nsg: UserRule_a", "nsg: UserRule_b"}
    first = backend.fingerprint()
    backend.replace(batch("nsg: UserRule_a"))
    assert backend.fingerprint() not in (None, first)
    assert "nsg_agent" not in run("nft", "list", "tables").stdout
    assert backend.delete_table() is True
    assert backend.delete_table() is False
    assert backend.list_table() is None and backend.fingerprint() is None


def test_check_names_the_failing_command(backend):
    """A dry run that fails reports which command the kernel refused; nothing changes."""
    cmds = batch("nsg: UserRule_a")
    bad = {"add": {"rule": {"family": "inet", "table": TABLE_NAME, "chain": "no-such-chain",
                            "expr": [{"accept": None}]}}}
    with pytest.raises(NftError) as err:
        backend.check(cmds + [bad])
    assert err.value.index == len(cmds) and err.value.command == bad
    assert "No such file or directory" in err.value.error
    assert backend.list_table() is None


def test_failed_replace_keeps_the_previous_table(backend):
    """One transaction: a batch failing at its last command leaves the old table in force."""
    backend.replace(batch("nsg: UserRule_old"))
    before = backend.fingerprint()
    bad = {"add": {"rule": {"family": "inet", "table": TABLE_NAME, "chain": "no-such-chain",
                            "expr": [{"accept": None}]}}}
    cmds = batch("nsg: UserRule_new")
    with pytest.raises(NftError) as err:
        backend.replace(cmds + [bad])
    assert backend.fingerprint() == before
    assert {c for _, c in backend.counters()} == {"nsg: UserRule_old"}
    # No dry run before the replace; the refusal is diagnosed afterwards, precisely.
    assert err.value.index == len(cmds) and err.value.command == bad


def test_generation_differs_between_namespaces(backend, host_pair):
    """The generation includes the namespace's cookie: two namespaces never share a value."""
    other = NftBackend(host_pair.cli)
    try:
        assert other.generation() != backend.generation()
    finally:
        other.close()


def test_other_tables_are_never_touched(backend, host_pair):
    """Replacing and deleting the agent's table leaves another table in the namespace alone."""
    run("ip", "netns", "exec", host_pair.srv, "nft", "add table inet othertable; add chain inet othertable c")
    backend.replace(batch("nsg: UserRule_a"))
    backend.delete_table()
    listing = run("ip", "netns", "exec", host_pair.srv, "nft", "list", "tables").stdout
    assert "inet othertable" in listing and TABLE_NAME not in listing
    with pytest.raises(NftError, match="only touches its own table"):
        backend.replace([{"flush": {"ruleset": None}}])
    assert "inet othertable" in run("ip", "netns", "exec", host_pair.srv, "nft", "list", "tables").stdout


def test_generation_moves_with_any_transaction(backend, host_pair):
    """The nft generation changes with our replace and with anyone else's commit."""
    g0 = backend.generation()
    assert isinstance(g0, int)
    backend.replace(batch("nsg: UserRule_a"))
    g1 = backend.generation()
    assert g1 != g0 and backend.generation() == g1
    run("ip", "netns", "exec", host_pair.srv, "nft", "add table inet othertable")
    assert backend.generation() != g1
