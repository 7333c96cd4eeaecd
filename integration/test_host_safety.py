"""Safe to run on a remote machine (issue 12), with real packets in throwaway namespaces:
a typo that would lock out the management session is refused, applies only with --force,
and is rolled back by 'apply --confirm' when nobody confirms; a correct edit confirmed is
kept; plan warns about a missing interface and a wrong address.

The "management session" is a TCP connection from the peer namespace (203.0.113.10, an
"Internet" client) to port 22 on the enforced NIC, held open, as an SSH session would be."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from host_helpers import NSG_AGENT, PYTHON, SERVER, Prober, make_host_pair, poll, run

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root_nft_guard")]


def policy(pair, address: str, interface: str | None = None, ssh_access: str = "Allow") -> str:
    return f"""\
virtualNetworks:
  - name: vnet
    addressSpace: [10.50.0.0/16]
    subnets: [{{name: mgmt, addressPrefix: 10.50.1.0/24}}]
applicationSecurityGroups: [{{name: Managed}}]
networkInterfaces:
  - name: srv
    subnet: vnet/mgmt
    ipAddresses: [{address}]
    networkSecurityGroup: srv-nsg
    applicationSecurityGroups: [Managed]
    interface: {interface or pair.srv_if}
networkSecurityGroups:
  - name: srv-nsg
    securityRules:
      - {{name: ssh, priority: 100, direction: Inbound, access: {ssh_access}, protocol: Tcp,
          sourceAddressPrefix: Internet, sourcePortRange: "*",
          destinationApplicationSecurityGroups: [Managed], destinationPortRange: "22"}}
"""


@pytest.fixture
def host(tmp_path):
    with make_host_pair() as pair:
        server = subprocess.Popen(["ip", "netns", "exec", pair.srv, PYTHON, "-c", SERVER, "22", ""],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        prober = Prober(pair.cli)
        try:
            assert server.stdout.readline().strip() == "ready"
            yield pair, tmp_path, prober
        finally:
            prober.close()
            server.stdin.close()
            server.stdout.close()
            server.terminate()
            server.wait(5)


def agent(tmp_path, *args, timeout=60):
    return run(NSG_AGENT, *args, "--state-dir", str(tmp_path / "run"), check=False, timeout=timeout)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def session(prober, pair) -> socket.socket:
    """An established 'SSH' connection from the client, held open."""
    def connect():
        s = socket.socket()
        s.settimeout(2)
        s.bind((pair.cli_internet, 0))
        s.connect((pair.srv_addr, 22))
        return s
    return prober.runner.call(connect)


def test_lockout_refused_forced_then_rolled_back(host):
    pair, tmp, prober = host
    good = write(tmp, "good.yaml", policy(pair, pair.srv_addr))
    typo = write(tmp, "typo.yaml", policy(pair, "10.50.1.40"))  # the NIC's address mistyped
    r = agent(tmp, "apply", good, "--netns", pair.srv)
    assert r.returncode == 0, r.stderr
    assert prober.tcp(pair.cli_internet, pair.srv_addr, 22)
    held = session(prober, pair)  # now in conntrack: the agent sees the management session
    try:
        r = agent(tmp, "plan", typo, "--netns", pair.srv, "--json")
        body = json.loads(r.stdout)
        kinds = [f["kind"] for f in body["coverage"]["findings"]]
        assert r.returncode == 0 and "address-mismatch" in kinds and "lockout" in kinds

        r = agent(tmp, "apply", typo, "--netns", pair.srv)
        assert r.returncode == 3 and "refused" in r.stderr and "LOCK-OUT" in r.stderr
        assert prober.tcp(pair.cli_internet, pair.srv_addr, 22)  # nothing changed

        r = agent(tmp, "apply", typo, "--netns", pair.srv, "--force", "--confirm", "3")
        assert r.returncode == 0, r.stderr
        assert "rolls back in 3 s" in r.stdout
        assert not prober.tcp(pair.cli_internet, pair.srv_addr, 22)  # locked out
        st = json.loads(agent(tmp, "status", "--netns", pair.srv, "--json").stdout)
        assert st["pending_confirm"] is not None and st["pending_confirm"]["seconds_left"] > 0
        # nobody confirms: within the window plus a margin the old table is back
        assert poll(lambda: prober.tcp(pair.cli_internet, pair.srv_addr, 22, timeout=0.3), timeout=15) is not None

        def record():  # the watcher writes the record right after the kernel is back
            return json.loads(agent(tmp, "status", "--netns", pair.srv, "--json").stdout)
        assert poll(lambda: (record().get("last_error") or {}).get("kind") == "rolled-back", timeout=10) is not None
        st = record()
        assert st["pending_confirm"] is None
        assert st["last_error"]["kind"] == "rolled-back"
        assert st["kernel"]["matches_commit"] and st["commit"]["source"].endswith("good.yaml")
        # the held session survived all of it (conntrack: established flows are accepted)
        held.sendall(b"still here")
        assert prober.runner.call(held.recv, 64) == b"still here"
    finally:
        prober.runner.call(held.close)


def test_correct_edit_confirmed_is_kept(host):
    pair, tmp, prober = host
    first = write(tmp, "a.yaml", policy(pair, pair.srv_addr))
    assert agent(tmp, "apply", first, "--netns", pair.srv).returncode == 0
    closed = write(tmp, "b.yaml", policy(pair, pair.srv_addr).replace(
        "sourceAddressPrefix: Internet", f"sourceAddressPrefix: {pair.cli_internet}"))
    r = agent(tmp, "apply", closed, "--netns", pair.srv, "--confirm", "2")
    assert r.returncode == 0, r.stderr
    r = agent(tmp, "confirm", "--netns", pair.srv)
    assert r.returncode == 0 and "confirmed" in r.stdout
    time.sleep(3)  # past the deadline: nothing is rolled back
    st = json.loads(agent(tmp, "status", "--netns", pair.srv, "--json").stdout)
    assert st["commit"]["source"].endswith("b.yaml") and st["pending_confirm"] is None
    assert st["last_error"] is None
    assert prober.tcp(pair.cli_internet, pair.srv_addr, 22)
    assert agent(tmp, "confirm", "--netns", pair.srv).returncode == 3  # nothing pending


def test_plan_reports_missing_interface_wrong_address_and_rule_changes(host):
    pair, tmp, prober = host
    first = write(tmp, "a.yaml", policy(pair, pair.srv_addr))
    assert agent(tmp, "apply", first, "--netns", pair.srv).returncode == 0
    missing = write(tmp, "m.yaml", policy(pair, pair.srv_addr, interface="nsgh-nope0"))
    r = agent(tmp, "plan", missing, "--netns", pair.srv)
    assert "interface nsgh-nope0 does not exist" in r.stdout
    assert f"{pair.srv_if} carries {pair.srv_addr} of NIC srv, but NIC srv is mapped to nsgh-nope0" in r.stdout
    edited = write(tmp, "e.yaml", policy(pair, pair.srv_addr).replace('destinationPortRange: "22"', 'destinationPortRange: "2222"'))
    r = agent(tmp, "plan", edited, "--netns", pair.srv, "--detailed-exitcode")
    assert r.returncode == 2
    assert "~ srv-nsg: ssh (Inbound)" in r.stdout and "destinationPorts: 22 -> 2222" in r.stdout
    assert agent(tmp, "plan", first, "--netns", pair.srv, "--detailed-exitcode").returncode == 0


V6_POLICY = """\
virtualNetworks:
  - name: v
    addressSpace: ["fd00:50::/48"]
    subnets: [{name: s, addressPrefix: "fd00:50::/64"}]
networkInterfaces:
  - {name: a, subnet: v/s, ipAddresses: ["fd00:50::4"], interface: IFNAME, networkSecurityGroup: n}
networkSecurityGroups:
  - {name: n, securityRules: []}
"""


def test_ipv6_neighbour_discovery_passes_so_allowed_ipv6_connects(tmp_path):
    """An NSG with only Azure's defaults allows VNet traffic; over IPv6 that needs neighbour
    discovery, which DenyAllInBound/OutBound would drop (the peer's neighbour entry stayed
    INCOMPLETE and every IPv6 connection timed out). The platform rule lets ND through."""
    from nsg_agent.host.netns import NetnsRunner

    with make_host_pair() as pair:
        for ns, ifname, addr in ((pair.srv, pair.srv_if, "fd00:50::4"), (pair.cli, pair.cli_if, "fd00:50::5")):
            run("ip", "-n", ns, "addr", "add", f"{addr}/64", "dev", ifname, "nodad")
        config = write(tmp_path, "v6.yaml", V6_POLICY.replace("IFNAME", pair.srv_if))
        assert agent(tmp_path, "apply", config, "--netns", pair.srv).returncode == 0
        srv, cli = NetnsRunner(pair.srv), NetnsRunner(pair.cli)
        try:
            def listen():
                s = socket.socket(socket.AF_INET6)
                s.bind(("fd00:50::4", 22))
                s.listen(4)
                return s
            listener = srv.call(listen)

            def connect() -> bool:
                with socket.socket(socket.AF_INET6) as s:
                    s.settimeout(3)
                    s.bind(("fd00:50::5", 0))
                    try:
                        s.connect(("fd00:50::4", 22))
                        return True
                    except OSError:
                        return False
            assert cli.call(connect)  # AllowVnetInBound, reachable because ND passes
            listener.close()
            counted = run("ip", "netns", "exec", pair.srv, "nft", "list", "table", "inet", "nsg_agent").stdout
            assert "PlatformRule_AllowNeighborDiscovery" in counted
        finally:
            srv.close()
            cli.close()
