"""Probe planning (pure): endpoints, ports, cells, predictions and the rendered matrix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nsg_agent.desired.loader import load
from nsg_agent.desired.model import DesiredState
from nsg_agent.lab import probe
from nsg_agent.lab.probe import Cell, Endpoint, Prediction, Report, Result, Service
from nsg_agent.lab.topology import LabPlan, plan_lab
from nsg_agent.semantics.resolver import resolve

DEMO = Path(__file__).resolve().parent.parent / "examples" / "lab-demo.yaml"


@pytest.fixture(scope="module")
def demo():
    loaded = load(DEMO)
    return resolve(loaded.state, loaded.tags), plan_lab(loaded.state, "demo")


def _ep(plan, name):
    return next(e for e in probe.endpoints(plan) if e.name == name)


def test_endpoints_are_nics_then_hosts_then_platform(demo):
    """Every NIC at its first address, then external hosts, then the platform host."""
    _, plan = demo
    eps = probe.endpoints(plan)
    assert [(e.name, e.kind, e.address) for e in eps] == [
        ("web1", "nic", "10.10.1.4"), ("web2", "nic", "10.10.1.5"), ("web3", "nic", "10.10.1.6"),
        ("app1", "nic", "10.10.2.4"), ("app2", "nic", "10.10.2.5"),
        ("client", "external", "203.0.113.10"), ("private-client", "external", "172.31.0.100"),
        ("platform", "platform", "168.63.129.16")]
    assert eps[0].netns == "nsgl-demo-n0" and eps[0].vnet == "demo"


def _policy(rules, smtp="allowed"):
    doc = {
        "virtualNetworks": [{"name": "v", "addressSpace": ["10.0.0.0/16"],
                             "subnets": [{"name": "s", "addressPrefix": "10.0.1.0/24"}]}],
        "networkInterfaces": [{"name": "a", "subnet": "v/s", "ipAddresses": ["10.0.1.4"],
                               "networkSecurityGroup": "n"}],
        "networkSecurityGroups": [{"name": "n", "securityRules": rules}],
        "platform": {"outboundSmtp": smtp},
    }
    return resolve(DesiredState.model_validate(doc))


def _rule(name, prio, proto, ports, direction="Inbound"):
    r = {"name": name, "priority": prio, "direction": direction, "access": "Allow",
         "protocol": proto, "sourceAddressPrefix": "*", "sourcePortRange": "*",
         "destinationAddressPrefix": "*"}
    if isinstance(ports, list):
        r["destinationPortRanges"] = ports
    else:
        r["destinationPortRange"] = ports
    return r


@pytest.mark.parametrize("rules, smtp, expected", [
    ([_rule("r", 100, "Tcp", "80")], "allowed", [80, 8080, 9999]),
    ([_rule("r", 100, "Udp", ["53", "10000-10005"])], "allowed", [53, 8080, 9999, 10000, 10005]),
    ([_rule("r", 100, "Tcp", "8080")], "allowed", [5000, 8080, 9999]),
    ([_rule("r", 100, "Icmp", "*"), _rule("s", 110, "Tcp", "*")], "allowed", [8080, 9999]),
    ([_rule("r", 100, "*", "443", "Outbound")], "blocked", [25, 443, 8080, 9999]),
], ids=["one-port", "range-ends", "extra-avoids-mentioned", "no-ports-mentioned", "smtp-blocked"])
def test_probe_ports(rules, smtp, expected):
    """Ports the rules mention (range ends), TCP 25 when SMTP is blocked, plus two unmentioned."""
    assert probe.probe_ports(_policy(rules, smtp)) == expected


def test_services_and_cells_cover_every_pair_with_a_nic(demo):
    """TCP and UDP per port plus ICMP and GRE; every ordered pair except host-to-host and self."""
    _, plan = demo
    svcs = probe.services([80, 8080])
    assert [s.label for s in svcs] == ["tcp/80", "tcp/8080", "udp/80", "udp/8080", "icmp", "gre"]
    cells = probe.plan_cells(probe.endpoints(plan), svcs)
    pairs = {(c.source.name, c.destination.name) for c in cells}
    assert len(pairs) == 8 * 7 - 6  # the three hosts (client, private-client, platform) meet no NSG between them
    assert ("client", "platform") not in pairs and ("web1", "web1") not in pairs
    assert len(cells) == len(pairs) * len(svcs)


@pytest.mark.parametrize("src, dst, svc, allowed, reason", [
    ("client", "web1", Service("tcp", 80), True, "allow web-subnet-nsg (subnet, inbound at web1): UserRule_allow-http-to-webservers, web-nic-nsg (nic, inbound at web1): UserRule_allow-http"),
    ("client", "web2", Service("tcp", 80), True, "allow"),
    ("client", "web3", Service("tcp", 80), False,
     "deny web-subnet-nsg (subnet, inbound at web3): DefaultRule_DenyAllInBound"),
    ("client", "web1", Service("udp", 80), False,
     "deny web-subnet-nsg (subnet, inbound at web1): DefaultRule_DenyAllInBound"),
    ("client", "app1", Service("icmp"), False,
     "deny app-nic-nsg (nic, inbound at app1): DefaultRule_DenyAllInBound"),
    ("app1", "app2", Service("tcp", 8080), False,
     "deny app-nic-nsg (nic, inbound at app2): UserRule_deny-from-app1"),
    ("app2", "app1", Service("tcp", 8080), True, "allow"),
    ("web1", "client", Service("tcp", 25), False,
     "deny platform (outbound at web1): PlatformRule_BlockOutboundSmtp"),
    ("web1", "client", Service("udp", 25), True, "allow"),
    ("platform", "app1", Service("tcp", 9999), True, "allow"),
    ("app1", "platform", Service("icmp"), True, "allow platform (outbound at app1): PlatformRule_PlatformExemption"),
], ids=["internet-80-both-levels", "internet-80-subnet-only", "internet-80-subnet-denies",
        "internet-udp-80", "internet-icmp-default-deny", "intra-subnet-deny", "reverse-allowed",
        "smtp-blocked", "udp-25-not-smtp", "load-balancer-probe", "platform-exempt"])
def test_predict_demo(demo, src, dst, svc, allowed, reason):
    """Predictions follow Azure: source outbound and destination inbound must both allow."""
    policy, plan = demo
    pred = probe.predict(policy, Cell(_ep(plan, src), _ep(plan, dst), svc), 40000, plan.isolation)
    assert pred.allowed is allowed
    assert pred.reason.startswith(reason)


def test_predict_unpeered_vnets_have_no_route():
    """Two NICs in unpeered VNets never reach each other, whatever their NSGs say."""
    a = Endpoint("a", "nic", "10.1.0.4", "ns-a", "v1")
    b = Endpoint("b", "nic", "10.2.0.4", "ns-b", "v2")
    pred = probe.predict(None, Cell(a, b, Service("tcp", 80)), 1234, [("v1", "v2")])  # type: ignore[arg-type]
    assert pred == Prediction(False, "no route: VNet v1 is not peered with v2")


def test_predict_uses_the_real_source_port():
    """A rule on source ports decides by the port the client actually used."""
    rule = _rule("from-low-ports", 100, "Tcp", "80")
    rule["sourcePortRange"] = "1000-2000"
    deny_all = {"name": "deny", "priority": 200, "direction": "Inbound", "access": "Deny",
                "protocol": "*", "sourceAddressPrefix": "*", "sourcePortRange": "*",
                "destinationAddressPrefix": "*", "destinationPortRange": "*"}
    policy = _policy([rule, deny_all])
    a = Endpoint("a", "nic", "10.0.1.4", "ns", "v")
    h = Endpoint("h", "external", "203.0.113.1", "nsh")
    cell = Cell(h, a, Service("tcp", 80))
    assert probe.predict(policy, cell, 1500).allowed
    assert not probe.predict(policy, cell, 40000).allowed


def test_render_marks_mismatches_and_names_the_deciding_rule():
    """Cells read allow / deny[n] / MISMATCH[n]; the legend gives the rule; the summary counts."""
    a = Endpoint("a", "nic", "10.0.1.4", "ns-a", "v")
    h = Endpoint("h", "external", "203.0.113.1", "ns-h")
    tcp, icmp = Service("tcp", 80), Service("icmp")
    deny = Prediction(False, "deny n (nic, inbound at a): DefaultRule_DenyAllInBound")
    results = [
        Result(Cell(h, a, tcp), 40000, Prediction(True, "allow x"), "allowed"),
        Result(Cell(h, a, icmp), None, deny, "denied", "no echo reply"),
        Result(Cell(a, h, tcp), 40001, deny, "allowed"),
    ]
    report = Report("t", results, [tcp, icmp], elapsed=0.5)
    text = probe.render(report)
    assert "[1] n (nic, inbound at a): DefaultRule_DenyAllInBound" in text
    assert "MISMATCH[2]" in text and "[2] MISMATCH predicted denied, observed allowed" in text
    assert "3 probes with real packets, 2 allowed, 1 denied, 1 mismatch " in text
    d = report.as_dict()
    assert d["summary"]["mismatches"] == 1
    assert [c["match"] for c in d["cells"]] == [True, True, False]
    assert d["cells"][1]["observed"] == "denied" and d["cells"][1]["port"] is None


@pytest.mark.parametrize("observed, predicted, match", [
    ("allowed", True, True), ("denied", False, True), ("refused", True, True),
    ("denied", True, False), ("allowed", False, False), ("error", True, False), ("error", False, False),
], ids=["allow-allow", "deny-deny", "refused-counts-as-through", "lost", "leak", "error-a", "error-d"])
def test_result_match(observed, predicted, match):
    """A reset coming back means the packets passed; an error never matches."""
    cell = Cell(Endpoint("a", "nic", "10.0.0.4", "x"), Endpoint("b", "nic", "10.0.0.5", "y"), Service("tcp", 1))
    assert Result(cell, 1, Prediction(predicted, ""), observed).match is match


def test_gre_is_predicted_denied_by_the_platform(demo):
    """GRE between two NICs of the demo: dropped by the platform although VNet traffic is allowed."""
    policy, plan = demo
    pred = probe.predict(policy, Cell(_ep(plan, "web2"), _ep(plan, "app1"), Service("gre")), None, plan.isolation)
    assert not pred.allowed and "PlatformRule_BlockGre" in pred.reason


def test_hosts_behind_a_none_route_are_unrouted():
    """A host whose address the NIC's subnet routes to next hop None (10.0.0.0/8 outside the
    VNet, or a user route) is unreachable: planned as unrouted, predicted denied, dropped by
    the lab's table both ways."""
    from nsg_agent.lab import labrules
    doc = yaml.safe_load(DEMO.read_text())
    doc["lab"]["externalHosts"].append({"name": "far", "address": "10.200.0.9"})
    doc["routeTables"] = [{"name": "rt", "routes": [{"name": "blackhole", "addressPrefix": "198.51.100.0/24",
                                                     "nextHopType": "None"}]}]
    doc["lab"]["externalHosts"].append({"name": "dropped", "address": "198.51.100.9"})
    doc["virtualNetworks"][0]["subnets"][1]["routeTable"] = "rt"  # the app subnet
    state = DesiredState.model_validate(doc)
    plan = plan_lab(state, "demo")
    unrouted = {(n, h): why for n, h, why in plan.unrouted}
    assert all(("far" == h) or (h == "dropped" and n.startswith("app")) for n, h in unrouted)
    assert {n for n, h in unrouted if h == "far"} == {"web1", "web2", "web3", "app1", "app2"}
    assert {n for n, h in unrouted if h == "dropped"} == {"app1", "app2"}
    assert "system route 10.0.0.0/8 next hop None" in unrouted[("web1", "far")]
    assert "user route 'blackhole'" in unrouted[("app1", "dropped")]
    policy = resolve(state)
    pred = probe.predict(policy, Cell(_ep(plan, "far"), _ep(plan, "web1"), Service("tcp", 80)), 1, plan.isolation,
                         plan.unrouted)
    assert not pred.allowed and pred.reason.startswith("no route")
    comments = [c["add"]["rule"]["comment"] for c in labrules.lab_commands(plan) if "rule" in c.get("add", {})]
    assert sum("<-> far" in c for c in comments) == 10  # five NICs, both directions
    assert LabPlan.from_dict(plan.to_dict()).unrouted == plan.unrouted
