"""The loader: file formats, Azure shapes, line numbers, and (hypothesis) round trips and
corruptions that must end in a LoadError with problems, never another exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundation_helpers import EXAMPLES, base_state, load_doc, rule
from nsg_agent.desired.loader import load, load_bytes
from nsg_agent.desired.model import DesiredState
from nsg_agent.errors import LoadError


def _load_text(text: str, name: str):
    return load_bytes(text.encode(), Path(name))


def _errors(text: str, name: str = "f.yaml"):
    with pytest.raises(LoadError) as e:
        _load_text(text, name)
    return e.value.problems


# --- formats and shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_load(path):
    """Every example file validates without warnings (the README's claim)."""
    loaded = load(path)
    assert loaded.state.networkInterfaces and not loaded.warnings


@pytest.mark.parametrize("name", ["webservers-asg.yaml", "port80-subnet-nic.yaml", "hub-spoke.yaml"])
def test_seed_examples_are_lab_ready(name):
    """The seed examples name an interface per NIC, use 10.x VNets and lab hosts only in
    203.0.113.0/24 or 198.51.100.0/24."""
    import ipaddress
    state = load(EXAMPLES / name).state
    assert all(n.interface and len(n.interface) <= 15 for n in state.networkInterfaces)
    assert all(ipaddress.ip_network(p).subnet_of(ipaddress.ip_network("10.0.0.0/8"))
               for v in state.virtualNetworks for p in v.addressSpace)
    allowed = [ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("198.51.100.0/24")]
    hosts = state.lab.externalHosts
    assert hosts and all(any(ipaddress.ip_address(h.address) in n for n in allowed) for h in hosts)


def test_yaml_and_json_give_the_same_model():
    """The same document as YAML and as JSON loads to the same DesiredState."""
    doc = base_state(subnet_rules=[rule("r", 100, dport=["80", "443"])])
    assert _load_text(yaml.safe_dump(doc), "a.yaml").state == _load_text(json.dumps(doc), "a.json").state


def test_nested_arm_shape_equals_flat_shape():
    """An ARM resource (properties, ids, read-only fields) loads like the flat shape."""
    flat = {"name": "nsg", "securityRules": [rule("r", 100, protocol="Tcp", dport="22")]}
    nested = {"type": "Microsoft.Network/networkSecurityGroups", "name": "nsg", "etag": "W/1",
              "id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/networkSecurityGroups/nsg",
              "properties": {"provisioningState": "Succeeded", "resourceGuid": "x", "defaultSecurityRules": [],
                             "securityRules": [{"name": "r", "id": "…/securityRules/r", "type": "x",
                                                "properties": {k: v for k, v in flat["securityRules"][0].items()
                                                               if k != "name"}}]}}
    a = _load_text(json.dumps(flat), "a.json").state.networkSecurityGroups[0]
    b = _load_text(json.dumps(nested), "b.json").state.networkSecurityGroups[0]
    assert a.securityRules[0].model_dump(exclude={"id", "type"}) == b.securityRules[0].model_dump(exclude={"id", "type"})


def test_nsg_list_response_loads():
    """A list response ({"value": [nsg, ...]}) loads every NSG."""
    doc = {"value": [{"name": "a", "properties": {"securityRules": []}}, {"name": "b", "properties": {"securityRules": []}}]}
    assert [n.name for n in _load_text(json.dumps(doc), "l.json").state.networkSecurityGroups] == ["a", "b"]


def test_empty_file_is_an_empty_state():
    """An empty YAML file is a valid, empty desired state."""
    assert _load_text("", "e.yaml").state == DesiredState()


def test_azure_vnet_and_subnet_ids():
    """VNet addressSpace in Azure's nested form and a NIC subnet given as an Azure id load."""
    doc = base_state()
    doc["virtualNetworks"][0]["addressSpace"] = {"addressPrefixes": ["10.0.0.0/16"]}
    doc["networkInterfaces"][0]["subnet"] = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v1/subnets/s1"
    loaded = load_doc(doc)
    assert loaded.state.networkInterfaces[0].subnet == "v1/s1"
    assert loaded.state.virtualNetworks[0].addressSpace == ["10.0.0.0/16"]


# --- problems: where and what ---------------------------------------------------------------------

ARM = """{
  "resources": [
    {
      "type": "Microsoft.Network/networkSecurityGroups",
      "name": "nsg1",
      "properties": {
        "securityRules": [
          {"name": "ok", "properties": {"priority": 100, "direction": "Inbound", "access": "Allow",
            "protocol": "Tcp", "sourceAddressPrefix": "*", "destinationAddressPrefix": "*",
            "sourcePortRange": "*", "destinationPortRange": "22"}},
          {
            "name": "bad",
            "properties": {
              "direction": "Inbound",
              "access": "Allow",
              "priority": 5000,
              "protocol": "Tcp",
              "sourceAddressPrefix": "*",
              "destinationAddressPrefix": "*",
              "destinationPortRange": "[parameters('port')]"
            }
          }
        ]
      }
    }
  ]
}
"""


def test_nested_template_errors_point_at_the_right_line():
    """Errors in an ARM template's nested rule name the path as written and its line."""
    found = {p.path: p for p in _errors(ARM, "t.json")}
    prio = found["resources[0].properties.securityRules[1].properties.priority"]
    assert prio.line == 16 and "outside 100..4096" in prio.message
    port = found["resources[0].properties.securityRules[1].properties.destinationPortRange"]
    assert port.line == 20 and "cannot be evaluated: parameters() parameter 'port' has no value" in port.message


def test_missing_nested_field_reported_under_properties():
    """A required field missing from a nested rule is reported where it belongs (properties)."""
    text = ARM.replace('"priority": 5000,', "")
    found = {p.path for p in _errors(text, "t.json")}
    assert "resources[0].properties.securityRules[1].properties.priority" in found


def test_yaml_line_numbers_and_file_name():
    """YAML problems carry the file name, the 1-based line of the field and the field path."""
    text = yaml.safe_dump(base_state(subnet_rules=[rule("r", 100), rule("s", 4097)]), sort_keys=False)
    (p,) = _errors(text, "state.yaml")
    assert p.file == "state.yaml" and p.path == "networkSecurityGroups[0].securityRules[1].priority"
    assert text.splitlines()[p.line - 1].strip() == "priority: 4097"


def test_many_errors_all_reported_in_file_order():
    """A file with many mistakes reports each one, sorted by line."""
    rules = [rule(f"r{i}", 5000 + i) for i in range(12)]
    text = yaml.safe_dump(base_state(subnet_rules=rules), sort_keys=False)
    found = _errors(text)
    assert len(found) == 12
    assert [p.line for p in found] == sorted(p.line for p in found)


SYNTAX = [
    ("invalid-json", "{\n  \"a\": 1,\n  oops\n}", "f.json", "invalid JSON", 3),
    ("invalid-yaml", "virtualNetworks:\n  - name: a\n   bad: [\n", "f.yaml", "invalid YAML", None),
    ("top-level-list", "- a\n- b\n", "f.yaml", "not an Azure resource this importer knows", 1),
    ("unknown-document", "foo: 1\n", "f.yaml", "not a desired-state file", 1),
    ("wrong-type-list", "virtualNetworks: 5\n", "f.yaml", "valid list", 1),
]


@pytest.mark.parametrize("text,name,message,line", [r[1:] for r in SYNTAX], ids=[r[0] for r in SYNTAX])
def test_syntax_and_shape_errors(text, name, message, line):
    """Unparseable or unrecognisable input is a LoadError with a clear first problem."""
    (p, *_) = _errors(text, name)
    assert message in p.message
    if line is not None:
        assert p.line == line


def test_not_utf8():
    """Binary input is reported, not a UnicodeDecodeError."""
    with pytest.raises(LoadError, match="not UTF-8"):
        load_bytes(b"\xff\xfe\x00garbage", Path("b.yaml"))


def test_missing_file_and_service_tag_file(tmp_path):
    """A missing state file or service-tag file is a problem naming the file."""
    with pytest.raises(LoadError, match="cannot read file"):
        load(tmp_path / "nope.yaml")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"serviceTags": {"files": ["gone.json"]}}))
    with pytest.raises(LoadError, match="cannot read service-tag file"):
        load(tmp_path / "s.yaml")


def test_warnings_for_unused_objects():
    """An NSG associated with nothing and an ASG without members are warnings, not errors."""
    doc = base_state()
    doc["networkSecurityGroups"] = [{"name": "lonely"}]
    doc["applicationSecurityGroups"] = [{"name": "empty"}]
    msgs = [w.message for w in load_doc(doc).warnings]
    assert any("not associated" in m for m in msgs) and any("no member" in m for m in msgs)


# --- hypothesis: round trips ----------------------------------------------------------------------

NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,10}[A-Za-z0-9_]", fullmatch=True)
PORT = st.one_of(st.just("*"), st.integers(0, 65535).map(str),
                 st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(lambda t: f"{min(t)}-{max(t)}"))
PREFIX = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(8, 32)).map(
    lambda t: str(__import__("ipaddress").ip_network(f"{t[0]}.{t[1]}.0.0/{t[2]}", strict=False)))
ADDRESS = st.one_of(st.just("*"), st.sampled_from(["Internet", "VirtualNetwork", "AzureLoadBalancer", "INTERNET"]),
                    PREFIX, st.lists(PREFIX, min_size=1, max_size=4))


@st.composite
def rules(draw, n_max=6):
    n = draw(st.integers(0, n_max))
    names = draw(st.lists(NAME, min_size=n, max_size=n, unique_by=str.lower))
    prios = draw(st.lists(st.integers(100, 4096), min_size=n, max_size=n, unique=True))
    out = []
    for name, prio in zip(names, prios):
        out.append(rule(name, prio,
                        direction=draw(st.sampled_from(["Inbound", "Outbound", "inbound"])),
                        access=draw(st.sampled_from(["Allow", "Deny", "DENY"])),
                        protocol=draw(st.sampled_from(["Tcp", "Udp", "Icmp", "Esp", "Ah", "*", "TCP"])),
                        src=draw(ADDRESS), dst=draw(ADDRESS),
                        sport=draw(st.one_of(PORT, st.lists(PORT, min_size=1, max_size=3))),
                        dport=draw(st.one_of(PORT, st.lists(PORT, min_size=1, max_size=3)))))
    return out


@st.composite
def desired_states(draw):
    """Valid desired states: 1-3 VNets 10.<v>.0.0/16, subnets 10.<v>.<s>.0/24, NICs .4 upwards."""
    n_nsgs = draw(st.integers(0, 3))
    nsgs = [{"name": f"nsg{i}", "securityRules": draw(rules())} for i in range(n_nsgs)]
    nsg_ref = st.one_of(st.none(), st.sampled_from([n["name"] for n in nsgs])) if nsgs else st.none()
    vnets, nics = [], []
    for v in range(draw(st.integers(1, 3))):
        subnets = []
        for s in range(draw(st.integers(1, 3))):
            sub = {"name": f"s{s}", "addressPrefix": f"10.{v}.{s}.0/24"}
            if (ref := draw(nsg_ref)) is not None:
                sub["networkSecurityGroup"] = ref
            subnets.append(sub)
            for k in range(draw(st.integers(0, 2))):
                nic = {"name": f"n{v}-{s}-{k}", "subnet": f"v{v}/s{s}", "ipAddresses": [f"10.{v}.{s}.{4 + k}"],
                       "interface": f"e{v}{s}{k}"}
                if (ref := draw(nsg_ref)) is not None:
                    nic["networkSecurityGroup"] = ref
                nics.append(nic)
        vnets.append({"name": f"v{v}", "addressSpace": [f"10.{v}.0.0/16"], "subnets": subnets,
                      "onPremisesPrefixes": draw(st.sampled_from([[], ["172.16.0.0/16"]]))})
    if len(vnets) > 1 and draw(st.booleans()):
        vnets[0]["peerings"] = ["v1"]
    doc = {"virtualNetworks": vnets, "networkInterfaces": nics, "networkSecurityGroups": nsgs,
           "platform": {"outboundSmtp": draw(st.sampled_from(["blocked", "allowed"]))},
           "lab": {"externalHosts": [{"name": "c", "address": "203.0.113.10"}]}}
    return doc


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(desired_states())
def test_round_trip_yaml_and_json(doc):
    """Any valid state dumped as YAML or JSON loads to the model built directly from it, and
    dumping that model and loading it again gives the same model."""
    expected = DesiredState.model_validate(doc)
    from_yaml = _load_text(yaml.safe_dump(doc), "r.yaml").state
    from_json = _load_text(json.dumps(doc), "r.json").state
    assert from_yaml == expected and from_json == expected
    again = _load_text(json.dumps(from_json.model_dump(mode="json", exclude_none=True)), "again.json").state
    assert again == expected


def _rule_paths(doc):
    return [(i, j) for i, n in enumerate(doc["networkSecurityGroups"]) for j in range(len(n["securityRules"]))]


@st.composite
def corrupted(draw):
    """A valid state with one targeted corruption that must be rejected."""
    doc = draw(desired_states())
    kind = draw(st.sampled_from(["delete-required", "wrong-type", "priority-range", "bad-cidr",
                                 "garbage-enum", "bad-port", "nic-ip"]))
    paths = _rule_paths(doc)
    if kind in ("delete-required", "wrong-type", "priority-range", "garbage-enum", "bad-port") and paths:
        i, j = draw(st.sampled_from(paths))
        r = doc["networkSecurityGroups"][i]["securityRules"][j]
        if kind == "delete-required":
            del r[draw(st.sampled_from(["name", "priority", "direction", "access", "protocol"]))]
        elif kind == "wrong-type":
            field = draw(st.sampled_from(["priority", "direction", "sourcePortRanges", "name"]))
            # [1, 2] is a valid port list (ports as numbers, as an ARM int parameter gives them)
            r[field] = draw(st.sampled_from([{"x": 1}, 3.5, True] + ([] if field == "sourcePortRanges" else [[1, 2]])))
        elif kind == "priority-range":
            r["priority"] = draw(st.one_of(st.integers(max_value=99), st.integers(min_value=4097)))
        elif kind == "garbage-enum":
            r[draw(st.sampled_from(["direction", "access", "protocol"]))] = draw(
                st.text(min_size=1, max_size=8).filter(lambda t: t.strip().lower() not in (
                    "inbound", "outbound", "allow", "deny", "tcp", "udp", "icmp", "esp", "ah", "*", "any", "all")))
        else:
            r.pop("destinationPortRanges", None)
            r["destinationPortRange"] = draw(st.sampled_from(["65536", "80-", "-1", "x", "90-80", "1,2"]))
    elif kind == "nic-ip" and doc["networkInterfaces"]:
        doc["networkInterfaces"][0]["ipAddresses"] = [draw(st.sampled_from(["10.200.0.1", "999.1.1.1", "fe80::zz"]))]
    else:
        sub = doc["virtualNetworks"][0]["subnets"][0]
        sub["addressPrefix"] = draw(st.sampled_from(["10.0.0.1/24", "10.0.0.0/33", "ten/8", "11.0.0.0/24", ""]))
    return doc


@FAST
@given(corrupted())
def test_corruptions_are_load_errors(doc):
    """A targeted corruption (missing field, wrong type, bad priority/CIDR/enum/port/IP) is
    rejected with at least one problem naming a field; never another exception."""
    for text, name in ((yaml.safe_dump(doc), "c.yaml"), (json.dumps(doc), "c.json")):
        with pytest.raises(LoadError) as e:
            _load_text(text, name)
        assert e.value.problems and all(p.message for p in e.value.problems)


@FAST
@given(desired_states(), st.data())
def test_garbage_and_truncation_never_crash(doc, data):
    """Truncated text, inserted garbage and random bytes either load or raise LoadError."""
    text = data.draw(st.sampled_from([yaml.safe_dump(doc), json.dumps(doc, indent=1)]))
    name = data.draw(st.sampled_from(["g.yaml", "g.json"]))
    cut = data.draw(st.integers(0, len(text)))
    junk = data.draw(st.text(max_size=12))
    variants = [text[:cut], text[:cut] + junk + text[cut:]]
    for v in variants:
        try:
            _load_text(v, name)
        except LoadError as e:
            assert e.problems
    raw = data.draw(st.binary(max_size=64))
    try:
        load_bytes(raw, Path(name))
    except LoadError as e:
        assert e.problems
