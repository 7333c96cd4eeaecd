"""nsg_agent.testing.Namespaces against the real kernel: what it makes it always removes, and
it never touches a namespace it did not make.

Network safety: every namespace here is ``nsgtn-<tag>...`` (one ``nsgtnx-<tag>`` stands for
somebody else's, for the sweep), addresses are 10.91.1.x on a veth between two of them;
nothing is added to the root namespace (``root_nft_guard``, and the veth names are checked
absent there). Whatever a test leaves is removed by ``_cleanup``.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from typing import Iterator

import pytest

from host_helpers import Prober, run
from nsg_agent.host import netns as host_netns
from nsg_agent.testing import Namespaces

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root_nft_guard")]

PREFIX = "nsgtn"


@pytest.fixture
def tag() -> Iterator[str]:
    """A fresh tag; afterwards, any namespace of this tag still present is removed (and fails
    the test: the registry should have removed it)."""
    t = secrets.token_hex(3)
    yield t
    leftover = [n for n in host_netns.list_netns() if n.startswith((f"{PREFIX}-{t}", f"{PREFIX}x-{t}"))]
    for n in leftover:
        for pid in host_netns.pids_in(n, descendants=True):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        run("ip", "netns", "delete", n, check=False)
    assert not leftover, f"left behind: {leftover}"


def _in_root(ifname: str) -> bool:
    return run("ip", "link", "show", "dev", ifname, check=False).returncode == 0


def test_the_namespaces_are_removed_when_the_body_raises(tag):
    names = [f"{PREFIX}-{tag}a", f"{PREFIX}-{tag}b"]
    with pytest.raises(RuntimeError, match="the body failed"):
        with Namespaces(prefix=PREFIX) as ns:
            for n in names:
                ns.add(n)
            ns.veth(names[0], f"nsgtn{tag}a", names[1], f"nsgtn{tag}b")
            assert all(host_netns.exists(n) for n in names)
            raise RuntimeError("the body failed")
    assert not any(host_netns.exists(n) for n in names)


def test_a_creation_that_fails_half_way_is_removed_too(tag):
    name = f"{PREFIX}-{tag}h"
    with pytest.raises(FileNotFoundError):
        with Namespaces(prefix=PREFIX) as ns:
            ns.add(name, sysctls={"net.ipv4.no_such_sysctl": "1"})  # made, then the sysctl fails
    assert not host_netns.exists(name)


def test_a_process_left_inside_is_killed(tag):
    name = f"{PREFIX}-{tag}p"
    with Namespaces(prefix=PREFIX) as ns:
        ns.add(name)
        sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "30"])
        deadline = time.monotonic() + 5
        while sleeper.pid not in host_netns.pids_in(name, descendants=True) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sleeper.pid in host_netns.pids_in(name, descendants=True)
        t0 = time.monotonic()
    try:
        assert sleeper.wait(5) == -9  # SIGKILL
        assert time.monotonic() - t0 < 5
        assert not host_netns.exists(name)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(5)


def test_a_veth_between_two_namespaces_carries_a_ping(tag):
    a, b = f"{PREFIX}-{tag}a", f"{PREFIX}-{tag}b"
    if_a, if_b = f"nsgtn{tag}a", f"nsgtn{tag}b"
    with Namespaces(prefix=PREFIX) as ns:
        ns.add(a)
        ns.add(b, sysctls={"net.ipv4.icmp_echo_ignore_all": "0"})
        ns.veth(a, if_a, b, if_b)
        assert not _in_root(if_a) and not _in_root(if_b)
        ns.addr(a, if_a, "10.91.1.1/24")
        ns.addr(b, if_b, "10.91.1.2/24")
        ns.up(a, if_a)
        ns.up(b, if_b)
        assert ns.ip(a, "-o", "link", "show", if_a).stdout
        assert ns.ip(b, "-o", "link", "show", if_b).stdout
        prober = Prober(a)
        try:
            # like ping -c 1 -W 1, a few times while the link comes up (DAD does not apply to v4)
            assert any(prober.icmp("10.91.1.1", "10.91.1.2", timeout=1.0) for _ in range(3))
            assert not prober.icmp("10.91.1.1", "10.91.1.3", timeout=0.5)  # nobody there: no reply
        finally:
            prober.close()
        assert [v.if_a for v in ns.veths] == [if_a]
    assert not host_netns.exists(a) and not host_netns.exists(b)
    assert not _in_root(if_a) and not _in_root(if_b)


def test_names_outside_the_prefix_and_existing_names_are_refused_and_kept(tag):
    theirs = f"{PREFIX}-{tag}t"
    with Namespaces(prefix=PREFIX) as owner:
        owner.add(theirs)
        with Namespaces(prefix=PREFIX) as ns:
            with pytest.raises(ValueError, match="already exists"):
                ns.add(theirs)
            with pytest.raises(ValueError, match="does not start with"):
                ns.add(f"nsgtnx-{tag}")
            with pytest.raises(ValueError, match="does not start with"):
                ns.add(f"other-{tag}")
            mine = ns.add(f"{PREFIX}-{tag}m")
            with pytest.raises(ValueError, match="not made by this registry"):
                ns.veth(mine, f"nsgtn{tag}m", theirs, f"nsgtn{tag}t")  # someone else's namespace
            with pytest.raises(ValueError, match="not made by this registry"):
                ns.ip(theirs, "link", "set", "lo", "down")
            assert ns.names == (mine,)
        assert host_netns.exists(theirs), "a registry deleted a namespace it did not make"
        assert not host_netns.exists(mine)
        assert not _in_root(f"nsgtn{tag}m") and not _in_root(f"nsgtn{tag}t")
    assert not host_netns.exists(theirs)
    with pytest.raises(ValueError, match="does not start with 'nsg'"):
        Namespaces(prefix="tn")


def test_teardown_is_idempotent(tag):
    name = f"{PREFIX}-{tag}i"
    with Namespaces(prefix=PREFIX) as ns:
        ns.add(name)
        ns.teardown()
        assert not host_netns.exists(name) and ns.names == ()
        ns.teardown()
        again = ns.add(name)  # the name is free again, and the registry still works
        assert host_netns.exists(again)
    assert not host_netns.exists(name)
    ns.teardown()


def test_remove_takes_one_namespace_now(tag):
    a, b = f"{PREFIX}-{tag}a", f"{PREFIX}-{tag}b"
    with Namespaces(prefix=PREFIX) as ns:
        ns.add(a)
        ns.add(b)
        ns.veth(a, f"nsgtn{tag}a", b, f"nsgtn{tag}b")
        ns.remove(b)
        assert ns.names == (a,) and ns.veths == ()
        assert not host_netns.exists(b) and host_netns.exists(a)
        assert "nsgtn" not in ns.ip(a, "-o", "link", "show").stdout  # the veth went with its peer
    assert not host_netns.exists(a)


def test_sweep_removes_only_its_prefix(tag):
    stale = [f"{PREFIX}-{tag}s1", f"{PREFIX}-{tag}s2"]
    other = f"{PREFIX}x-{tag}"  # starts with nsgtn, but not nsgtn-: somebody else's
    for n in [*stale, other]:
        run("ip", "netns", "add", n)  # as a crashed run would have left them
    sleeper = subprocess.Popen(["ip", "netns", "exec", stale[0], "sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while not host_netns.pids_in(stale[0], descendants=True) and time.monotonic() < deadline:
            time.sleep(0.02)
        swept = Namespaces.sweep(PREFIX)
        assert set(stale) <= set(swept)
        assert all(n.startswith(f"{PREFIX}-") for n in swept)
        assert not any(host_netns.exists(n) for n in stale)
        assert host_netns.exists(other)
        assert sleeper.wait(5) == -9
        with pytest.raises(ValueError):
            Namespaces.sweep("tn")
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(5)
        run("ip", "netns", "delete", other, check=False)
