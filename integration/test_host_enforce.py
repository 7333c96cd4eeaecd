"""Host mode, one-shot: ``nsg-agent apply`` into a namespace, then real TCP, UDP and ICMP
over a veth, allowed and denied exactly as ``verify`` predicts."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess

import pytest

from host_helpers import NSG_AGENT, PYTHON, SERVER, host_policy, make_host_pair, run
from nsg_agent.desired import loader
from nsg_agent.desired.vocabulary import Direction
from nsg_agent.semantics import resolver as semantics
from nsg_agent.semantics.policy import Flow

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root_nft_guard")]

TCP, UDP, ICMP = 6, 17, 1
INTERNET, VNET = "internet", "vnet"

# id, direction (from srv's point of view), protocol, remote side, port on the server side
MATRIX = [
    ("in-tcp-8080-internet-allowed-by-rule", Direction.INBOUND, TCP, INTERNET, 8080),
    ("in-tcp-8081-internet-denied-by-rule", Direction.INBOUND, TCP, INTERNET, 8081),
    ("in-tcp-9000-internet-denyall", Direction.INBOUND, TCP, INTERNET, 9000),
    ("in-tcp-9000-vnet-allowvnet", Direction.INBOUND, TCP, VNET, 9000),
    ("in-tcp-8081-vnet-rule-beats-default", Direction.INBOUND, TCP, VNET, 8081),
    ("in-udp-5353-internet-allowed", Direction.INBOUND, UDP, INTERNET, 5353),
    ("in-udp-5354-internet-denyall", Direction.INBOUND, UDP, INTERNET, 5354),
    ("in-udp-5354-vnet-allowvnet", Direction.INBOUND, UDP, VNET, 5354),
    ("in-icmp-internet-denyall", Direction.INBOUND, ICMP, INTERNET, None),
    ("in-icmp-vnet-allowvnet", Direction.INBOUND, ICMP, VNET, None),
    ("out-tcp-9001-internet-denied-by-rule", Direction.OUTBOUND, TCP, INTERNET, 9001),
    ("out-tcp-9000-internet-allowinternet", Direction.OUTBOUND, TCP, INTERNET, 9000),
    ("out-udp-5353-internet-allowinternet", Direction.OUTBOUND, UDP, INTERNET, 5353),
    ("out-icmp-internet-allowinternet", Direction.OUTBOUND, ICMP, INTERNET, None),
]


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    """Namespaces, echo servers on both sides, and the policy applied with the CLI."""
    tmp = tmp_path_factory.mktemp("host-apply")
    with make_host_pair() as pair:
        servers = []
        try:
            for ns, tcp, udp in ((pair.srv, "8080,8081,9000", "5353,5354"), (pair.cli, "9000,9001", "5353")):
                p = subprocess.Popen(["ip", "netns", "exec", ns, PYTHON, "-c", SERVER, tcp, udp],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                servers.append(p)
                assert p.stdout.readline().strip() == "ready"
            config = tmp / "desired-state.yaml"
            config.write_text(host_policy(pair))
            state_dir = tmp / "run"
            r = run(NSG_AGENT, "apply", str(config), "--netns", pair.srv, "--state-dir", str(state_dir), timeout=60)
            assert r.returncode == 0, r.stderr
            loaded = loader.load(config)
            yield pair, config, state_dir, semantics.resolve(loaded.state, loaded.tags)
        finally:
            for p in servers:
                p.stdin.close()
                p.stdout.close()
                p.terminate()
                p.wait(5)


def matrix_flow(pair, direction, proto, remote_kind, port) -> Flow:
    """The flow a probe makes, in verify's NIC-relative terms (client port 40000 stands
    for the ephemeral port: no rule here constrains source ports)."""
    remote = pair.cli_internet if remote_kind == INTERNET else pair.cli_vnet
    ephemeral = 40000 if port else None
    if direction is Direction.INBOUND:
        local_port, remote_port = port, ephemeral
    else:
        local_port, remote_port = ephemeral, port
    return Flow(direction, proto, ipaddress.ip_address(pair.srv_addr), ipaddress.ip_address(remote),
                local_port, remote_port)


def observe(prober, pair, direction, proto, remote_kind, port) -> bool:
    remote = pair.cli_internet if remote_kind == INTERNET else pair.cli_vnet
    if direction is Direction.INBOUND:
        p, src, dst = prober(pair.cli), remote, pair.srv_addr
    else:
        p, src, dst = prober(pair.srv), pair.srv_addr, remote
    if proto == TCP:
        return p.tcp(src, dst, port)
    if proto == UDP:
        return p.udp(src, dst, port)
    return p.icmp(src, dst)


@pytest.mark.parametrize("direction,proto,remote_kind,port",
                         [row[1:] for row in MATRIX], ids=[row[0] for row in MATRIX])
def test_traffic_matches_verify(applied, prober, direction, proto, remote_kind, port):
    """Real packets over the veth are allowed or denied exactly as verify predicts."""
    pair, _, _, policy = applied
    flow = matrix_flow(pair, direction, proto, remote_kind, port)
    expected = semantics.verify(policy, "srv", flow).allowed
    assert observe(prober, pair, direction, proto, remote_kind, port) == expected


def test_matrix_exercises_both_verdicts(applied):
    """The prediction table contains allows and denies in both directions (not vacuous)."""
    pair, _, _, policy = applied
    seen = set()
    for _, direction, proto, remote_kind, port in MATRIX:
        flow = matrix_flow(pair, direction, proto, remote_kind, port)
        seen.add((direction, semantics.verify(policy, "srv", flow).allowed))
    assert seen == {(d, a) for d in Direction for a in (True, False)}


def test_status_reports_commit_and_hit_counters(applied, prober):
    """After traffic, status shows the source hash and a hit on the rule that allowed it."""
    pair, config, state_dir, _ = applied
    assert prober(pair.cli).tcp(pair.cli_internet, pair.srv_addr, 8080)
    r = run(NSG_AGENT, "status", "--netns", pair.srv, "--state-dir", str(state_dir), "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["commit"]["sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()
    assert data["kernel"]["table_present"] and data["kernel"]["matches_commit"]
    web = [x for x in data["kernel"]["rules"] if x["comment"] == "srv-nsg: UserRule_web"]
    assert web and sum(x["packets"] for x in web) >= 1
    assert all(x["rule"] == "UserRule_web" for x in web)


def test_plan_against_applied_is_empty_and_shows_an_edit(applied, tmp_path):
    """plan reports no change for the applied file, and the changed rule for an edit."""
    pair, config, state_dir, _ = applied
    r = run(NSG_AGENT, "plan", str(config), "--netns", pair.srv, "--state-dir", str(state_dir), "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["plan"]["empty"] is True
    edited = tmp_path / "edited.yaml"
    edited.write_text(host_policy(pair, web_access="Deny"))
    r = run(NSG_AGENT, "plan", str(edited), "--netns", pair.srv, "--state-dir", str(state_dir), "--json", timeout=30)
    plan = json.loads(r.stdout)["plan"]
    assert plan["empty"] is False and plan["table_present"] is True
    assert "srv-nsg: UserRule_web" in plan["changed"] or plan["sets"]


def test_table_lives_only_in_the_target_namespace(applied):
    """The agent's table exists in the srv namespace and in no other."""
    pair, *_ = applied
    assert "inet nsg_agent" in run("ip", "netns", "exec", pair.srv, "nft", "list", "tables").stdout
    assert "nsg_agent" not in run("ip", "netns", "exec", pair.cli, "nft", "list", "tables").stdout
    assert "nsg_agent" not in run("nft", "list", "tables").stdout
