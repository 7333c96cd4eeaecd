"""Azure's public samples (../shared/azure-samples): every JSON file loads, or fails with the
specific "template expressions are not evaluated" message naming the field; the REST examples
of effective rules and IP flow verify give the same verdicts through our engine."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest

from foundation_helpers import SAMPLES, base_state, decided_by, flow, load_doc

from agent.errors import LoadError
from agent.loader import load
from agent.policy import Direction
from agent.semantics import Resolver, evaluate, resolve

SAMPLE_FILES = sorted(SAMPLES.rglob("*.json")) if SAMPLES.is_dir() else []
NET = ipaddress.ip_network

# Files that must load (the rest are ARM templates whose values are expressions).
MUST_LOAD = {
    "azure-cli-recording__test_network_nsg__nsg-create-PUT-201-response.json": ("nsg", ["test-nsg1"]),
    "azure-docs-json-samples__multiplesecurityrules.parameters.json": ("arm-parameters", ["securityRules"]),
    "NetworkInterfaceEffectiveNSGList.json": ("rest-example", ["test-nsg"]),
    "NetworkSecurityGroupCreate.json": ("rest-example", ["testnsg"]),
    "NetworkSecurityGroupList.json": ("rest-example", ["nsg1", "nsg3"]),
    "NetworkSecurityGroupRuleCreate.json": ("rest-example", ["testnsg"]),
    "NetworkSecurityGroupRuleGet.json": ("rest-example", ["testnsg"]),
    "NetworkSecurityGroupRuleList.json": ("rest-example", ["testnsg"]),
    "NetworkWatcherSecurityGroupViewGet.json": ("rest-example", []),
    "ApplicationSecurityGroupCreate.json": ("rest-example", []),
    "ApplicationSecurityGroupGet.json": ("rest-example", []),
    "DefaultSecurityRuleGet.json": ("rest-example", []),
    "NetworkSecurityGroupCreateWithRule.json": ("rest-example", ["testnsg"]),
    "NetworkSecurityGroupGet.json": ("rest-example", ["testnsg"]),
    "NetworkWatcherIpFlowVerify.json": ("rest-example", []),
    "ServiceTags_China_20251028.json": ("service-tags", []),
    "ServiceTags_Public_20190722.trimmed.json": ("service-tags", []),
    "ServiceTags_Public_20251028.selected-tags.json": ("service-tags", []),
    "ServiceTags_Public_20251028.trimmed.json": ("service-tags", []),
}

EXPRESSION_MSG = re.compile(r"^ARM template expression (['\"])(.+)\1: template expressions are not evaluated")


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[p.name for p in SAMPLE_FILES])
def test_sample_loads_or_names_the_template_expression(path):
    """A sample loads as expected, or every problem is the template-expression message, naming
    the field path and the line where that expression is written."""
    try:
        loaded = load(path)
    except LoadError as e:
        assert path.name not in MUST_LOAD, [str(p) for p in e.problems]
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        for p in e.problems:
            m = EXPRESSION_MSG.match(p.message)
            assert m, str(p)
            assert p.path, str(p)
            assert p.line is not None and m.group(2) in lines[p.line - 1], str(p)
        return
    kind, nsgs = MUST_LOAD[path.name]
    assert loaded.kind == kind
    assert [n.name for n in loaded.state.networkSecurityGroups] == nsgs
    if kind == "service-tags":
        assert loaded.tags.tags


def test_every_sample_is_covered():
    """The MUST_LOAD table names only files that exist (guards against renamed samples)."""
    if not SAMPLE_FILES:
        pytest.skip("sample data not present")
    assert set(MUST_LOAD) <= {p.name for p in SAMPLE_FILES}


def test_whole_rule_list_expression_names_the_field(samples_dir):
    """`"securityRules": "[variables('securityRules')]"` fails on that very field."""
    path = samples_dir / "nsg-real-world/azure-docs-json-samples__multiplesecurityrules.json"
    with pytest.raises(LoadError) as e:
        load(path)
    (p,) = e.value.problems
    assert p.path == "resources[0].properties.securityRules"
    assert "template expressions are not evaluated" in p.message and p.line == 41


def test_arm_parameters_file_imported_as_named_nsg(samples_dir):
    """The ARM parameters file's rule list becomes an NSG named after the parameter, and the
    loader says so in a warning."""
    loaded = load(samples_dir / "nsg-real-world/azure-docs-json-samples__multiplesecurityrules.parameters.json")
    (nsg,) = loaded.state.networkSecurityGroups
    assert [(r.name, r.priority, r.port_items("destination")) for r in nsg.securityRules] == [
        ("RDPAllow", 100, ["3389"]), ("HTTPAllow", 200, ["80"])]
    assert any("named 'securityRules'" in w.message for w in loaded.warnings)


def test_rest_example_nsg_name_from_url_parameter(samples_dir):
    """NetworkSecurityGroupCreateWithRule: the request body has no name; the URL parameter
    networkSecurityGroupName supplies it."""
    loaded = load(samples_dir / "rest-api-examples/2025-01-01/NetworkSecurityGroupCreateWithRule.json")
    (nsg,) = loaded.state.networkSecurityGroups
    assert nsg.name == "testnsg" and [r.name for r in nsg.securityRules] == ["rule1"]


# --- REST examples: same verdicts --------------------------------------------------------------


def _state_with_nsgs(loaded, nic_nsg: str, subnet_nsg: str | None = None) -> dict:
    """A desired state: the sample's NSGs, NIC n1 (10.0.1.4) with ``nic_nsg`` attached."""
    doc = base_state()
    doc["networkSecurityGroups"] = [n.model_dump(mode="json", exclude_none=True)
                                    for n in loaded.state.networkSecurityGroups]
    doc["networkInterfaces"][0]["networkSecurityGroup"] = nic_nsg
    if subnet_nsg:
        doc["virtualNetworks"][0]["subnets"][0]["networkSecurityGroup"] = subnet_nsg
    return doc


def _verdict(doc, direction, proto, local, remote, lport, rport, nic="n1"):
    loaded = load_doc(doc)
    return evaluate(resolve(loaded.state, loaded.tags).nics[nic], flow(direction, proto, local, remote, lport, rport))


@pytest.mark.parametrize("example", ["2025-01-01/NetworkSecurityGroupGet.json",
                                     "2025-01-01/NetworkSecurityGroupCreateWithRule.json"],
                         ids=["NetworkSecurityGroupGet", "NetworkSecurityGroupCreateWithRule"])
def test_rest_nsg_rule1_verdicts(samples_dir, example):
    """testnsg's rule1 (Inbound, any protocol, destination port 80, Allow, priority 130)
    allows inbound port 80 from anywhere; other inbound ports from the Internet fall to
    DenyAllInBound. These verdicts follow from the example's NSG alone."""
    doc = _state_with_nsgs(load(samples_dir / "rest-api-examples" / example), "testnsg")
    assert decided_by(_verdict(doc, "Inbound", "tcp", "10.0.1.4", "121.10.1.1", 80, 50000)) == ("Allow", "testnsg", "rule1")
    assert decided_by(_verdict(doc, "Inbound", "udp", "10.0.1.4", "121.10.1.1", 80, 50000)) == ("Allow", "testnsg", "rule1")
    assert decided_by(_verdict(doc, "Inbound", "tcp", "10.0.1.4", "121.10.1.1", 81, 50000)) == ("Deny", "testnsg", "DenyAllInBound")


def test_rest_ip_flow_verify_example(samples_dir):
    """NetworkWatcherIpFlowVerify asks: Outbound TCP 10.2.0.4:80 -> 121.10.1.1:80, answer Allow
    by "Rule1". The example does not include the NSG, so only the access is reproducible: with
    the NSG of the same API version's NetworkSecurityGroupGet (testnsg: inbound rule1 only) on
    the NIC, the flow is allowed (by the default AllowInternetOutBound). The name "Rule1" is not
    determined by any example's data, so it is not asserted; the request's own parameters
    (protocol "TCP" in capitals, ports as strings) are used as written."""
    example = json.loads((samples_dir / "rest-api-examples/2025-01-01/NetworkWatcherIpFlowVerify.json").read_text())
    req = example["parameters"]["parameters"]
    expected = example["responses"]["200"]["body"]
    nsg = load(samples_dir / "rest-api-examples/2025-01-01/NetworkSecurityGroupGet.json")
    doc = _state_with_nsgs(nsg, "testnsg")
    doc["virtualNetworks"][0]["addressSpace"].append("10.2.0.0/16")
    doc["virtualNetworks"][0]["subnets"].append({"name": "s2", "addressPrefix": "10.2.0.0/24"})
    doc["networkInterfaces"].append({"name": "vm1", "subnet": "v1/s2", "ipAddresses": [req["localIPAddress"]],
                                     "networkSecurityGroup": "testnsg"})
    v = _verdict(doc, Direction(req["direction"]).value, req["protocol"], req["localIPAddress"],
                 req["remoteIPAddress"], int(req["localPort"]), int(req["remotePort"]), nic="vm1")
    assert v.access.value == expected["access"]
    assert decided_by(v) == ("Allow", "testnsg", "AllowInternetOutBound")


def test_rest_rule_create_example_verdicts(samples_dir):
    """NetworkSecurityGroupRuleCreate's rule1 (Outbound Deny, 10.0.0.0/8 -> 11.0.0.0/8 port
    8080, any protocol) denies exactly that; port 8081 falls to AllowInternetOutBound."""
    doc = _state_with_nsgs(load(samples_dir / "rest-api-examples/2024-07-01/NetworkSecurityGroupRuleCreate.json"), "testnsg")
    assert decided_by(_verdict(doc, "Outbound", "tcp", "10.0.1.4", "11.1.2.3", 40000, 8080)) == ("Deny", "testnsg", "rule1")
    assert decided_by(_verdict(doc, "Outbound", "tcp", "10.0.1.4", "11.1.2.3", 40000, 8081)) == (
        "Allow", "testnsg", "AllowInternetOutBound")


def _effective_example(samples_dir):
    path = samples_dir / "rest-api-examples/2024-07-01/NetworkInterfaceEffectiveNSGList.json"
    return json.loads(path.read_text()), load(path)


EFFECTIVE_PROBES = [
    # rule1: Tcp 456 -> 6579, 0.0.0.0/32 -> 0.0.0.0/32, Allow, 234
    ("rule1-matches", "Inbound", "tcp", "0.0.0.0", 6579, "0.0.0.0", 456, ("Allow", "rule1")),
    ("rule1-other-source-port", "Inbound", "tcp", "0.0.0.0", 6579, "0.0.0.0", 457, ("Deny", "DenyAllInBound")),
    ("rule1-udp-not-matched", "Inbound", "udp", "0.0.0.0", 6579, "0.0.0.0", 456, ("Deny", "DenyAllInBound")),
    # default-allow-rdp: Tcp any -> 3389, 1.1.1.1/32 -> 0.0.0.0/0, Allow, 1000
    ("default-allow-rdp-matches", "Inbound", "tcp", "10.0.1.4", 3389, "1.1.1.1", 50000, ("Allow", "default-allow-rdp")),
    ("default-allow-rdp-other-source", "Inbound", "tcp", "10.0.1.4", 3389, "1.1.1.2", 50000, ("Deny", "DenyAllInBound")),
    ("default-allow-rdp-other-port", "Inbound", "tcp", "10.0.1.4", 3390, "1.1.1.1", 50000, ("Deny", "DenyAllInBound")),
    # defaultSecurityRules/AllowInternetOutBound: All, 0.0.0.0/0 -> Internet, Allow, 65001
    ("AllowInternetOutBound", "Outbound", "udp", "10.0.1.4", 40000, "32.1.2.3", 53, ("Allow", "AllowInternetOutBound")),
]


@pytest.mark.parametrize("direction,proto,local,lport,remote,rport,expected", [r[1:] for r in EFFECTIVE_PROBES],
                         ids=[r[0] for r in EFFECTIVE_PROBES])
def test_rest_effective_rules_same_verdicts(samples_dir, direction, proto, local, lport, remote, rport, expected):
    """NetworkInterfaceEffectiveNSGList's effectiveSecurityRules, loaded as NSG test-nsg, give
    each probing flow the verdict of the rule it was built to hit (and miss when off by one)."""
    _, loaded = _effective_example(samples_dir)
    doc = _state_with_nsgs(loaded, "test-nsg")
    v = _verdict(doc, direction, proto, local, remote, lport, rport)
    assert (v.access.value, v.deciding.rule.name) == expected and v.deciding.nsg == "test-nsg"


def test_rest_example_internet_expansion_is_not_azures_recorded_answer(samples_dir):
    """The REST example (documentation) lists 32.0.0.0/3 and 4.0.0.0/6 for Internet; Azure's
    recorded answer has narrower blocks there (e.g. 4.128.0.0/12 is left out) and wins. The
    example's other prefixes agree with it."""
    example, _ = _effective_example(samples_dir)
    rules = example["responses"]["200"]["body"]["value"][0]["effectiveSecurityRules"]
    expanded = [r for r in rules if r["name"].endswith("AllowInternetOutBound")][0]["expandedDestinationAddressPrefix"]
    internet = [q for q in Resolver(load_doc(base_state()).state).internet() if q.version == 4]
    inside = {p for p in expanded if any(NET(p).subnet_of(q) for q in internet)}
    assert inside == {"1.0.0.0/8", "2.0.0.0/7"}
    assert not any(NET("4.128.0.0/12").subnet_of(q) for q in internet)


