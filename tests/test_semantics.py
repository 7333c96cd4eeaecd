"""§3-§8 of nsg-semantics.md: evaluation order, defaults, levels, statefulness, tags,
platform addresses and inspection, as verdicts of the pure semantics engine."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from foundation_helpers import EXAMPLES, base_state, check, decided_by, flow, load_doc, rule
from nsg_agent.desired.loader import load
from nsg_agent.desired.vocabulary import Access, Direction, LevelKind, Protocol
from nsg_agent.semantics.resolver import Resolver, effective_rules, evaluate, find_nic, resolve

TAGS_FILE = str(EXAMPLES / "service-tags.json")
NET = ipaddress.ip_network


def nets(*texts):
    return tuple(NET(t) for t in texts)


# --- §2 semantics the docs leave open (documented choices) -------------------------------

PROTOCOL_ROWS = [
    ("§2-protocol-star-matches-tcp", "*", "*", "tcp", 80, "Deny"),
    ("§2-protocol-star-matches-icmp", "*", "*", "icmp", None, "Deny"),
    ("§2-protocol-star-matches-esp", "*", "*", "esp", None, "Deny"),
    ("§2-protocol-star-matches-ah", "*", "*", "ah", None, "Deny"),
    ("§2-protocol-star-matches-gre", "*", "*", "47", None, "Deny"),
    ("§2-protocol-tcp-not-udp", "Tcp", "*", "udp", 80, "Allow"),
    ("§2-protocol-icmp-matches-icmp", "Icmp", "*", "icmp", None, "Deny"),
    ("§2-protocol-icmp-matches-icmpv6-number", "Icmp", "*", "58", None, "Deny"),
    ("§2-protocol-esp-only-esp", "Esp", "*", "ah", None, "Allow"),
    ("§2-ports-only-constrain-tcp-udp", "*", "80", "icmp", None, "Allow"),
    ("§2-port-rule-matches-tcp-port", "*", "80", "tcp", 80, "Deny"),
    ("§2-port-rule-other-port", "*", "80", "tcp", 81, "Allow"),
    ("§2-port-range-inclusive-high", "Udp", "10000-10005", "udp", 10005, "Deny"),
    ("§2-port-range-inclusive-low", "Udp", "10000-10005", "udp", 10000, "Deny"),
]


@pytest.mark.parametrize("protocol,dport,flow_proto,port,expected", [r[1:] for r in PROTOCOL_ROWS],
                         ids=[r[0] for r in PROTOCOL_ROWS])
def test_protocol_and_port_matching(protocol, dport, flow_proto, port, expected):
    """A deny rule (priority 100) over an allow-all (200) shows which flows the rule matches."""
    doc = base_state(subnet_rules=[rule("deny", 100, access="Deny", protocol=protocol, dport=dport),
                                   rule("allow", 200)])
    v = check(doc, "n1", "Inbound", flow_proto, "10.0.1.4", "203.0.113.9",
              port, 40000 if port is not None else None)
    assert v.access.value == expected


# --- §3 evaluation inside one NSG -------------------------------------------------------------


def test_ascending_priority_first_match_wins():
    """§3-ascending-priority: the lowest number decides whatever the order in the file."""
    doc = base_state(subnet_rules=[rule("deny-200", 200, access="Deny"), rule("allow-100", 100),
                                   rule("deny-150", 150, access="Deny")])
    assert decided_by(check(doc, "n1", "Inbound", "tcp", "10.0.1.4", "203.0.113.9", 80, 4000)) == (
        "Allow", "subnet-nsg", "allow-100")


def test_later_rules_not_examined():
    """§3-first-match-stops: a matching Deny ends evaluation; a later Allow does not rescue it."""
    doc = base_state(subnet_rules=[rule("deny", 100, access="Deny", dport="22"), rule("allow", 110, dport="22")])
    assert decided_by(check(doc, "n1", "Inbound", "tcp", "10.0.1.4", "203.0.113.9", 22, 4000)) == (
        "Deny", "subnet-nsg", "deny")


DEFAULTS = [
    ("AllowVnetInBound", 65000, Direction.INBOUND, "VirtualNetwork", "VirtualNetwork", Access.ALLOW),
    ("AllowAzureLoadBalancerInBound", 65001, Direction.INBOUND, "AzureLoadBalancer", "*", Access.ALLOW),
    ("DenyAllInBound", 65500, Direction.INBOUND, "*", "*", Access.DENY),
    ("AllowVnetOutBound", 65000, Direction.OUTBOUND, "VirtualNetwork", "VirtualNetwork", Access.ALLOW),
    ("AllowInternetOutBound", 65001, Direction.OUTBOUND, "*", "Internet", Access.ALLOW),
    ("DenyAllOutBound", 65500, Direction.OUTBOUND, "*", "*", Access.DENY),
]


@pytest.mark.parametrize("name,priority,direction,src,dst,access", DEFAULTS,
                         ids=[f"§3-default-{d[0]}" for d in DEFAULTS])
def test_default_rules_match_the_table(name, priority, direction, src, dst, access):
    """§3: every NSG, even one without rules, ends with Azure's default rules as tabled."""
    loaded = load_doc(base_state(subnet_rules=[]))
    nic = resolve(loaded.state, loaded.tags).nics["n1"]
    (level,) = nic.levels(direction)
    found = [r for r in level.rules if r.name == name]
    assert len(found) == 1
    r = found[0]
    assert (r.priority, r.access, r.protocol, r.default) == (priority, access, Protocol.ANY, True)
    assert r.source.label == src and r.destination.label == dst
    assert r.source_ports.any and r.destination_ports.any
    assert level.rules[-3:][{"65000": 0, "65001": 1, "65500": 2}[str(priority)]] is r


DEFAULT_FLOWS = [
    ("§3-default-AllowVnetInBound-flow", "Inbound", "10.0.1.5", 80, "AllowVnetInBound", "Allow"),
    ("§3-default-DenyAllInBound-flow", "Inbound", "203.0.113.9", 80, "DenyAllInBound", "Deny"),
    ("§3-default-AllowVnetOutBound-flow", "Outbound", "10.0.1.5", 80, "AllowVnetOutBound", "Allow"),
    ("§3-default-AllowInternetOutBound-flow", "Outbound", "198.51.100.9", 443, "AllowInternetOutBound", "Allow"),
]


@pytest.mark.parametrize("direction,remote,port,rule_name,access", [r[1:] for r in DEFAULT_FLOWS],
                         ids=[r[0] for r in DEFAULT_FLOWS])
def test_default_rules_decide_flows(direction, remote, port, rule_name, access):
    """§3: with no user rules the defaults decide: VNet in/out allowed, Internet out allowed,
    everything else inbound denied."""
    doc = base_state(subnet_rules=[])
    lport, rport = (port, 40000) if direction == "Inbound" else (40000, port)
    v = check(doc, "n1", direction, "tcp", "10.0.1.4", remote, lport, rport)
    assert decided_by(v) == (access, "subnet-nsg", rule_name)


def test_azure_load_balancer_probe_allowed_inbound():
    """§3-default-AllowAzureLoadBalancerInBound: health probes from 168.63.129.16 are allowed by
    default (today's VirtualNetwork also contains that address, so AllowVnetInBound at 65000 is
    the first default to match; the LB default at 65001 allows it in any case)."""
    v = check(base_state(subnet_rules=[]), "n1", "Inbound", "tcp", "10.0.1.4", "168.63.129.16", 80, 40000)
    assert v.allowed and v.deciding.rule.default


def test_default_deny_all_outbound_is_last():
    """§3-default-DenyAllOutBound: a flow matching neither VirtualNetwork nor Internet (here an
    IPv6 flow from an IPv4-only NIC's rule set, evaluated on the level) hits DenyAllOutBound."""
    loaded = load_doc(base_state(subnet_rules=[]))
    level = resolve(loaded.state, loaded.tags).nics["n1"].outbound[0]
    unmatched = [r for r in level.rules if r.name == "DenyAllOutBound"][0]
    f = flow("Outbound", "tcp", "10.0.1.4", "10.0.1.5", 1, 2)
    non_default = [r for r in level.rules if r.name != "DenyAllOutBound"]
    assert unmatched.matches(f) and unmatched.priority == max(r.priority for r in level.rules)
    assert all(r.priority < unmatched.priority for r in non_default)


def test_default_rule_overridden_by_user_rule():
    """§3-override-default: a user Deny from VirtualNetwork beats AllowVnetInBound."""
    doc = base_state(subnet_rules=[rule("no-vnet", 4096, access="Deny", src="VirtualNetwork", dst="VirtualNetwork")])
    assert decided_by(check(doc, "n1", "Inbound", "tcp", "10.0.1.4", "10.0.1.5", 22, 4000)) == (
        "Deny", "subnet-nsg", "no-vnet")


def test_default_rules_cannot_be_replaced():
    """§3-defaults-not-deletable: a user rule cannot take a default's priority (65000+ is out of range)."""
    from foundation_helpers import problems_of
    found = problems_of(base_state(subnet_rules=[rule("DenyAllInBound", 65500, access="Allow")]))
    assert "outside 100..4096" in found[0].message


# --- §4 subnet NSG and NIC NSG ---------------------------------------------------------------


def test_no_nsg_allows_everything():
    """§4-no-nsg-allows: without any NSG every flow is allowed and the path says so."""
    v = check(base_state(), "n1", "Inbound", "udp", "10.0.1.4", "203.0.113.9", 9999, 1)
    assert v.allowed
    assert [(d.kind, d.nsg, d.rule) for d in v.path] == [(LevelKind.SUBNET, None, None), (LevelKind.NIC, None, None)]


def test_inbound_subnet_then_nic():
    """§4-inbound-subnet-then-nic: inbound is decided by the subnet NSG first, then the NIC's."""
    doc = base_state(subnet_rules=[rule("s-allow", 100, dport="80")], nic_rules=[rule("n-allow", 100, dport="80")])
    v = check(doc, "n1", "Inbound", "tcp", "10.0.1.4", "203.0.113.9", 80, 4000)
    assert [(d.kind, d.nsg, d.rule.name) for d in v.path] == [
        (LevelKind.SUBNET, "subnet-nsg", "s-allow"), (LevelKind.NIC, "nic-nsg", "n-allow")]


def test_outbound_nic_then_subnet():
    """§4-outbound-nic-then-subnet: outbound is decided by the NIC NSG first, then the subnet's."""
    doc = base_state(subnet_rules=[rule("s-allow", 100, "Outbound")], nic_rules=[rule("n-allow", 100, "Outbound")])
    v = check(doc, "n1", "Outbound", "tcp", "10.0.1.4", "203.0.113.9", 4000, 443)
    assert [(d.kind, d.rule.name) for d in v.path] == [(LevelKind.NIC, "n-allow"), (LevelKind.SUBNET, "s-allow")]


def test_first_level_deny_stops_evaluation():
    """§4-both-must-allow: a deny at the first level ends the path; the second is not consulted."""
    doc = base_state(subnet_rules=[rule("s-deny", 100, access="Deny")], nic_rules=[rule("n-allow", 100)])
    v = check(doc, "n1", "Inbound", "tcp", "10.0.1.4", "203.0.113.9", 80, 4000)
    assert decided_by(v) == ("Deny", "subnet-nsg", "s-deny") and len(v.path) == 1


PORT80 = [
    ("§4-port80-subnet-nsg-only", "subnet-only", "10.20.1.4", ("Allow", "allow-80-subnet", "Allow-HTTP-Inbound")),
    ("§4-port80-nic-nsg-only", "nic-only", "10.20.2.4", ("Allow", "allow-80-nic", "Allow-HTTP-Inbound")),
    ("§4-port80-both-allow", "both-allow", "10.20.3.4", ("Allow", "allow-80-nic", "Allow-HTTP-Inbound")),
    ("§4-port80-only-subnet-allows", "subnet-allows", "10.20.4.4", ("Deny", "defaults-nic", "DenyAllInBound")),
    ("§4-port80-only-nic-allows", "nic-allows", "10.20.5.4", ("Deny", "defaults-subnet", "DenyAllInBound")),
]


@pytest.mark.parametrize("nic,address,expected", [r[1:] for r in PORT80], ids=[r[0] for r in PORT80])
def test_seed_port80_example(nic, address, expected):
    """§4 seed example: inbound port 80 from the Internet needs every NSG present to allow it."""
    loaded = load(EXAMPLES / "port80-subnet-nic.yaml")
    assert decided_by(check(loaded, nic, "Inbound", "tcp", address, "203.0.113.10", 80, 50000)) == expected


def test_same_subnet_traffic_filtered_by_both_chains():
    """§4-same-subnet-both-chains: n1 -> n2 in one subnet passes n1's outbound and n2's inbound;
    a deny on either side stops it."""
    doc = base_state()
    doc["networkSecurityGroups"] = [
        {"name": "n1-nsg", "securityRules": [rule("no-ssh-out", 100, "Outbound", "Deny", dport="22")]},
        {"name": "n2-nsg", "securityRules": [rule("no-http-in", 100, "Inbound", "Deny", dport="80")]}]
    doc["networkInterfaces"][0]["networkSecurityGroup"] = "n1-nsg"
    doc["networkInterfaces"][1]["networkSecurityGroup"] = "n2-nsg"
    loaded = load_doc(doc)

    def connect(port):
        out = check(loaded, "n1", "Outbound", "tcp", "10.0.1.4", "10.0.1.5", 40000, port)
        inn = check(loaded, "n2", "Inbound", "tcp", "10.0.1.5", "10.0.1.4", port, 40000)
        return out.allowed, inn.allowed

    assert connect(22) == (False, True)
    assert connect(80) == (True, False)
    assert connect(443) == (True, True)


def test_effective_rules_aggregate_levels():
    """§4-effective-rules-aggregate / §8: a NIC's effective rules are both levels, in order."""
    doc = base_state(subnet_rules=[rule("s", 100)], nic_rules=[rule("n", 100), rule("o", 100, "Outbound")])
    loaded = load_doc(doc)
    nic = resolve(loaded.state, loaded.tags).nics["n1"]
    inbound = [(lv.kind, r.name) for lv, r in effective_rules(nic, Direction.INBOUND)]
    outbound = [(lv.kind, r.name) for lv, r in effective_rules(nic, Direction.OUTBOUND)]
    assert inbound[:4] == [(LevelKind.SUBNET, "s"), (LevelKind.SUBNET, "AllowVnetInBound"),
                           (LevelKind.SUBNET, "AllowAzureLoadBalancerInBound"), (LevelKind.SUBNET, "DenyAllInBound")]
    assert inbound[4:] == [(LevelKind.NIC, "n"), (LevelKind.NIC, "AllowVnetInBound"),
                           (LevelKind.NIC, "AllowAzureLoadBalancerInBound"), (LevelKind.NIC, "DenyAllInBound")]
    assert outbound[0] == (LevelKind.NIC, "o") and outbound[4][0] is LevelKind.SUBNET


# --- §5 statefulness -------------------------------------------------------------------------


def test_only_initiator_needs_a_rule():
    """§5-only-initiator-needs-rule: verify judges a new connection in its initiating direction.
    Inbound HTTP is allowed although the NSG denies all outbound traffic: replies belong to the
    allowed connection (connection tracking in the enforcer), not to an outbound rule, so the
    engine never needs nor consults a rule for the reverse direction."""
    doc = base_state(subnet_rules=[rule("http-in", 100, dport="80"),
                                   rule("deny-all-out", 100, "Outbound", "Deny")])
    loaded = load_doc(doc)
    inbound = check(loaded, "n1", "Inbound", "tcp", "10.0.1.4", "203.0.113.9", 80, 40000)
    assert decided_by(inbound) == ("Allow", "subnet-nsg", "http-in")
    # A *new* outbound connection is a different flow and is denied by the outbound rule.
    outbound_new = check(loaded, "n1", "Outbound", "tcp", "10.0.1.4", "203.0.113.9", 80, 40000)
    assert decided_by(outbound_new) == ("Deny", "subnet-nsg", "deny-all-out")


def test_only_initiator_needs_a_rule_outbound():
    """§5-only-initiator-needs-rule (reverse): an outbound connection is allowed with inbound
    denied entirely; the answer does not depend on any inbound rule."""
    doc = base_state(subnet_rules=[rule("deny-all-in", 100, "Inbound", "Deny")])
    v = check(doc, "n1", "Outbound", "tcp", "10.0.1.4", "198.51.100.3", 40000, 443)
    assert decided_by(v) == ("Allow", "subnet-nsg", "AllowInternetOutBound")


@pytest.mark.parametrize("subnet_flush,nic_flush,expected", [
    (False, False, False), (True, False, True), (False, True, True)],
    ids=["§5-flushConnection-default-off", "§5-flushConnection-subnet-nsg", "§5-flushConnection-nic-nsg"])
def test_flush_connection_reaches_the_policy(subnet_flush, nic_flush, expected):
    """§5: flushConnection on either NSG applied to a NIC marks the NIC's policy."""
    doc = base_state(subnet_rules=[], nic_rules=[])
    doc["networkSecurityGroups"][0]["flushConnection"] = subnet_flush
    doc["networkSecurityGroups"][1]["flushConnection"] = nic_flush
    loaded = load_doc(doc)
    assert resolve(loaded.state, loaded.tags).nics["n1"].flush_connection is expected


# --- §6 service tags --------------------------------------------------------------------------


def _hub_spoke():
    return load(EXAMPLES / "hub-spoke.yaml")


def _covered(prefixes, prefix) -> bool:
    """Is ``prefix`` inside the union of (collapsed) ``prefixes``?"""
    return any(prefix.version == p.version and prefix.subnet_of(p) for p in prefixes)


def _vnet_prefixes(loaded, vnet):
    return Resolver(loaded.state, loaded.tags).virtual_network(vnet)


VNET_ROWS = [
    ("§6-virtualnetwork-own-address-space", "spoke1", "10.2.0.0/16", True),
    ("§6-virtualnetwork-on-premises", "spoke1", "172.16.0.0/16", True),
    ("§6-virtualnetwork-peered-vnet", "spoke1", "10.1.0.0/16", True),
    ("§6-virtualnetwork-hub-sees-both-spokes", "hub", "10.3.0.0/16", True),
    ("§6-virtualnetwork-not-transitive", "spoke1", "10.3.0.0/16", False),
    ("§6-virtualnetwork-host-vip", "spoke2", "168.63.129.16/32", True),
]


@pytest.mark.parametrize("vnet,prefix,inside", [r[1:] for r in VNET_ROWS], ids=[r[0] for r in VNET_ROWS])
def test_virtual_network_tag(vnet, prefix, inside):
    """§6: VirtualNetwork = own space + on-premises + peered VNets + the host VIP, per VNet."""
    assert _covered(_vnet_prefixes(_hub_spoke(), vnet), NET(prefix)) is inside


def test_virtual_network_peering_listed_on_one_side():
    """§6-virtualnetwork-peering-one-side: a peering written only on the remote VNet still
    joins both VirtualNetwork tags (an Azure peering is a pair of links)."""
    doc = base_state()
    doc["virtualNetworks"].append({"name": "v2", "addressSpace": ["10.9.0.0/16"], "peerings": ["v1"]})
    loaded = load_doc(doc)
    assert _covered(_vnet_prefixes(loaded, "v1"), NET("10.9.0.0/16"))
    assert _covered(_vnet_prefixes(loaded, "v2"), NET("10.0.0.0/16"))


def test_virtual_network_relative_to_nic_vnet():
    """§6-virtualnetwork-relative: one NSG applied in two VNets means different prefixes."""
    doc = base_state()
    doc["virtualNetworks"].append({"name": "v2", "addressSpace": ["10.9.0.0/16"], "subnets": [
        {"name": "s9", "addressPrefix": "10.9.1.0/24", "networkSecurityGroup": "shared"}]})
    doc["virtualNetworks"][0]["subnets"][0]["networkSecurityGroup"] = "shared"
    doc["networkInterfaces"].append({"name": "n9", "subnet": "v2/s9", "ipAddresses": ["10.9.1.4"]})
    doc["networkSecurityGroups"] = [{"name": "shared", "securityRules": []}]
    loaded = load_doc(doc)
    # 10.9.1.4 -> n1 is not VirtualNetwork for v1: denied; 10.0.1.5 -> n1 is: allowed.
    assert not check(loaded, "n1", "Inbound", "tcp", "10.0.1.4", "10.9.1.4", 22, 4000).allowed
    assert check(loaded, "n1", "Inbound", "tcp", "10.0.1.4", "10.0.1.5", 22, 4000).allowed
    assert check(loaded, "n9", "Inbound", "tcp", "10.9.1.4", "10.9.2.7", 22, 4000).allowed


TAG_ROWS = [
    ("§6-classic-VIRTUAL_NETWORK", "VIRTUAL_NETWORK", "10.0.7.7", True),
    ("§6-classic-INTERNET", "INTERNET", "203.0.113.9", True),
    ("§6-classic-AZURE_LOADBALANCER", "AZURE_LOADBALANCER", "168.63.129.16", True),
    ("§6-tag-case-insensitive", "internet", "198.51.100.1", True),
    ("§6-internet-excludes-vnet", "Internet", "10.0.7.7", False),
    # Azure's Internet list keeps 168.0.0.0/8 although 168.63.129.16 is VirtualNetwork.
    ("§6-internet-includes-168/8-and-host-vip", "Internet", "168.63.129.16", True),
    ("§6-internet-168/8", "Internet", "168.1.2.3", True),
    ("§6-internet-excludes-172.16/12", "Internet", "172.31.0.100", False),
    ("§6-internet-excludes-192.168/16", "Internet", "192.168.1.1", False),
    ("§6-internet-excludes-100.64/10", "Internet", "100.64.1.1", False),
    ("§6-internet-excludes-198.18/15", "Internet", "198.18.0.1", False),
    ("§6-internet-excludes-loopback", "Internet", "127.0.0.1", False),
    ("§6-internet-excludes-link-local", "Internet", "169.254.169.254", False),
    ("§6-internet-excludes-microsoft-block", "Internet", "4.128.0.1", False),
    ("§6-internet-excludes-21/8", "Internet", "21.1.1.1", False),
    ("§6-internet-v6-global-unicast", "Internet", "2001:db8::9", True),
    ("§6-internet-v6-2600::/12", "Internet", "2603:1030::1", True),
    ("§6-internet-v6-excludes-ula", "Internet", "fd12::1", False),
    ("§6-internet-v6-excludes-ietf-protocol-block", "Internet", "2001::1", False),
    ("§6-azureloadbalancer-is-host-vip-only", "AzureLoadBalancer", "203.0.113.9", False),
    ("§6-azureloadbalancer-ipv6-probe-source", "AzureLoadBalancer", "fe80::1234:5678:9abc", True),
    ("§6-azureloadbalancer-not-other-link-local", "AzureLoadBalancer", "fe80::1", False),
    ("§6-file-tag-global", "Storage", "13.65.107.33", True),
    ("§6-regional-tag", "Storage.EastUS", "13.68.163.33", True),
    ("§6-regional-tag-excludes-other-prefixes", "Storage.EastUS", "13.65.107.33", False),
    ("§6-regional-tag-case-insensitive", "storage.eastus", "13.68.163.33", True),
    ("§6-irregular-region-spelling", "AzureCloud.eastus", "4.156.0.1", True),
    ("§6-ipv6-prefix-in-tag", "Storage.EastUS", "2603:1030:213::1", True),
    ("§6-networkFeatures-null-tag", "ActionGroup.AustraliaCentral", "20.53.1.69", True),
]


@pytest.mark.parametrize("tag,remote,inside", [r[1:] for r in TAG_ROWS], ids=[r[0] for r in TAG_ROWS])
def test_service_tags(tag, remote, inside):
    """§6: a rule with a tag as source matches exactly the tag's addresses (built-in or file)."""
    doc = base_state(subnet_rules=[rule("tagged", 100, access="Deny", src=tag), rule("rest", 200)],
                     serviceTags={"files": [TAGS_FILE]})
    local = "10.0.1.4"
    if ":" in remote:  # an IPv6 flow needs an IPv6 NIC address
        doc["virtualNetworks"][0]["addressSpace"].append("fd00::/48")
        doc["virtualNetworks"][0]["subnets"].append({"name": "v6", "addressPrefix": "fd00::/64",
                                                     "networkSecurityGroup": "subnet-nsg"})
        doc["networkInterfaces"].append({"name": "n6", "subnet": "v1/v6", "ipAddresses": ["fd00::4"]})
        local = "fd00::4"
    v = check(doc, "n6" if ":" in remote else "n1", "Inbound", "tcp", local, remote, 443, 40000)
    assert (decided_by(v)[2] == "tagged") is inside


def test_tag_prefixes_come_from_the_file():
    """§6-regional-tag-from-file: a file tag resolves to exactly the file's prefixes (v4 and v6)."""
    doc = json.loads(Path(TAGS_FILE).read_text())
    expected = [v for v in doc["values"] if v["name"] == "Sql.EastUS"][0]["properties"]["addressPrefixes"]
    loaded = load_doc(base_state(subnet_rules=[rule("sql", 100, dst="Sql.EastUS")], serviceTags={"files": [TAGS_FILE]}))
    term = Resolver(loaded.state, loaded.tags).tag_term("sql.eastus", "v1")
    assert set(term.prefixes) == {NET(p) for p in expected}


def test_rules_follow_tag_file_changes(tmp_path):
    """§6-tag-file-change: when the published file changes, the same rule covers the new prefixes."""
    tags = {"changeNumber": 1, "cloud": "Public", "values": [
        {"name": "Storage", "id": "Storage", "properties": {"addressPrefixes": ["198.51.100.0/25"], "networkFeatures": None}}]}
    (tmp_path / "tags.json").write_text(json.dumps(tags))
    state = base_state(subnet_rules=[rule("st", 100, access="Deny", src="Storage"), rule("rest", 200)],
                       serviceTags={"files": ["tags.json"]})
    (tmp_path / "state.json").write_text(json.dumps(state))
    before = check(load(tmp_path / "state.json"), "n1", "Inbound", "tcp", "10.0.1.4", "198.51.100.200", 80, 1)
    tags["values"][0]["properties"]["addressPrefixes"] = ["198.51.100.128/25"]
    tags["changeNumber"] = 2
    (tmp_path / "tags.json").write_text(json.dumps(tags))
    after = check(load(tmp_path / "state.json"), "n1", "Inbound", "tcp", "10.0.1.4", "198.51.100.200", 80, 1)
    assert (before.allowed, after.allowed) == (True, False)


# --- §7 platform addresses ----------------------------------------------------------------------

DENY_ALL_OUT = rule("deny-all-out", 100, "Outbound", "Deny")

PLATFORM_ROWS = [
    ("§7-exemption-host-vip-dns", [DENY_ALL_OUT], {}, "udp", "168.63.129.16", 53, ("Allow", None, "PlatformExemption")),
    ("§7-exemption-imds", [DENY_ALL_OUT], {}, "tcp", "169.254.169.254", 80, ("Allow", None, "PlatformExemption")),
    ("§7-AzurePlatformDNS-deny", [rule("no-dns", 100, "Outbound", "Deny", dst="AzurePlatformDNS")], {},
     "udp", "168.63.129.16", 53, ("Deny", "subnet-nsg", "no-dns")),
    ("§7-AzurePlatformIMDS-deny", [rule("no-imds", 100, "Outbound", "Deny", dst="AzurePlatformIMDS")], {},
     "tcp", "169.254.169.254", 80, ("Deny", "subnet-nsg", "no-imds")),
    ("§7-AzurePlatformDNS-deny-leaves-imds", [rule("no-dns", 100, "Outbound", "Deny", dst="AzurePlatformDNS")], {},
     "tcp", "169.254.169.254", 80, ("Allow", None, "PlatformExemption")),
    ("§7-exemption-can-be-turned-off", [DENY_ALL_OUT], {"platformExemption": False}, "udp", "168.63.129.16", 53,
     ("Deny", "subnet-nsg", "deny-all-out")),
    ("§7-smtp-blocked-by-default", [], {}, "tcp", "203.0.113.25", 25, ("Deny", None, "BlockOutboundSmtp")),
    ("§7-smtp-blocked-even-if-allowed-by-rule", [rule("smtp", 100, "Outbound", dport="25")], {},
     "tcp", "203.0.113.25", 25, ("Deny", None, "BlockOutboundSmtp")),
    ("§7-smtp-allowed-setting", [], {"outboundSmtp": "allowed"}, "tcp", "203.0.113.25", 25,
     ("Allow", "subnet-nsg", "AllowInternetOutBound")),
    ("§7-smtp-inside-vnet-not-blocked", [], {}, "tcp", "10.0.1.5", 25, ("Allow", "subnet-nsg", "AllowVnetOutBound")),
    ("§7-submission-587-not-blocked", [], {}, "tcp", "203.0.113.25", 587, ("Allow", "subnet-nsg", "AllowInternetOutBound")),
    ("§7-kms-1688-outbound-allowed-by-default", [], {}, "tcp", "203.0.113.30", 1688,
     ("Allow", "subnet-nsg", "AllowInternetOutBound")),
    ("§7-kms-1688-can-be-denied", [rule("no-kms", 100, "Outbound", "Deny", protocol="Tcp", dport="1688")], {},
     "tcp", "203.0.113.30", 1688, ("Deny", "subnet-nsg", "no-kms")),
]


@pytest.mark.parametrize("rules,platform,proto,remote,port,expected", [r[1:] for r in PLATFORM_ROWS],
                         ids=[r[0] for r in PLATFORM_ROWS])
def test_platform_behaviour(rules, platform, proto, remote, port, expected):
    """§7: host VIP/IMDS exemption (unless an AzurePlatform* tag denies), SMTP and KMS outbound."""
    doc = base_state(subnet_rules=rules, platform=platform)
    assert decided_by(check(doc, "n1", "Outbound", proto, "10.0.1.4", remote, 40000, port)) == expected


def test_load_balanced_flow_uses_original_addresses():
    """§7-load-balancer-original-addresses: rules see the client's address and the VM's port,
    so a rule naming the client range matches a flow as the VM receives it."""
    doc = base_state(subnet_rules=[rule("clients", 100, src="198.51.100.0/24", dport="8080")])
    v = check(doc, "n1", "Inbound", "tcp", "10.0.1.4", "198.51.100.77", 8080, 51000)
    assert decided_by(v) == ("Allow", "subnet-nsg", "clients")


# --- §8 inspection ---------------------------------------------------------------------------


def test_effective_rules_expand_tags_and_asgs():
    """§8-effective-rules-expanded: tags and ASGs in effective rules carry their prefixes."""
    loaded = load(EXAMPLES / "webservers-asg.yaml")
    nic = resolve(loaded.state, loaded.tags).nics["web1"]
    rules = {r.name: r for _, r in effective_rules(nic, Direction.INBOUND)}
    web = rules["Allow-Internet-To-WebServers"]
    assert web.destination.prefixes == nets("10.10.1.4/31")  # web1 + web2, collapsed
    assert web.source.label == "Internet" and _covered(web.source.prefixes, NET("203.0.113.0/24"))
    assert not _covered(web.source.prefixes, NET("10.10.0.0/16"))


def test_asg_rule_applies_only_to_members():
    """§8/§1: a rule naming an ASG as destination applies to its members only."""
    loaded = load(EXAMPLES / "webservers-asg.yaml")
    assert check(loaded, "web2", "Inbound", "tcp", "10.10.1.5", "203.0.113.10", 80, 5000).allowed
    assert not check(loaded, "app1", "Inbound", "tcp", "10.10.2.4", "203.0.113.10", 80, 5000).allowed


VERIFY_ROWS = [
    ("§8-verify-tcp", "tcp", 443, ("Allow", "subnet-nsg", "any-proto")),
    ("§8-verify-udp", "udp", 443, ("Allow", "subnet-nsg", "any-proto")),
    ("§8-verify-icmp", "icmp", None, ("Allow", "subnet-nsg", "any-proto")),
    ("§8-verify-esp", "esp", None, ("Allow", "subnet-nsg", "any-proto")),
    ("§8-verify-ah", "ah", None, ("Allow", "subnet-nsg", "any-proto")),
]


@pytest.mark.parametrize("proto,port,expected", [r[1:] for r in VERIFY_ROWS], ids=[r[0] for r in VERIFY_ROWS])
def test_verify_every_protocol(proto, port, expected):
    """§8-ip-flow-verify: every protocol is verifiable (Azure limits this to TCP/UDP)."""
    doc = base_state(subnet_rules=[rule("any-proto", 100, src="203.0.113.0/24")])
    v = check(doc, "n1", "Inbound", proto, "10.0.1.4", "203.0.113.9", port, 1 if port else None)
    assert decided_by(v) == expected


def test_flow_log_rule_names():
    """§8-flow-log-names: rules carry Azure's flow-log names UserRule_<n> / DefaultRule_<n>."""
    loaded = load_doc(base_state(subnet_rules=[rule("web", 100)]))
    names = [r.log_name for r in resolve(loaded.state, loaded.tags).nics["n1"].inbound[0].rules]
    assert names == ["UserRule_web", "DefaultRule_AllowVnetInBound",
                     "DefaultRule_AllowAzureLoadBalancerInBound", "DefaultRule_DenyAllInBound"]


def test_find_nic_case_insensitive_and_unknown():
    """find_nic matches names case-insensitively and names the known NICs when it fails."""
    loaded = load_doc(base_state())
    policy = resolve(loaded.state, loaded.tags)
    assert find_nic(policy, "N1").nic == "n1"
    with pytest.raises(KeyError, match="known: n1, n2"):
        find_nic(policy, "n3")


def test_evaluate_uses_nic_policy_directly():
    """evaluate() on a NicPolicy gives the same verdict as verify() on the policy."""
    loaded = load_doc(base_state(subnet_rules=[rule("x", 100, access="Deny", dport="22")]))
    nic = resolve(loaded.state, loaded.tags).nics["n1"]
    f = flow("Inbound", "tcp", "10.0.1.4", "203.0.113.9", 22, 1)
    assert evaluate(nic, f) == check(loaded, "n1", "Inbound", "tcp", "10.0.1.4", "203.0.113.9", 22, 1)
