"""§1 (objects) and §2 (rule properties and limits) of nsg-semantics.md: what the loader
accepts and what it rejects, with the field path and a clear message."""

from __future__ import annotations

import copy

import pytest

from foundation_helpers import base_state, load_doc, problems_of, rule
from nsg_agent.desired.model import Protocol
from nsg_agent.desired.vocabulary import Access, Direction


def _with_rules(*rules) -> dict:
    """The base state with these rules in the subnet NSG; ASGs the rules name are declared,
    except 'nope' (the unknown-reference case)."""
    doc = base_state(subnet_rules=list(rules))
    names = []
    for r in rules:
        for side in ("source", "destination"):
            for g in r.get(f"{side}ApplicationSecurityGroups", []):
                g = g["id"].rsplit("/", 1)[-1] if isinstance(g, dict) else g
                if g != "nope" and g not in names:
                    names.append(g)
    doc["applicationSecurityGroups"] = [{"name": n} for n in names]
    return doc


def _asgs(n: int, prefix: str = "g") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# --- §1 objects --------------------------------------------------------------------------


def _doc_two_vnets() -> dict:
    doc = base_state()
    doc["virtualNetworks"].append({"name": "v2", "addressSpace": ["10.9.0.0/16"],
                                   "subnets": [{"name": "s9", "addressPrefix": "10.9.1.0/24"}]})
    doc["networkInterfaces"].append({"name": "n9", "subnet": "v2/s9", "ipAddresses": ["10.9.1.4"]})
    return doc


def _mut(fn):
    def build():
        doc = base_state()
        fn(doc)
        return doc
    return build


def _asg_two_vnets():
    doc = _doc_two_vnets()
    doc["applicationSecurityGroups"] = [{"name": "web"}]
    doc["networkInterfaces"][0]["applicationSecurityGroups"] = ["web"]
    doc["networkInterfaces"][2]["applicationSecurityGroups"] = ["web"]
    return doc


def _asg_rule_two_vnets():
    doc = _doc_two_vnets()
    doc["applicationSecurityGroups"] = [{"name": "a"}, {"name": "b"}]
    doc["networkInterfaces"][0]["applicationSecurityGroups"] = ["a"]
    doc["networkInterfaces"][2]["applicationSecurityGroups"] = ["b"]
    doc["networkSecurityGroups"] = [{"name": "x", "securityRules": [
        rule("a-to-b", 100, src=None, dst=None, sourceApplicationSecurityGroups=["a"],
             destinationApplicationSecurityGroups=["b"])]}]
    return doc


OBJECT_ERRORS = [
    ("§1-subnet-inside-vnet", _mut(lambda d: d["virtualNetworks"][0]["subnets"][0].update(addressPrefix="10.1.0.0/24")),
     "virtualNetworks[0].subnets[0].addressPrefix", "not inside the address space"),
    ("§1-subnets-do-not-overlap", _mut(lambda d: d["virtualNetworks"][0]["subnets"].append(
        {"name": "s2", "addressPrefix": "10.0.1.128/25"})), "virtualNetworks[0].subnets[1].addressPrefix", "overlaps"),
    ("§1-subnet-unknown-nsg", _mut(lambda d: d["virtualNetworks"][0]["subnets"][0].update(networkSecurityGroup="nope")),
     "virtualNetworks[0].subnets[0].networkSecurityGroup", "unknown NSG"),
    ("§1-nic-in-existing-subnet", _mut(lambda d: d["networkInterfaces"][0].update(subnet="v1/nope")),
     "networkInterfaces[0].subnet", "unknown subnet"),
    ("§1-nic-subnet-written-vnet-slash-subnet", _mut(lambda d: d["networkInterfaces"][0].update(subnet="s1")),
     "networkInterfaces[0].subnet", "vnet/subnet"),
    ("§1-nic-ip-inside-subnet", _mut(lambda d: d["networkInterfaces"][0].update(ipAddresses=["10.0.2.4"])),
     "networkInterfaces[0].ipAddresses[0]", "not inside subnet"),
    ("§1-nic-needs-an-ip", _mut(lambda d: d["networkInterfaces"][0].update(ipAddresses=[])),
     "networkInterfaces[0].ipAddresses", "at least one IP"),
    ("§1-nic-ip-unique", _mut(lambda d: d["networkInterfaces"][1].update(ipAddresses=["10.0.1.4"])),
     "networkInterfaces[1].ipAddresses[0]", "already used"),
    ("§1-nic-unknown-nsg", _mut(lambda d: d["networkInterfaces"][0].update(networkSecurityGroup="nope")),
     "networkInterfaces[0].networkSecurityGroup", "unknown NSG"),
    ("§1-nic-unknown-asg", _mut(lambda d: d["networkInterfaces"][0].update(applicationSecurityGroups=["nope"])),
     "networkInterfaces[0].applicationSecurityGroups[0]", "unknown application security group"),
    ("§1-nsg-name-unique", _mut(lambda d: d["networkSecurityGroups"].extend([{"name": "x"}, {"name": "X"}])),
     "networkSecurityGroups[1].name", "more than once"),
    ("§1-asg-members-in-one-vnet", _asg_two_vnets, "networkInterfaces[2].applicationSecurityGroups[0]",
     "must be in one VNet"),
    ("§1-asg-rule-both-sides-same-vnet", _asg_rule_two_vnets, "networkSecurityGroups[0].securityRules[0]",
     "same VNet"),
]


@pytest.mark.parametrize("build,path,message", [r[1:] for r in OBJECT_ERRORS],
                         ids=[r[0] for r in OBJECT_ERRORS])
def test_object_rules_are_enforced(build, path, message):
    """An object that breaks a §1 rule is rejected at the right field path."""
    found = problems_of(build())
    assert any(p.path == path and message in p.message for p in found), [str(p) for p in found]


def _multi_space():
    doc = base_state()
    doc["virtualNetworks"][0]["addressSpace"].append("10.5.0.0/16")
    doc["virtualNetworks"][0]["subnets"].append({"name": "s5", "addressPrefix": "10.5.1.0/24"})
    doc["networkInterfaces"].append({"name": "n5", "subnet": "v1/s5", "ipAddresses": ["10.5.1.4", "10.5.1.5"]})
    return doc


def _shared_nsg():
    doc = base_state(subnet_rules=[])
    doc["virtualNetworks"][0]["subnets"].append({"name": "s2", "addressPrefix": "10.0.2.0/24",
                                                  "networkSecurityGroup": "subnet-nsg"})
    for nic in doc["networkInterfaces"]:
        nic["networkSecurityGroup"] = "subnet-nsg"
    return doc


@pytest.mark.parametrize("build", [_multi_space, _shared_nsg],
                         ids=["§1-vnet-several-address-spaces-nic-several-ips", "§1-same-nsg-on-many-subnets-and-nics"])
def test_valid_objects_load(build):
    """Several address spaces per VNet, several IPs per NIC, one NSG shared widely: all valid."""
    loaded = load_doc(build())
    assert loaded.state.virtualNetworks[0].name == "v1"
    for nic in loaded.state.networkInterfaces:
        sub = loaded.state.subnet(nic.subnet)
        assert sub is not None and all(a in sub[1].network for a in nic.addresses)


# --- §2 rule properties ---------------------------------------------------------------------

RP = "networkSecurityGroups[0].securityRules"

RULE_ERRORS = [
    ("§2-name-at-most-80", [rule("a" * 81, 100)], f"{RP}[0].name", "1-80 characters"),
    ("§2-name-starts-with-word-char", [rule("-web", 100)], f"{RP}[0].name", "start with"),
    ("§2-name-ends-with-word-char-or-underscore", [rule("web-", 100)], f"{RP}[0].name", "end with"),
    ("§2-name-unique-in-nsg", [rule("r", 100), rule("R", 200)], f"{RP}[1].name", "more than once"),
    ("§2-description-at-most-140", [rule("r", 100, description="x" * 141)], f"{RP}[0].description", "140"),
    ("§2-priority-below-100", [rule("r", 99)], f"{RP}[0].priority", "outside 100..4096"),
    ("§2-priority-above-4096", [rule("r", 4097)], f"{RP}[0].priority", "outside 100..4096"),
    ("§2-priority-not-a-number", [rule("r", "high")], f"{RP}[0].priority", "integer"),
    ("§2-priority-unique-per-direction", [rule("a", 100), rule("b", 100)], f"{RP}[1].priority", "already used"),
    ("§2-direction-inbound-or-outbound", [rule("r", 100, direction="Sideways")], f"{RP}[0].direction", "Inbound, Outbound"),
    ("§2-access-allow-or-deny", [rule("r", 100, access="Maybe")], f"{RP}[0].access", "Allow, Deny"),
    ("§2-protocol-known-values", [rule("r", 100, protocol="Gre")], f"{RP}[0].protocol", "Tcp, Udp, Icmp, Esp, Ah"),
    ("§2-address-cidr-valid", [rule("r", 100, src="10.0.0.0/33")], f"{RP}[0].sourceAddressPrefix", "not an IP address or CIDR"),
    ("§2-address-cidr-host-bits", [rule("r", 100, dst="10.0.0.1/8")], f"{RP}[0].destinationAddressPrefix", "host bits"),
    ("§2-address-list-cidr-valid", [rule("r", 100, src=["10.0.0.0/8", "300.1.1.1"])], f"{RP}[0].sourceAddressPrefixes", "300.1.1.1"),
    ("§2-address-tag-only-in-singular", [rule("r", 100, src=["Internet"])], f"{RP}[0].sourceAddressPrefixes", "singular field"),
    ("§2-address-star-only-in-singular", [rule("r", 100, src=["*"])], f"{RP}[0].sourceAddressPrefixes", "singular field"),
    ("§2-address-prefix-or-asg-not-both", [rule("r", 100, src="10.0.0.0/8", sourceApplicationSecurityGroups=["g"])],
     f"{RP}[0]", "not sourceAddressPrefix and sourceApplicationSecurityGroups"),
    ("§2-address-required", [rule("r", 100, src=None)], f"{RP}[0]", "is required"),
    ("§2-asg-at-most-10-per-side", [rule("r", 100, dst=None, destinationApplicationSecurityGroups=_asgs(11))],
     f"{RP}[0]", "at most 10"),
    ("§2-port-within-0-65535", [rule("r", 100, dport="65536")], f"{RP}[0].destinationPortRange", "outside 0-65535"),
    ("§2-port-range-not-reversed", [rule("r", 100, dport="90-80")], f"{RP}[0].destinationPortRange", "reversed"),
    ("§2-port-syntax", [rule("r", 100, sport="http")], f"{RP}[0].sourcePortRange", "not '*', a port or a range"),
    ("§2-port-list-syntax", [rule("r", 100, dport=["80", "8o"])], f"{RP}[0].destinationPortRanges", "8o"),
    ("§2-port-single-or-list-not-both", [rule("r", 100, dport="80", destinationPortRanges=["81"])], f"{RP}[0]", "not both"),
    ("§2-service-tag-known", [rule("r", 100, src="NoSuchTag")], f"{RP}[0].sourceAddressPrefix", "unknown service tag"),
    ("§2-asg-reference-known", [rule("r", 100, dst=None, destinationApplicationSecurityGroups=["nope"])],
     f"{RP}[0].destinationApplicationSecurityGroups[0]", "unknown application security group"),
    ("§2-limit-1000-rules-per-nsg", [rule(f"r{i}", 100 + i) for i in range(1001)], "networkSecurityGroups[0].securityRules",
     "at most 1000"),
    ("§2-limit-4000-prefixes-per-side", [rule("r", 100, src=[f"10.{i // 250}.{i % 250}.0/24" for i in range(4001)])],
     f"{RP}[0]", "at most 4000"),
    ("§2-limit-100-asgs-per-nsg",
     [rule(f"r{i}", 100 + i, dst=None, destinationApplicationSecurityGroups=[f"g{i}-{j}" for j in range(10)]) for i in range(11)],
     "networkSecurityGroups[0]", "at most 100"),
]


@pytest.mark.parametrize("rules,path,message", [r[1:] for r in RULE_ERRORS], ids=[r[0] for r in RULE_ERRORS])
def test_rule_property_errors(rules, path, message):
    """A rule breaking a §2 constraint is rejected, naming the field and the problem."""
    found = problems_of(_with_rules(*rules))
    assert any(p.path == path and message in p.message for p in found), [str(p) for p in found]


def test_limit_20_asgs_per_nic():
    """§2-limit-20-asgs-per-nic: a NIC IP configuration may join at most 20 ASGs."""
    doc = base_state()
    doc["applicationSecurityGroups"] = [{"name": g} for g in _asgs(21)]
    doc["networkInterfaces"][0]["applicationSecurityGroups"] = _asgs(21)
    found = problems_of(doc)
    assert any(p.path == "networkInterfaces[0].applicationSecurityGroups" and "at most 20" in p.message for p in found)


def test_limit_4000_ip_configurations_per_asg():
    """§2-limit-4000-ipconfigs-per-asg: an ASG may hold at most 4,000 IP configurations."""
    doc = base_state()
    doc["virtualNetworks"][0]["subnets"][0]["addressPrefix"] = "10.0.0.0/20"
    doc["applicationSecurityGroups"] = [{"name": "big"}]
    doc["networkInterfaces"] = [{"name": "n1", "subnet": "v1/s1", "applicationSecurityGroups": ["big"],
                                 "ipAddresses": [f"10.0.{4 + i // 250}.{1 + i % 250}" for i in range(4001)]}]
    found = problems_of(doc)
    assert any(p.path == "applicationSecurityGroups[0]" and "at most 4000" in p.message for p in found)


def _rule0(loaded):
    return loaded.state.networkSecurityGroups[0].securityRules[0]


RULE_ACCEPTED = [
    ("§2-priority-100-accepted", [rule("r", 100)], lambda r: r.priority == 100),
    ("§2-priority-4096-accepted", [rule("r", 4096)], lambda r: r.priority == 4096),
    ("§2-name-80-chars-ending-underscore", [rule("a" * 79 + "_", 100)], lambda r: len(r.name) == 80),
    ("§2-description-140-chars", [rule("r", 100, description="d" * 140)], lambda r: len(r.description) == 140),
    ("§2-direction-access-any-case", [rule("r", 100, direction="inbound", access="ALLOW")],
     lambda r: (r.direction, r.access) == (Direction.INBOUND, Access.ALLOW)),
    ("§2-protocol-TCP-upper-case", [rule("r", 100, protocol="TCP")], lambda r: r.protocol is Protocol.TCP),
    ("§2-protocol-icmp", [rule("r", 100, protocol="Icmp")], lambda r: r.protocol is Protocol.ICMP),
    ("§2-protocol-esp", [rule("r", 100, protocol="esp")], lambda r: r.protocol is Protocol.ESP),
    ("§2-protocol-ah", [rule("r", 100, protocol="Ah")], lambda r: r.protocol is Protocol.AH),
    ("§2-protocol-star", [rule("r", 100, protocol="*")], lambda r: r.protocol is Protocol.ANY),
    ("§2-address-one-ip", [rule("r", 100, src="203.0.113.7")], lambda r: r.address_items("source") == ["203.0.113.7"]),
    ("§2-address-list", [rule("r", 100, src=["203.0.113.0/24", "198.51.100.7"])],
     lambda r: r.address_items("source") == ["203.0.113.0/24", "198.51.100.7"]),
    ("§2-address-tag-singular", [rule("r", 100, src="Internet")], lambda r: r.address_items("source") == ["Internet"]),
    ("§2-singular-beside-empty-plural",
     [rule("r", 100, src="*", sourceAddressPrefixes=[], sourcePortRanges=[], destinationPortRanges=[],
           sourceApplicationSecurityGroups=[], destinationAddressPrefixes=[])],
     lambda r: r.port_items("source") == ["*"] and r.address_items("source") == ["*"]),
    ("§2-port-forms", [rule("r", 100, sport="*", dport=["80", "10000-10005"])],
     lambda r: r.port_items("destination") == ["80", "10000-10005"]),
    ("§2-asg-10-per-side", [rule("r", 100, dst=None, destinationApplicationSecurityGroups=_asgs(10))],
     lambda r: len(r.destinationApplicationSecurityGroups) == 10),
    ("§2-asg-reference-by-id", [rule("r", 100, dst=None, destinationApplicationSecurityGroups=[
        {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/applicationSecurityGroups/WebServers"}])],
     lambda r: r.destinationApplicationSecurityGroups == ["WebServers"]),
    ("§2-nested-properties-shape", [{"name": "r", "id": "x/securityRules/r", "etag": "W/1", "properties": {
        "priority": 100, "direction": "Inbound", "access": "Deny", "protocol": "Udp", "provisioningState": "Succeeded",
        "sourceAddressPrefix": "*", "destinationAddressPrefix": "*", "sourcePortRange": "*", "destinationPortRange": "53"}}],
     lambda r: (r.access, r.port_items("destination")) == (Access.DENY, ["53"])),
]


@pytest.mark.parametrize("rules,ok", [r[1:] for r in RULE_ACCEPTED], ids=[r[0] for r in RULE_ACCEPTED])
def test_rule_property_accepted(rules, ok):
    """Every §2 value form Azure accepts loads, with the meaning shown."""
    assert ok(_rule0(load_doc(_with_rules(*rules))))


def test_priority_may_repeat_across_directions():
    """§2-priority-unique-per-direction: 100 inbound and 100 outbound in one NSG are fine."""
    loaded = load_doc(_with_rules(rule("in", 100), rule("out", 100, direction="Outbound")))
    assert [r.priority for r in loaded.state.networkSecurityGroups[0].securityRules] == [100, 100]


def test_flush_connection_parsed():
    """§2-flushConnection: the NSG property is read (default false)."""
    doc = _with_rules(rule("r", 100))
    doc["networkSecurityGroups"].append({"name": "f", "properties": {"flushConnection": True, "securityRules": []}})
    nsgs = load_doc(doc).state.networkSecurityGroups
    assert [n.flushConnection for n in nsgs] == [False, True]


def test_all_problems_reported_together():
    """All pydantic errors of a file are reported in one LoadError, in file order."""
    doc = _with_rules(rule("a", 99), rule("b", 100, direction="Up"), rule("c", 100, src="1.2.3.4/33"),
                      rule("-d", 200))
    found = problems_of(doc)
    paths = {p.path for p in found}
    assert {f"{RP}[0].priority", f"{RP}[1].direction", f"{RP}[2].sourceAddressPrefix", f"{RP}[3].name"} <= paths


def test_cross_reference_problems_reported_together():
    """Reference/uniqueness problems (checked after parsing) are all reported at once."""
    doc = _with_rules(rule("a", 100), rule("b", 100), rule("c", 200, src="NoTag"))
    doc["networkInterfaces"][0]["networkSecurityGroup"] = "missing"
    doc["networkInterfaces"][1]["ipAddresses"] = ["10.0.9.9"]
    found = problems_of(doc)
    assert {f"{RP}[1].priority", f"{RP}[2].sourceAddressPrefix", "networkInterfaces[0].networkSecurityGroup",
            "networkInterfaces[1].ipAddresses[0]"} <= {p.path for p in found}


def test_unknown_tag_hint_mentions_service_tag_files():
    """An unknown tag in a file without service-tag files suggests adding one."""
    found = problems_of(_with_rules(rule("r", 100, dst="Storage.EastUS")))
    assert "serviceTags.files" in found[0].message


def test_classic_tag_names_accepted():
    """§6-classic-names validate: INTERNET, VIRTUAL_NETWORK, AZURE_LOADBALANCER."""
    load_doc(_with_rules(rule("a", 100, src="INTERNET"), rule("b", 110, src="VIRTUAL_NETWORK"),
                         rule("c", 120, src="AZURE_LOADBALANCER")))


def test_unchanged_input_is_not_mutated():
    """Loading does not modify the caller's document."""
    doc = _with_rules(rule("r", 100))
    before = copy.deepcopy(doc)
    load_doc(doc)
    assert doc == before


def test_non_ascii_digits_are_not_numbers():
    """'²' passes str.isdigit() but int() refuses it: a key or a priority written with such a
    digit is a clear problem, never a crash (found by the Azure-export mutation test)."""
    doc = base_state([rule("a", 100)])
    doc["networkSecurityGroups"][0]["securityRules"][0]["priority"] = "²"
    problems = problems_of(doc)
    assert any("priority" in p.path for p in problems)
    doc = base_state([rule("a", 100)])
    doc["networkSecurityGroups"][0]["securityRules"][0]["\u00b2"] = 10 ** 20
    problems = problems_of(doc)
    assert problems and all(isinstance(p.path, str) for p in problems)
