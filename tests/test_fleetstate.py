"""The fleet's data model (sources/fleetstate.py), without etcd: a state split into keys and
rebuilt gives the same state; a change touches only its keys; one host's part changes only
when something its ruleset depends on changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nsg_agent.desired import loader
from nsg_agent.desired.model import desired_state_schema
from nsg_agent.errors import LoadError
from nsg_agent.sources import fleetstate as fs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

FLEET = """\
virtualNetworks:
  - name: fleet
    addressSpace: [10.77.0.0/16]
    subnets:
      - {name: a, addressPrefix: 10.77.1.0/24, networkSecurityGroup: a-nsg}
      - {name: b, addressPrefix: 10.77.2.0/24}
applicationSecurityGroups: [{name: Web}, {name: Db}]
networkInterfaces:
  - {name: h1-nic, host: h1, interface: eth0, subnet: fleet/a, ipAddresses: [10.77.1.11],
     networkSecurityGroup: web-nsg, applicationSecurityGroups: [Web]}
  - {name: h2-nic, host: h2, interface: eth0, subnet: fleet/a, ipAddresses: [10.77.1.12],
     networkSecurityGroup: db-nsg, applicationSecurityGroups: [Db]}
  - {name: h3-nic, host: h3, interface: eth0, subnet: fleet/b, ipAddresses: [10.77.2.13], networkSecurityGroup: other-nsg}
  - {name: extra, subnet: fleet/b, ipAddresses: [10.77.2.99], applicationSecurityGroups: []}
networkSecurityGroups:
  - name: a-nsg
  - name: web-nsg
    securityRules:
      - {name: web, priority: 100, direction: Inbound, access: Allow, protocol: Tcp, sourceAddressPrefix: Internet,
         sourcePortRange: '*', destinationApplicationSecurityGroups: [Web], destinationPortRange: '8080'}
  - name: db-nsg
    securityRules:
      - {name: from-web, priority: 100, direction: Inbound, access: Allow, protocol: Tcp,
         sourceApplicationSecurityGroups: [Web], sourcePortRange: '*', destinationAddressPrefix: '*', destinationPortRange: '5432'}
  - name: other-nsg
    securityRules:
      - {name: ssh, priority: 100, direction: Inbound, access: Allow, protocol: Tcp, sourceAddressPrefix: VirtualNetwork,
         sourcePortRange: '*', destinationAddressPrefix: '*', destinationPortRange: '22'}
"""


def _load(tmp_path: Path, text: str):
    p = tmp_path / f"s{abs(hash(text))}.yaml"
    p.write_text(text)
    return loader.load(p)


def _keys(loaded) -> dict[str, bytes]:
    return fs.encode(loaded, lambda p: Path(p).read_bytes())


def _doc(keys: dict[str, bytes], tmp_path: Path) -> fs.Document:
    def tag_path(key: str, role: str, raw: bytes) -> str:
        p = tmp_path / (key.replace("/", "_") + ".json")
        p.write_bytes(raw)
        return str(p)

    return fs.document(keys, tag_path)


def _strip_tag_paths(keys: dict[str, bytes]) -> dict[str, bytes]:
    out = {}
    for k, v in keys.items():
        if k.startswith(fs.STATE + "servicetags/"):
            d = json.loads(v)
            d.pop("name")
            v = fs.canonical(d)
        out[k] = v
    return out


@pytest.mark.parametrize("name", ["lab-demo.yaml", "hub-spoke.yaml", "port80-subnet-nic.yaml", "webservers-asg.yaml"])
def test_keys_round_trip_through_the_loader(name, tmp_path):
    loaded = loader.load(EXAMPLES / name)
    keys = _keys(loaded)
    d = _doc(keys, tmp_path)
    again = loader.load_bytes(fs.canonical(d.doc), tmp_path / "etcd.json")
    assert _strip_tag_paths(_keys(again)) == _strip_tag_paths(keys)
    assert again.state.networkInterfaces and len(again.state.networkInterfaces) == len(loaded.state.networkInterfaces)
    assert sorted(again.tags.change_numbers.values()) == sorted(loaded.tags.change_numbers.values())
    assert sorted(again.tags.tags) == sorted(loaded.tags.tags)


def test_one_key_per_object_and_the_asg_membership_in_the_asg_key(tmp_path):
    keys = _keys(_load(tmp_path, FLEET))
    assert sorted(keys) == sorted(["state/settings", "state/vnets/fleet", "state/subnets/fleet/a",
                                   "state/subnets/fleet/b", "state/asgs/Web", "state/asgs/Db",
                                   "state/nics/h1-nic", "state/nics/h2-nic", "state/nics/h3-nic",
                                   "state/nics/extra", "state/nsgs/a-nsg", "state/nsgs/web-nsg",
                                   "state/nsgs/db-nsg", "state/nsgs/other-nsg"])
    assert json.loads(keys["state/asgs/Web"]) == {"name": "Web", "members": ["h1-nic"]}
    assert "applicationSecurityGroups" not in json.loads(keys["state/nics/h1-nic"])
    assert json.loads(keys["state/nics/h1-nic"])["host"] == "h1"
    assert "subnets" not in json.loads(keys["state/vnets/fleet"])


FLEET = FLEET.replace("applicationSecurityGroups: []}", "applicationSecurityGroups: []}")


def test_a_membership_change_costs_one_key(tmp_path):
    old = _keys(_load(tmp_path, FLEET))
    new = _keys(_load(tmp_path, FLEET.replace("ipAddresses: [10.77.2.99], applicationSecurityGroups: []",
                                              "ipAddresses: [10.77.2.99], applicationSecurityGroups: [Web]")))
    d = fs.diff(old, new)
    assert sorted(d.put) == ["state/asgs/Web"] and d.delete == []
    gone = {k: v for k, v in new.items() if k != "state/nsgs/a-nsg"}
    assert fs.diff(new, gone).delete == ["state/nsgs/a-nsg"]
    assert fs.diff(new, new).empty


def test_the_digest_covers_every_state_key(tmp_path):
    keys = _keys(_load(tmp_path, FLEET))
    d = fs.state_digest(keys)
    assert fs.state_digest({**keys, fs.PUBLISHED: b"{}"}) == d  # the marker is not part of it
    assert fs.state_digest({**keys, "state/nsgs/x": b"{}"}) != d
    assert fs.state_digest({k: v for k, v in keys.items() if k != "state/nics/extra"}) != d


def _projection(tmp_path: Path, text: str, host: str) -> bytes:
    d = _doc(_keys(_load(tmp_path, text)), tmp_path)
    part = fs.project(d.doc, host)
    loader.load_bytes(fs.canonical(part), tmp_path / "part.json")  # the cut stays a valid state
    return fs.canonical(part)


def test_a_host_part_changes_only_with_what_its_rules_need(tmp_path):
    joined = FLEET.replace("ipAddresses: [10.77.2.99], applicationSecurityGroups: []",
                           "ipAddresses: [10.77.2.99], applicationSecurityGroups: [Web]")
    # h1 (its rule names Web) and h2 (its rule names Web) see the new member; h3 does not
    for host, affected in (("h1", True), ("h2", True), ("h3", False)):
        assert (_projection(tmp_path, FLEET, host) != _projection(tmp_path, joined, host)) is affected, host
    # an NSG rule change on h3 leaves h1 and h2 byte-identical
    edited = FLEET.replace("destinationPortRange: '22'", "destinationPortRange: '2222'")
    assert _projection(tmp_path, FLEET, "h1") == _projection(tmp_path, edited, "h1")
    assert _projection(tmp_path, FLEET, "h3") != _projection(tmp_path, edited, "h3")


def test_a_host_part_enforces_only_its_own_nics(tmp_path):
    d = _doc(_keys(_load(tmp_path, FLEET)), tmp_path)
    part = loader.load_bytes(fs.canonical(fs.project(d.doc, "h2")), tmp_path / "p.json")
    with_iface = [n.name for n in part.state.networkInterfaces if n.interface]
    assert with_iface == ["h2-nic"]
    # h1-nic stays as an ASG member (no interface, no NSG): the Web set needs its address
    h1 = part.state.nic("h1-nic")
    assert h1 is not None and h1.networkSecurityGroup is None and h1.applicationSecurityGroups == ["Web"]
    assert part.state.nic("h3-nic") is None


def test_interfaces_are_unique_per_host(tmp_path):
    _load(tmp_path, FLEET)  # three eth0 on three hosts
    with pytest.raises(LoadError) as e:
        _load(tmp_path, FLEET.replace("host: h2,", "host: h1,"))
    assert "interface 'eth0' is already NIC 'h1-nic' on host 'h1'" in str(e.value)


def test_the_host_field_is_checked_and_in_the_schema(tmp_path):
    with pytest.raises(LoadError) as e:
        _load(tmp_path, FLEET.replace("host: h3,", "host: 'bad host',"))
    assert "host 'bad host' must be a host name" in str(e.value)
    nic = desired_state_schema()["$defs"]["NetworkInterface"]["properties"]
    assert "host" in nic


def test_problem_paths_name_the_key(tmp_path):
    d = _doc(_keys(_load(tmp_path, FLEET)), tmp_path)
    i = next(i for i, n in enumerate(d.doc["networkSecurityGroups"]) if n["name"] == "db-nsg")
    assert fs.problem_key(f"networkSecurityGroups[{i}].securityRules[0].priority", d.origin) == (
        "state/nsgs/db-nsg", "securityRules[0].priority")
    assert fs.problem_key("serviceTags.files", d.origin) is None


def test_malformed_keys_are_named(tmp_path):
    keys = _keys(_load(tmp_path, FLEET))
    with pytest.raises(fs.StateFormatError) as e:
        _doc({**keys, "state/nsgs/web-nsg": b"{not json"}, tmp_path)
    assert e.value.key == "state/nsgs/web-nsg"
    with pytest.raises(fs.StateFormatError):
        _doc({**keys, "state/bogus/x": b"{}"}, tmp_path)
    with pytest.raises(fs.StateFormatError):
        _doc({k: v for k, v in keys.items() if k != "state/vnets/fleet"}, tmp_path)


def test_service_tag_blobs_carry_their_change_number(tmp_path):
    raw = json.dumps({"changeNumber": 42, "cloud": "Public", "values": []}).encode()
    b = fs.blob(raw, "file", "/x/ServiceTags_Public.json")
    assert b["changeNumber"] == 42 and b["name"] == "ServiceTags_Public.json"
    assert fs.blob_bytes(b) == raw
    with pytest.raises(ValueError):
        fs.blob_bytes({**b, "sha256": "0" * 64})
