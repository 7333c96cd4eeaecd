"""Answers checked against what Azure itself returned (../shared/azure-samples/recorded/) and
the corrected contract (nsg-semantics.md §2, §3, §6, §7, §8): the Internet tag as Azure's
fixed list, AzureLoadBalancer's IPv6 probe source, platform drops, default rule spellings,
peerings per side, user-defined routes, and the shapes of effective rules and IP flow verify."""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path

import pytest

from foundation_helpers import SAMPLES, base_state, check, decided_by, flow, load_doc, rule
from nsg_agent.cli.inspect import effective_json, verdict_json
from nsg_agent.desired import networks
from nsg_agent.desired.builtin_tags import internet_v4_prefixes, parse_internet_file
from nsg_agent.semantics import answers
from nsg_agent.semantics.resolver import Resolver, canonical_default_rule, evaluate, find_nic, resolve

EVIDENCE = Path(__file__).resolve().parent.parent / "docs" / "evidence"  # copies of ../shared's recordings
RECORDED = EVIDENCE / "azure-cli__test_network_nic_convenience_commands__effective-nsg.json"
RECORDED_ROUTES = EVIDENCE / "azure-cli__test_network_nic_convenience_commands__effective-routes.json"
INTERNET_TXT = SAMPLES / "recorded" / "internet-tag-2022-05-12.txt"


def recorded_body() -> dict:
    if not RECORDED.is_file():
        pytest.skip("recorded Azure responses not present")
    return json.loads(RECORDED.read_text())["body"]


# The desired state equivalent to the recording: VNet 10.0.0.0/16, NIC 10.0.0.4 with an NSG
# (associated with the NIC) that has no user rules.
RECORDED_STATE = {
    "virtualNetworks": [{"name": "conveniencevm1VNET", "addressSpace": ["10.0.0.0/16"],
                         "subnets": [{"name": "conveniencevm1Subnet", "addressPrefix": "10.0.0.0/24"}]}],
    "networkInterfaces": [{"name": "conveniencevm1VMNic", "subnet": "conveniencevm1VNET/conveniencevm1Subnet",
                           "ipAddresses": ["10.0.0.4"], "networkSecurityGroup": "conveniencevm1NSG"}],
    "networkSecurityGroups": [{"name": "conveniencevm1NSG", "securityRules": []}],
}


def _effective(doc: dict, nic: str) -> dict:
    loaded = load_doc(doc)
    return effective_json(loaded, find_nic(resolve(loaded.state, loaded.tags), nic), answers.Direction)


def _normalise(rule_json: dict) -> dict:
    return {k: sorted(v) if k.startswith("expanded") else v for k, v in rule_json.items()}


def test_effective_rules_reproduce_the_recorded_azure_response():
    """§8: every field of every default rule as Azure returned it (expanded prefixes and tagMap
    compared as sets), the association, and the NSG."""
    azure = recorded_body()["value"][0]
    ours = _effective(RECORDED_STATE, "conveniencevm1VMNic")["value"]
    assert len(ours) == 1
    ours = ours[0]
    assert [r["name"] for r in ours["effectiveSecurityRules"]] == [r["name"] for r in azure["effectiveSecurityRules"]]
    for mine, theirs in zip(ours["effectiveSecurityRules"], azure["effectiveSecurityRules"]):
        assert _normalise(mine) == _normalise(theirs), theirs["name"]
        assert list(mine) == list(theirs), theirs["name"]  # the same fields, in Azure's order
    assert {k: sorted(v) for k, v in ours["tagMap"].items()} == {k: sorted(v) for k, v in azure["tagMap"].items()}
    assert ours["networkSecurityGroup"]["id"].endswith("/networkSecurityGroups/conveniencevm1NSG")
    assert list(ours["association"]) == list(azure["association"]) == ["networkInterface"]


def test_shipped_internet_list_is_the_recorded_one():
    """The package's Internet data is Azure's tagMap.Internet, prefix for prefix, in order."""
    assert internet_v4_prefixes() == tuple(recorded_body()["value"][0]["tagMap"]["Internet"])
    assert len(internet_v4_prefixes()) == 273


# --- §6 Internet and VirtualNetwork as Azure computes them ---------------------------------

ONPREM = base_state(subnet_rules=[rule("deny-internet-in", 100, access="Deny", src="Internet"),
                                  rule("allow-vnet-in", 200, src="VirtualNetwork")])
ONPREM["virtualNetworks"][0]["onPremisesPrefixes"] = ["52.10.0.0/16"]

TAG_CASES = [
    # id, rules on the subnet NSG, direction, remote, expected (access, rule)
    ("private-outside-vnet-is-not-internet-inbound",
     [rule("allow-internet-80", 100, src="Internet", dport="80")], "Inbound", "172.31.0.100",
     ("Deny", "DenyAllInBound")),
    ("cgnat-is-not-internet-inbound",
     [rule("allow-internet-80", 100, src="Internet", dport="80")], "Inbound", "100.64.1.1",
     ("Deny", "DenyAllInBound")),
    ("public-is-internet-inbound",
     [rule("allow-internet-80", 100, src="Internet", dport="80")], "Inbound", "203.0.113.10",
     ("Allow", "allow-internet-80")),
    # Microsoft's IP flow verify quickstart: 172.31.0.100 outbound is denied by DenyAllOutBound.
    ("private-outside-vnet-denied-outbound", [], "Outbound", "172.31.0.100", ("Deny", "DenyAllOutBound")),
    ("private-outside-vnet-is-not-virtualnetwork", [], "Inbound", "192.168.5.5", ("Deny", "DenyAllInBound")),
    ("public-allowed-outbound-by-default", [], "Outbound", "198.51.100.7", ("Allow", "AllowInternetOutBound")),
    ("168/8-is-internet", [rule("allow-internet-80", 100, src="Internet", dport="80")],
     "Inbound", "168.1.2.3", ("Allow", "allow-internet-80")),
]


@pytest.mark.parametrize("rules,direction,remote,expected", [c[1:] for c in TAG_CASES], ids=[c[0] for c in TAG_CASES])
def test_internet_tag_cases(rules, direction, remote, expected):
    v = check(base_state(subnet_rules=rules), "n1", direction, "tcp", "10.0.1.4", remote, 80, 40000)
    assert (v.access.value, decided_by(v)[2]) == expected


def test_host_vip_is_virtualnetwork_and_inside_internet():
    """168.63.129.16 is in the NIC's VirtualNetwork and inside Azure's 168.0.0.0/8 Internet
    block: a VirtualNetwork rule and an Internet rule both match it."""
    loaded = load_doc(base_state(subnet_rules=[]))
    r = Resolver(loaded.state, loaded.tags)
    vip = ipaddress.ip_address("168.63.129.16")
    assert any(vip in n for n in r.virtual_network("v1"))
    assert any(vip in n for n in r.internet())


def test_public_on_premises_prefix_is_both_tags():
    """Nothing is subtracted: a public on-premises prefix is VirtualNetwork and Internet, so a
    'deny Internet' rule above the VirtualNetwork allow blocks it (azure-docs #81801)."""
    v = check(ONPREM, "n1", "Inbound", "tcp", "10.0.1.4", "52.10.1.1", 22, 40000)
    assert decided_by(v) == ("Deny", "subnet-nsg", "deny-internet-in")
    loaded = load_doc(ONPREM)
    r = Resolver(loaded.state, loaded.tags)
    onprem = ipaddress.ip_address("52.10.1.1")
    assert any(onprem in n for n in r.virtual_network("v1")) and any(onprem in n for n in r.internet())


def test_ipv6_probe_source_allowed_by_load_balancer_default():
    doc = base_state(subnet_rules=[])
    doc["virtualNetworks"][0]["addressSpace"].append("fd00:10::/48")
    doc["virtualNetworks"][0]["subnets"].append({"name": "v6", "addressPrefix": "fd00:10::/64",
                                                 "networkSecurityGroup": "subnet-nsg"})
    doc["networkInterfaces"].append({"name": "n6", "subnet": "v1/v6", "ipAddresses": ["fd00:10::4"]})
    v = check(doc, "n6", "Inbound", "tcp", "fd00:10::4", "fe80::1234:5678:9abc", 80, 40000)
    assert decided_by(v) == ("Allow", "subnet-nsg", "AllowAzureLoadBalancerInBound")
    v = check(doc, "n6", "Inbound", "tcp", "fd00:10::4", "fe80::1", 80, 40000)
    assert decided_by(v) == ("Deny", "subnet-nsg", "DenyAllInBound")


# --- internet tag overrides (serviceTags.internet) -----------------------------------------


def test_internet_override_from_recorded_response(tmp_path):
    """A user points serviceTags.internet at their own list-effective-nsg output: its
    tagMap.Internet becomes the IPv4 Internet tag (IPv6 keeps the built-in definition)."""
    if not RECORDED.is_file():
        pytest.skip("recorded Azure responses not present")
    internet, problems = parse_internet_file(RECORDED.read_bytes(), str(RECORDED))
    assert problems == [] and internet is not None
    assert len(internet.cidrs(4)) == 273


@pytest.mark.parametrize("text,inside,outside", [
    ("# mine\n203.0.113.0/24\n198.51.100.0/24\n", "203.0.113.5", "8.8.8.8"),
    ('["203.0.113.0/24"]', "203.0.113.5", "1.1.1.1"),
    ('{"tagMap": {"Internet": ["198.51.100.0/24"]}}', "198.51.100.9", "203.0.113.5"),
], ids=["text", "json-list", "tagmap"])
def test_internet_override_shapes(tmp_path, text, inside, outside):
    (tmp_path / "internet.txt").write_text(text)
    doc = base_state(subnet_rules=[rule("allow-internet", 100, src="Internet")],
                     serviceTags={"internet": str(tmp_path / "internet.txt")})
    assert decided_by(check(doc, "n1", "Inbound", "tcp", "10.0.1.4", inside, 80, 40000))[2] == "allow-internet"
    assert decided_by(check(doc, "n1", "Inbound", "tcp", "10.0.1.4", outside, 80, 40000))[2] == "DenyAllInBound"
    # IPv6 keeps the built-in definition when the file has none
    loaded = load_doc(doc)
    assert Resolver(loaded.state, loaded.tags).internet_set().contains(6, int(ipaddress.ip_address("2001:db8::1")))


def test_internet_override_errors_name_the_file(tmp_path):
    (tmp_path / "bad.txt").write_text("203.0.113.0/24\nnot-a-prefix\n")
    doc = base_state(subnet_rules=[], serviceTags={"internet": str(tmp_path / "bad.txt")})
    from foundation_helpers import problems_of
    found = problems_of(doc)
    assert any("bad.txt" in p.file and "not-a-prefix" in p.message for p in found), found
    doc = base_state(subnet_rules=[], serviceTags={"internet": str(tmp_path / "missing.txt")})
    assert any(p.path == "serviceTags.internet" and "cannot read" in p.message for p in problems_of(doc))


# --- §7 platform drops ------------------------------------------------------------------------

ALLOW_ALL = [rule("allow-all-in", 100), rule("allow-all-out", 100, direction="Outbound")]


@pytest.mark.parametrize("direction,protocol,remote,local,expected", [
    ("Inbound", "47", "10.0.1.5", "10.0.1.4", "BlockGre"),
    ("Outbound", "47", "10.0.1.5", "10.0.1.4", "BlockGre"),
    ("Outbound", "4", "203.0.113.9", "10.0.1.4", "BlockIpInIp"),
    ("Inbound", "4", "10.0.1.5", "10.0.1.4", "BlockIpInIp"),
    ("Outbound", "udp", "224.0.0.251", "10.0.1.4", "BlockMulticast"),
    ("Outbound", "udp", "239.1.2.3", "10.0.1.4", "BlockMulticast"),
    ("Outbound", "udp", "255.255.255.255", "10.0.1.4", "BlockBroadcast"),
    ("Outbound", "udp", "10.0.1.255", "10.0.1.4", "BlockBroadcast"),
], ids=["gre-in", "gre-out", "ipip-out", "ipip-in", "mdns", "multicast", "limited-broadcast", "subnet-broadcast"])
def test_platform_drops_whatever_the_nsg_says(direction, protocol, remote, local, expected):
    doc = base_state(subnet_rules=ALLOW_ALL)
    ports = (5353, 5353) if protocol == "udp" else (None, None)
    v = check(doc, "n1", direction, protocol, local, remote, *ports)
    assert v.access.value == "Deny"
    assert v.deciding.kind is None and v.deciding.rule.name == expected and v.deciding.rule.log_name == f"PlatformRule_{expected}"


def test_platform_drops_can_be_turned_off():
    doc = base_state(subnet_rules=ALLOW_ALL, platform={"platformDrops": False})
    assert check(doc, "n1", "Outbound", "47", "10.0.1.4", "10.0.1.5").allowed
    assert check(doc, "n1", "Outbound", "udp", "10.0.1.4", "224.0.0.251", 5353, 5353).allowed


def test_icmpv6_multicast_is_not_dropped():
    """Neighbour discovery and MLD (ICMPv6 to ff02::/16) are the platform's own signalling."""
    doc = base_state(subnet_rules=ALLOW_ALL)
    doc["virtualNetworks"][0]["addressSpace"].append("fd00:10::/48")
    doc["virtualNetworks"][0]["subnets"].append({"name": "v6", "addressPrefix": "fd00:10::/64",
                                                 "networkSecurityGroup": "subnet-nsg"})
    doc["networkInterfaces"].append({"name": "n6", "subnet": "v1/v6", "ipAddresses": ["fd00:10::4"]})
    assert decided_by(check(doc, "n6", "Outbound", "58", "fd00:10::4", "ff02::1:ff00:5"))[2] == "allow-all-out"
    assert decided_by(check(doc, "n6", "Outbound", "udp", "fd00:10::4", "ff02::fb", 5353, 5353))[2] == "BlockMulticast"


# --- §3 default rule names --------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["AllowVNetInBound", "allowvnetinbound", "AllowVnetInbound",
                                      "defaultSecurityRules/AllowVnetInBound"])
def test_any_spelling_of_a_default_rule_is_accepted(spelling):
    assert canonical_default_rule(spelling) == "AllowVnetInBound"
    assert canonical_default_rule("DenyAllInbound") == "DenyAllInBound"
    assert canonical_default_rule("my-rule") is None


def test_default_rules_print_azure_spelling():
    v = check(base_state(subnet_rules=[]), "n1", "Inbound", "tcp", "10.0.1.4", "10.0.1.5", 22, 40000)
    assert v.deciding.rule.name == "AllowVnetInBound"
    assert v.deciding.rule.log_name == "DefaultRule_AllowVnetInBound"


# --- §6 peerings as Azure models them ------------------------------------------------------


def _two_vnets(a_peerings, b_peerings) -> dict:
    doc = base_state(subnet_rules=[])
    doc["virtualNetworks"][0]["peerings"] = a_peerings
    doc["virtualNetworks"].append({"name": "v2", "addressSpace": ["10.9.0.0/16"], "peerings": b_peerings,
                                   "subnets": [{"name": "s9", "addressPrefix": "10.9.1.0/24"}]})
    return doc


def _side(remote: str, **extra) -> dict:
    return {"name": f"to-{remote}", "properties": {"remoteVirtualNetwork": {"id": f"/x/virtualNetworks/{remote}"}, **extra}}


@pytest.mark.parametrize("a,b,joined", [
    (["v2"], [], True),  # the shorthand: a connected pair
    ([_side("v2")], [_side("v1")], True),  # both sides: Connected
    ([_side("v2")], [], False),  # one side only: Initiated, connects nothing
    ([], [_side("v1")], False),
    ([_side("v2", peeringState="Initiated")], [_side("v1")], False),
    ([_side("v2", peeringState="Disconnected")], [_side("v1", peeringState="Disconnected")], False),
    ([_side("v2", allowVirtualNetworkAccess=False)], [_side("v1")], False),
], ids=["shorthand", "both-sides", "one-sided", "one-sided-remote", "initiated", "disconnected", "access-blocked"])
def test_peering_joins_virtual_network(a, b, joined):
    doc = _two_vnets(a, b)
    v = check(doc, "n1", "Inbound", "tcp", "10.0.1.4", "10.9.1.4", 22, 40000)
    assert decided_by(v)[2] == ("AllowVnetInBound" if joined else "DenyAllInBound")


def test_allow_virtual_network_access_is_per_side():
    """Access blocked on v1's side keeps v2 out of v1's VirtualNetwork only."""
    doc = _two_vnets([_side("v2", allowVirtualNetworkAccess=False)], [_side("v1")])
    loaded = load_doc(doc)
    r = Resolver(loaded.state, loaded.tags)
    assert not any(ipaddress.ip_address("10.9.1.4") in n for n in r.virtual_network("v1"))
    assert any(ipaddress.ip_address("10.0.1.4") in n for n in r.virtual_network("v2"))
    assert networks.connected(loaded.state, "v1", "v2")


def test_one_sided_peering_is_initiated_and_warned():
    loaded = load_doc(_two_vnets([_side("v2")], []))
    assert networks.peering_state(loaded.state, "v1", "v2") == "Initiated"
    assert not networks.connected(loaded.state, "v1", "v2")
    assert any("connects nothing" in w.message and "Initiated" in w.message for w in loaded.warnings)


def test_virtual_network_peerings_key_and_state_spelling():
    """Azure's own key (virtualNetworkPeerings) and any letter case of peeringState load."""
    doc = _two_vnets([], [])
    doc["virtualNetworks"][0]["virtualNetworkPeerings"] = [_side("v2", peeringState="connected")]
    doc["virtualNetworks"][1]["virtualNetworkPeerings"] = [_side("v1", peeringState="CONNECTED")]
    loaded = load_doc(doc)
    assert networks.connected(loaded.state, "v1", "v2")


# --- §6/§7 user-defined and system routes --------------------------------------------------


def _routed(routes: list[dict]) -> dict:
    doc = base_state(subnet_rules=[rule("deny-internet-out", 100, direction="Outbound", access="Deny", dst="Internet")])
    doc["routeTables"] = [{"name": "rt1", "routes": routes}]
    doc["virtualNetworks"][0]["subnets"][0]["routeTable"] = {"id": "/x/routeTables/rt1"}
    return doc


def test_forced_tunnel_route_makes_virtual_network_everything():
    """Recorded Azure output: VirtualNetwork = 0.0.0.0/0 under a forced-tunnel route; the
    VirtualNetwork default then allows what the Internet tag would have."""
    doc = _routed([{"name": "force", "addressPrefix": "0.0.0.0/0", "nextHopType": "VirtualAppliance",
                    "nextHopIpAddress": "10.0.2.4"}])
    loaded = load_doc(doc)
    r = Resolver(loaded.state, loaded.tags)
    assert ipaddress.ip_network("0.0.0.0/0") in r.virtual_network("v1", "v1/s1")
    v = check(loaded, "n1", "Inbound", "tcp", "10.0.1.4", "172.31.0.100", 22, 40000)
    assert decided_by(v)[2] == "AllowVnetInBound"


def test_route_prefix_joins_virtual_network_of_its_subnet_only():
    doc = _routed([{"name": "onprem", "addressPrefix": "172.20.0.0/16", "nextHopType": "VirtualNetworkGateway"}])
    doc["virtualNetworks"][0]["subnets"].append({"name": "s2", "addressPrefix": "10.0.2.0/24", "networkSecurityGroup": "subnet-nsg"})
    doc["networkInterfaces"].append({"name": "n3", "subnet": "v1/s2", "ipAddresses": ["10.0.2.4"]})
    assert decided_by(check(doc, "n1", "Inbound", "tcp", "10.0.1.4", "172.20.1.1", 22, 40000))[2] == "AllowVnetInBound"
    assert decided_by(check(doc, "n3", "Inbound", "tcp", "10.0.2.4", "172.20.1.1", 22, 40000))[2] == "DenyAllInBound"


def test_route_validation_errors():
    from foundation_helpers import problems_of
    doc = _routed([{"name": "x", "addressPrefix": "10.0.0.0/33", "nextHopType": "Nowhere"}])
    msgs = [p.message for p in problems_of(doc)]
    assert any("10.0.0.0/33" in m for m in msgs) and any("Nowhere" in m for m in msgs)
    doc = _routed([{"name": "va", "addressPrefix": "10.5.0.0/16", "nextHopType": "VirtualAppliance"}])
    assert any("nextHopIpAddress" in p.message for p in problems_of(doc))
    doc = base_state(subnet_rules=[])
    doc["virtualNetworks"][0]["subnets"][0]["routeTable"] = "nope"
    assert any(p.path.endswith("routeTable") and "unknown route table" in p.message for p in problems_of(doc))


def test_system_none_routes_are_the_recorded_ones():
    """The default routes with next hop None are those of Azure's recorded route table."""
    if not RECORDED_ROUTES.is_file():
        pytest.skip("recorded Azure responses not present")
    body = json.loads(RECORDED_ROUTES.read_text())["body"]
    recorded = {p for r in body["value"] if r["nextHopType"] == "None" for p in r["addressPrefix"]}
    assert recorded == set(networks.SYSTEM_NONE_ROUTES)


@pytest.mark.parametrize("remote,hop", [
    ("10.200.0.1", "None"), ("100.64.0.1", "None"), ("192.168.1.1", "None"),
    ("172.31.0.100", "Internet"),  # no 172.16/12 None route in Azure's recorded table
    ("10.0.7.7", "VnetLocal"), ("203.0.113.9", "Internet"),
])
def test_effective_route(remote, hop):
    loaded = load_doc(base_state(subnet_rules=[]))
    assert networks.route_for(loaded.state, "v1/s1", ipaddress.ip_address(remote)).next_hop_type == hop


def test_user_route_overrides_system_route():
    loaded = load_doc(_routed([{"name": "hub", "addressPrefix": "10.200.0.0/16", "nextHopType": "VirtualAppliance",
                                "nextHopIpAddress": "10.0.2.4"},
                               {"name": "drop", "addressPrefix": "203.0.113.0/24", "nextHopType": "None"}]))
    route = networks.route_for(loaded.state, "v1/s1", ipaddress.ip_address("10.200.1.1"))
    assert (route.next_hop_type, route.source, route.name) == ("VirtualAppliance", "User", "hub")
    assert networks.route_for(loaded.state, "v1/s1", ipaddress.ip_address("203.0.113.9")).next_hop_type == "None"


# --- §8 IP flow verify as Azure answers ----------------------------------------------------


def _verify_json(doc: dict, nic: str, direction: str, protocol: str, local: str, remote: str,
                 lport=None, rport=None) -> dict:
    loaded = load_doc(doc)
    nicp = find_nic(resolve(loaded.state, loaded.tags), nic)
    f = flow(direction, protocol, local, remote, lport, rport)
    return verdict_json(loaded, nicp, f, evaluate(nicp, f))


def test_verify_user_rule_answer_has_azure_name_and_id():
    out = _verify_json(base_state(subnet_rules=[rule("sr2", 100, dport="80")]), "n1", "Inbound", "tcp",
                       "10.0.1.4", "203.0.113.9", 80, 40000)
    assert out["access"] == "Allow" and out["ruleName"] == "securityRules/sr2"
    assert out["ruleId"].startswith("/subscriptions/") and out["ruleId"].endswith(
        "/providers/Microsoft.Network/networkSecurityGroups/subnet-nsg/securityRules/sr2")
    assert "azure" not in out and out["path"][0]["ruleName"] == "securityRules/sr2"


def test_verify_default_rule_answer():
    out = _verify_json(base_state(subnet_rules=[]), "n1", "Inbound", "tcp", "10.0.1.4", "203.0.113.9", 22, 40000)
    assert (out["access"], out["ruleName"], out["ruleId"]) == ("Deny", "defaultSecurityRules/DenyAllInBound", "")


def test_verify_keeps_an_imported_rule_id():
    doc = base_state(subnet_rules=[rule("sr2", 100)])
    doc["networkSecurityGroups"][0]["id"] = "/subscriptions/1234/resourceGroups/rg9/providers/Microsoft.Network/networkSecurityGroups/subnet-nsg"
    out = _verify_json(doc, "n1", "Inbound", "tcp", "10.0.1.4", "203.0.113.9", 80, 40000)
    assert out["ruleId"] == doc["networkSecurityGroups"][0]["id"] + "/securityRules/sr2"


def test_verify_without_any_nsg_allows_and_names_azures_error():
    out = _verify_json(base_state(), "n1", "Inbound", "tcp", "10.0.1.4", "203.0.113.9", 22, 40000)
    assert out["access"] == "Allow" and out["ruleName"] is None
    assert out["azure"]["error"]["code"] == "NsgsNotAppliedOnNic"


def test_verify_platform_decision_says_what_azure_answers():
    """Azure's IP flow verify considers NSGs only: for GRE it would answer by the NSG rule."""
    out = _verify_json(base_state(subnet_rules=ALLOW_ALL), "n1", "Outbound", "47", "10.0.1.4", "10.0.1.5")
    assert (out["access"], out["ruleName"], out["ruleId"]) == ("Deny", "platformRules/BlockGre", "")
    assert out["azure"]["access"] == "Allow" and out["azure"]["ruleName"] == "securityRules/allow-all-out"


def test_verify_notes_a_none_route():
    out = _verify_json(base_state(subnet_rules=[]), "n1", "Outbound", "tcp", "10.0.1.4", "10.200.0.1", 40000, 22)
    assert any("next hop None" in n and "10.0.0.0/8" in n for n in out["notes"])
    out = _verify_json(base_state(subnet_rules=[]), "n1", "Outbound", "tcp", "10.0.1.4", "203.0.113.9", 40000, 22)
    assert "notes" not in out


# --- effective rules' shape for user rules -------------------------------------------------


def test_effective_rule_shapes_for_user_rules():
    doc = base_state(subnet_rules=[
        rule("one-ip", 100, protocol="Tcp", src="1.1.1.1", dport="3389"),
        rule("list", 110, src=["10.1.0.0/24", "10.2.0.0/24"], dport=["80", "443"]),
        rule("tag", 120, src="Internet"),
    ])
    out = _effective(doc, "n1")["value"]
    rules = {r["name"]: r for r in out[0]["effectiveSecurityRules"]}
    one = rules["securityRules/one-ip"]
    assert (one["protocol"], one["sourceAddressPrefix"], one["destinationPortRange"]) == ("Tcp", "1.1.1.1/32", "3389-3389")
    assert "expandedSourceAddressPrefix" not in one
    lst = rules["securityRules/list"]
    assert lst["sourceAddressPrefixes"] == ["10.1.0.0/24", "10.2.0.0/24"] and "sourceAddressPrefix" not in lst
    assert lst["destinationPortRanges"] == ["80-80", "443-443"] and "destinationPortRange" not in lst
    tag = rules["securityRules/tag"]
    assert tag["sourceAddressPrefix"] == "Internet" and len(tag["expandedSourceAddressPrefix"]) == 273
    assert out[0]["association"] == {"subnet": {"id": out[0]["association"]["subnet"]["id"]}}
    assert out[0]["association"]["subnet"]["id"].endswith("/virtualNetworks/v1/subnets/s1")
    assert set(out[0]["tagMap"]) == {"Internet", "VirtualNetwork", "AzureLoadBalancer"}


def test_effective_rules_show_ipv6_internet_on_dual_stack_nics_only():
    doc = base_state(subnet_rules=[])
    doc["virtualNetworks"][0]["addressSpace"].append("fd00:10::/48")
    doc["virtualNetworks"][0]["subnets"][0]["addressPrefix"] = "10.0.1.0/24"
    doc["virtualNetworks"][0]["subnets"].append({"name": "v6", "addressPrefix": "fd00:10::/64",
                                                 "networkSecurityGroup": "subnet-nsg"})
    doc["networkInterfaces"].append({"name": "n6", "subnet": "v1/v6", "ipAddresses": ["fd00:10::4"]})
    v4 = _effective(copy.deepcopy(doc), "n1")["value"][0]["tagMap"]["Internet"]
    v6 = _effective(doc, "n6")["value"][0]["tagMap"]["Internet"]
    assert not any(":" in p for p in v4) and any(p == "2000::/16" for p in v6)


def test_smtp_block_is_at_the_internet_edge():
    """Outbound TCP 25 to an Internet address is blocked by the platform, but not to the host
    VIP or a public on-premises prefix, although both lie in Azure's Internet list: that
    traffic never leaves through the Internet edge."""
    doc = copy.deepcopy(ONPREM)
    doc["virtualNetworks"][0]["subnets"][0]["networkSecurityGroup"] = None
    assert decided_by(check(doc, "n1", "Outbound", "tcp", "10.0.1.4", "203.0.113.9", 40000, 25))[2] == "BlockOutboundSmtp"
    assert check(doc, "n1", "Outbound", "tcp", "10.0.1.4", "52.10.1.1", 40000, 25).allowed
    assert decided_by(check(doc, "n1", "Outbound", "tcp", "10.0.1.4", "168.63.129.16", 40000, 25))[2] == "PlatformExemption"


@pytest.mark.parametrize("icmp_type,decided", [(135, "AllowNeighborDiscovery"), (136, "AllowNeighborDiscovery"),
                                               (133, "AllowNeighborDiscovery"), (143, "AllowNeighborDiscovery"),
                                               (128, "DenyAllInBound"), (None, "DenyAllInBound")])
def test_icmpv6_neighbour_discovery_is_the_platforms(icmp_type, decided):
    """ND and MLD pass before any NSG (else DenyAll* cuts IPv6 itself); an echo request or an
    ICMPv6 flow of unknown type is the NSGs' to decide."""
    from nsg_agent.desired.vocabulary import Direction
    from nsg_agent.semantics.policy import Flow

    doc = base_state(subnet_rules=[])
    doc["virtualNetworks"][0]["addressSpace"].append("fd00:10::/48")
    doc["virtualNetworks"][0]["subnets"].append({"name": "v6", "addressPrefix": "fd00:10::/64",
                                                 "networkSecurityGroup": "subnet-nsg"})
    doc["networkInterfaces"].append({"name": "n6", "subnet": "v1/v6", "ipAddresses": ["fd00:10::4"]})
    loaded = load_doc(doc)
    nic = find_nic(resolve(loaded.state, loaded.tags), "n6")
    v = evaluate(nic, Flow(Direction.INBOUND, 58, ipaddress.ip_address("fd00:10::4"),
                           ipaddress.ip_address("2001:db8::9"), icmp_type=icmp_type))
    assert v.deciding.rule.name == decided


def test_evidence_copies_equal_the_shared_recordings():
    """The repository's copies are byte for byte the recordings in ../shared."""
    for path in (RECORDED, RECORDED_ROUTES):
        shared = SAMPLES / "recorded" / path.name
        if not shared.is_file():
            pytest.skip("shared recordings not present")
        assert path.read_bytes() == shared.read_bytes()
