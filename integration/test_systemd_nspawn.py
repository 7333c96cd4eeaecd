"""nsg-agent under real systemd: a Debian 12 container booted with systemd-nspawn.

The container is installed with scripts/provision.sh (the Vagrant lab's script), runs
systemd/nsg-agent.service as shipped, and lives in a throwaway network namespace
``nsgs-<id>`` joined by a veth to a peer namespace ``nsgs-<id>-peer`` from which real TCP
connections are made. See integration/nspawn.py and docs/systemd.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
from pathlib import Path

import pytest

from nsg_agent.desired.loader import load
from nsg_agent.desired.vocabulary import Access, Direction
from nsg_agent.semantics.policy import Flow
from nsg_agent.semantics.resolver import protocol_number, resolve, verify
from nspawn import (
    CONTAINER_ADDR,
    PEER_ADDR,
    REPO,
    Container,
    HarnessError,
    apt_mirror,
    ensure_rootfs,
    ensure_wheelhouse,
    install_script_packages,
    missing_tools,
    rootfs_packages,
    tcp_listener,
    tcp_probe,
    wait_for,
)

UNIT = "nsg-agent.service"
CONFIG = "/etc/nsg-agent/desired-state.yaml"
PORTS = (8080, 8081)

STATE = """\
# Written by integration/test_systemd_nspawn.py
virtualNetworks:
  - name: vnet
    addressSpace: [10.61.0.0/16]
    subnets:
      - name: app
        addressPrefix: 10.61.1.0/24
networkInterfaces:
  - name: ctr-nic
    subnet: vnet/app
    ipAddresses: [{container}]
    networkSecurityGroup: ctr-nsg
    interface: {ifname}
networkSecurityGroups:
  - name: ctr-nsg
    securityRules:
      - name: allow-app-from-peer
        priority: 100
        direction: Inbound
        access: Allow
        protocol: Tcp
        sourceAddressPrefix: {peer}
        sourcePortRange: "*"
        destinationAddressPrefix: "*"
        destinationPortRange: "{port}"
      - name: deny-other-inbound
        priority: 4000
        direction: Inbound
        access: Deny
        protocol: "*"
        sourceAddressPrefix: "*"
        sourcePortRange: "*"
        destinationAddressPrefix: "*"
        destinationPortRange: "*"
"""


def state_text(ifname: str, port: int) -> str:
    return STATE.format(container=CONTAINER_ADDR, peer=PEER_ADDR, ifname=ifname, port=port)


def predicted(path: Path) -> dict[int, bool]:
    """The semantics engine's verdict for a TCP connect from the peer to each port."""
    loaded = load(path)
    policy = resolve(loaded.state, loaded.tags)
    out = {}
    for port in PORTS:
        flow = Flow(Direction.INBOUND, protocol_number("Tcp"), ipaddress.ip_address(CONTAINER_ADDR),
                    ipaddress.ip_address(PEER_ADDR), port, 40000)
        out[port] = verify(policy, "ctr-nic", flow).access is Access.ALLOW
    return out


def observed(c: Container) -> dict[int, bool]:
    """Real TCP connects from the peer namespace: True when the connection opens."""
    result = {}
    for port in PORTS:
        r = tcp_probe(c.peer_netns, CONTAINER_ADDR, port)
        assert r in ("open", "refused", "timeout"), r
        result[port] = r == "open"
    return result


def startup_events(c: Container, pid: int) -> list[str]:
    """The reconcile outcomes (config.applied / config.unchanged / config.adopted) logged by
    process ``pid``."""
    def events() -> list[str]:
        out = c.exec("journalctl", "--no-pager", "-o", "cat", f"_PID={pid}", check=False).stdout
        found = []
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(line).get("event")
                if ev in ("config.applied", "config.unchanged", "config.adopted"):
                    found.append(ev)
        return found
    return wait_for(events, timeout=20, what=f"a reconcile outcome logged by pid {pid}")


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` the way editors do: write a sibling, then rename over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def nspawn_cache():
    """The cached Debian tree and wheelhouse (built on the first run: about a minute)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    missing = missing_tools()
    if missing:
        pytest.skip(f"missing host tools: {', '.join(missing)} (scripts/install.sh installs them)")
    rootfs = ensure_rootfs()
    return rootfs, ensure_wheelhouse(rootfs)


@pytest.fixture
def container(nspawn_cache, tmp_path, root_nft_guard):
    """A provisioned (not yet booted) container in its own namespaces; always torn down."""
    rootfs, wheelhouse = nspawn_cache
    with Container(rootfs, wheelhouse) as c:
        yield c
    assert not os.path.exists(f"/run/netns/{c.netns}")
    assert not os.path.exists(f"/run/netns/{c.peer_netns}")
    assert c.workdir is not None and not c.workdir.exists()


def diagnostics(c: Container) -> str:
    try:
        return (f"--- journal ({UNIT})\n{c.journal(UNIT)}\n--- systemctl status\n"
                + c.exec("systemctl", "status", "--no-pager", UNIT, check=False).stdout)
    except (HarnessError, OSError) as e:  # the container may be gone
        return f"(no diagnostics: {e})\n{c.console()}"


@pytest.mark.parametrize("files,expected", [
    ({"a.sources": "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
                   "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"
                   "Suites: bookworm-security\nComponents: main\n"}, "http://mirror.example/debian"),
    ({"a.list": "# comment\ndeb [arch=amd64] http://mirror.example/debian/ bookworm main\n"},
     "http://mirror.example/debian"),
    ({"a.list": "deb http://security.example/debian-security bookworm-security main\n"
                "deb https://other.example/apt bookworm main\n"}, "https://other.example/apt"),
    ({"a.sources": "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n"
                   "Components: main\n"}, "http://deb.debian.org/debian"),
], ids=["deb822", "one-line-with-options", "skips-security", "none-for-bookworm"])
def test_apt_mirror_follows_apt_configuration(tmp_path, files, expected):
    """debootstrap uses the bookworm mirror apt is configured with, else deb.debian.org."""
    paths = []
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    assert apt_mirror(paths) == expected


def test_rootfs_has_what_install_sh_checks_for():
    """The container tree includes every package scripts/install.sh would otherwise apt-get."""
    assert set(install_script_packages()) <= set(rootfs_packages())
    assert {"systemd", "systemd-sysv", "dbus", "python3-nftables"} <= set(rootfs_packages())


@pytest.mark.timeout(900)
@pytest.mark.root
@pytest.mark.nspawn
@pytest.mark.slow
def test_agent_service_under_systemd(container: Container, tmp_path: Path):
    """Under real systemd nsg-agent.service reaches READY, enforces the file on real packets,
    follows an edit, sends watchdog keep-alives, and is restarted with its rules after kill -9."""
    c = container
    config = tmp_path / "desired-state.yaml"
    config.write_text(state_text(c.ifname, 8080))
    c.provision(config)
    assert (c.path("/etc/systemd/system") / UNIT).is_file()
    assert not (c.path("/etc/systemd/system/multi-user.target.wants") / UNIT).exists()  # --no-start

    c.boot()
    try:
        # 1. start: `systemctl start` of a Type=notify unit returns once READY=1 arrived.
        c.exec("systemctl", "start", UNIT, timeout=90)
        props = c.unit_properties(UNIT, "ActiveState", "SubState", "Type", "MainPID", "NRestarts",
                                  "StatusText", "WatchdogUSec", "MemoryMax")
        assert (props["ActiveState"], props["SubState"], props["Type"]) == ("active", "running", "notify")
        assert props["StatusText"], "the agent reports a STATUS= line"
        first_pid = int(props["MainPID"])
        assert first_pid > 0

        # The exposure docs/systemd.md states is what this systemd says about the unit.
        analysis = c.exec("systemd-analyze", "security", "--no-pager", UNIT, check=False).stdout
        measured = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", analysis)
        documented = re.search(r"`systemd-analyze security` rates it (\d+\.\d+)\s+\(\"(\w+)\"\)",
                               (REPO / "docs" / "systemd.md").read_text())
        assert measured and documented, analysis[-2000:]
        assert documented.groups() == measured.groups(), "docs/systemd.md states another exposure"
        assert props["MemoryMax"] == str(1 << 30)

        # 2. the rules are in the container's namespace (and only there: root_nft_guard).
        ruleset = c.exec("nft", "list", "table", "inet", "nsg_agent").stdout
        assert c.ifname in ruleset
        assert "allow-app-from-peer" in ruleset and "deny-other-inbound" in ruleset

        # `nsg-agent status` inside reports the file it enforces (by hash).
        sha = hashlib.sha256(config.read_bytes()).hexdigest()
        status = c.exec("nsg-agent", "status").stdout
        assert sha[:12] in status

        with tcp_listener(c.netns, CONTAINER_ADDR, PORTS):
            # 3. real connections agree with the semantics engine.
            expect = predicted(config)
            assert expect == {8080: True, 8081: False}
            assert observed(c) == expect

            # 4. an edit (atomic replace, as editors do) is followed within seconds.
            write_atomically(c.path(CONFIG), state_text(c.ifname, 8081))
            expect = predicted(c.path(CONFIG))
            assert expect == {8080: False, 8081: True}
            wait_for(lambda: observed(c) == expect, timeout=20, interval=0.3, what="edit enforced")
            new_sha = hashlib.sha256(c.path(CONFIG).read_bytes()).hexdigest()
            assert new_sha[:12] in c.exec("nsg-agent", "status").stdout

            # 5. watchdog keep-alives: systemd records each WATCHDOG=1 it receives.
            if props["WatchdogUSec"] not in ("0", "infinity"):
                def watchdog_ts() -> str:
                    return c.unit_properties(UNIT, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
                ts = watchdog_ts()
                wait_for(lambda: watchdog_ts() != ts, timeout=60, interval=0.5,
                         what="a new WATCHDOG=1 keep-alive")

            # 6. kill -9 of the main process: systemd restarts it; rules stay enforced.
            c.exec("kill", "-9", str(first_pid))
            def restarted() -> dict | None:
                p = c.unit_properties(UNIT, "ActiveState", "MainPID", "NRestarts")
                ok = p["ActiveState"] == "active" and p["MainPID"] not in ("0", str(first_pid))
                return p if ok else None
            after = wait_for(restarted, timeout=60, interval=0.3, what="restart after kill -9")
            assert int(after["NRestarts"]) >= 1
            # The new process adopted the table it found (no rebuild, counters kept).
            assert startup_events(c, int(after["MainPID"]))[-1] == "config.adopted"
            assert "adopted" in c.exec("nsg-agent", "status").stdout
            assert observed(c) == expect
            ruleset = c.exec("nft", "list", "table", "inet", "nsg_agent").stdout
            assert "allow-app-from-peer" in ruleset
    except BaseException:
        print(diagnostics(c))
        raise
