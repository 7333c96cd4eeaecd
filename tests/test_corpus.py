"""Realistic exports in every shape the importers read (tests/corpus/), each describing the
same network as tests/corpus/flat.yaml: loaded alone or together, they give the same IP flow
verify verdicts as the flat file.

The exports (written in Azure's shapes, with ids, etags, provisioningState, default rules):
- nsg-list.json      ``az network nsg list``: a top-level array, NSGs with ``subnets`` /
                     ``networkInterfaces`` back-references (web1-nic-nsg without its rules)
- rule-list.json     ``az network nsg rule list --nsg-name web1-nic-nsg``: the NSG from the ids
- vnet-list.json     ``{"value": [...]}`` of VNets: hub<->spoke peered on both sides, hub->spoke2
                     on one side only (Initiated), subnets without NSGs (they come from the
                     back-references)
- nic-list.json      ``az network nic list``: web1 with two ipConfigurations and an ASG
- asg-list.json      ``{"value": [...]}`` of ASGs
- route-table.json   ``az network route-table show`` with its ``subnets`` back-reference
- group-export.json  ``az group export``-style template: parameters with defaultValue,
                     variables, concat/format/resourceId/toLower/string, child securityRules /
                     subnets / virtualNetworkPeerings resources, a property copy loop for rules,
                     a resource copy loop for NICs, skipped VM and public IP resources
- effective-nsg-web1.json  the NetworkInterfaceEffectiveNSGList of NIC web1 (as
                     ``effective-rules --json`` writes it, Azure's shape) with topology.yaml
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foundation_helpers import check, decided_by
from nsg_agent.cli.main import main
from nsg_agent.desired.loader import load

CORPUS = Path(__file__).parent / "corpus"

# (NIC, direction, protocol, local IP, local port, remote IP, remote port)
FLOWS = [
    ("web1", "Inbound", "tcp", "10.1.1.4", 443, "203.0.113.7", 50000),   # Internet -> web-asg 443
    ("web1", "Inbound", "tcp", "10.1.1.5", 443, "198.51.100.9", 50000),  # second ipconfig
    ("web1", "Inbound", "tcp", "10.1.1.4", 80, "203.0.113.7", 50000),    # DenyAllInBound
    ("web1", "Inbound", "tcp", "10.1.1.4", 22, "10.2.0.4", 50000),       # deny-spoke-ssh at subnet
    ("web1", "Inbound", "tcp", "10.1.1.4", 3389, "10.2.0.4", 50000),     # peered spoke: VNet
    ("web1", "Inbound", "tcp", "10.1.1.4", 3389, "10.3.0.4", 50000),     # one-sided peering: not VNet
    ("web1", "Inbound", "udp", "10.1.1.4", 53, "10.1.2.4", 50000),       # same VNet
    ("web1", "Outbound", "tcp", "10.1.1.4", 50000, "203.0.113.7", 445),  # deny-smb-out
    ("web1", "Outbound", "udp", "10.1.1.4", 50000, "203.0.113.7", 53),   # deny-udp-out (NIC)
    ("web1", "Outbound", "tcp", "10.1.1.4", 50000, "198.51.100.1", 443), # AllowInternetOutBound
    ("web1", "Outbound", "tcp", "10.1.1.4", 50000, "10.3.0.4", 22),      # spoke2: neither VNet nor Internet
    ("app1", "Inbound", "tcp", "10.1.2.4", 8443, "10.1.1.4", 50000),     # web-asg -> app-asg
    ("app1", "Inbound", "tcp", "10.1.2.4", 8445, "10.1.1.4", 50000),
    ("app1", "Inbound", "tcp", "10.1.2.4", 443, "203.0.113.7", 50000),   # app1 not in web-asg
    ("spoke-vm", "Inbound", "tcp", "10.2.0.4", 22, "10.1.1.4", 50000),   # no NSG: allowed
    ("spoke2-vm", "Outbound", "tcp", "10.3.0.4", 50000, "10.1.1.4", 22),
]


def _verdicts(loaded, flows=FLOWS):
    return [decided_by(check(loaded, nic, d, p, local, remote, lport, rport))
            for nic, d, p, local, lport, remote, rport in flows]


@pytest.fixture(scope="module")
def flat():
    return load(CORPUS / "flat.yaml")


def test_flat_verdicts_are_the_intended_ones(flat):
    """The reference answers themselves (so that equal verdicts mean something)."""
    assert _verdicts(flat) == [
        ("Allow", "web1-nic-nsg", "allow-https"), ("Allow", "web1-nic-nsg", "allow-https"),
        ("Deny", "web-nsg", "DenyAllInBound"), ("Deny", "web-nsg", "deny-spoke-ssh"),
        ("Allow", "web1-nic-nsg", "AllowVnetInBound"), ("Deny", "web-nsg", "DenyAllInBound"),
        ("Allow", "web1-nic-nsg", "AllowVnetInBound"), ("Deny", "web-nsg", "deny-smb-out"),
        ("Deny", "web1-nic-nsg", "deny-udp-out"), ("Allow", "web-nsg", "AllowInternetOutBound"),
        ("Deny", "web1-nic-nsg", "DenyAllOutBound"), ("Allow", "web-nsg", "allow-web-to-app"),
        ("Allow", "web-nsg", "AllowVnetInBound"), ("Deny", "web-nsg", "DenyAllInBound"),
        ("Allow", None, None), ("Allow", None, None)]


EXPORT_SETS = {
    "az-lists": ["vnet-list.json", "nic-list.json", "asg-list.json", "nsg-list.json", "rule-list.json",
                 "route-table.json"],
    "group-export": ["group-export.json"],
    "topology-plus-nsg-exports": ["topology.yaml", "nsg-list.json", "rule-list.json"],
}


@pytest.mark.parametrize("files", list(EXPORT_SETS.values()), ids=list(EXPORT_SETS))
def test_exports_give_the_flat_verdicts(flat, files):
    loaded = load([CORPUS / f for f in files])
    assert _verdicts(loaded) == _verdicts(flat)
    assert _shape(loaded) == _shape(flat)


def _shape(loaded):
    s = loaded.state
    return ({v.name: (tuple(v.addressSpace), tuple((sub.name, sub.addressPrefix, sub.networkSecurityGroup, sub.routeTable)
                                                  for sub in v.subnets),
                      tuple(sorted((p.remote, p.peeringState or "Connected") for p in v.peerings)))
             for v in s.virtualNetworks},
            {n.name: (n.subnet, tuple(n.ipAddresses), n.networkSecurityGroup, tuple(n.applicationSecurityGroups))
             for n in s.networkInterfaces},
            {g.name: sorted(r.name for r in g.securityRules) for g in s.networkSecurityGroups},
            {t.name: [(r.addressPrefix, r.nextHopType, r.nextHopIpAddress) for r in t.routes] for t in s.routeTables})


def test_group_export_warns_about_skipped_resources_in_one_warning():
    loaded = load(CORPUS / "group-export.json")
    skipped = [w for w in loaded.warnings if w.message.startswith("skipped resources")]
    assert len(skipped) == 1
    assert "Microsoft.Compute/virtualMachines" in skipped[0].message
    assert "Microsoft.Network/publicIPAddresses" in skipped[0].message


def test_rule_list_alone_takes_the_nsg_from_the_ids():
    loaded = load(CORPUS / "rule-list.json")
    (nsg,) = loaded.state.networkSecurityGroups
    assert nsg.name == "web1-nic-nsg" and [r.name for r in nsg.securityRules] == [
        "allow-ssh-from-spoke", "allow-https", "deny-udp-out"]


def test_rule_list_without_ids_needs_nsg_option(tmp_path):
    rules = json.loads((CORPUS / "rule-list.json").read_text())
    for r in rules:
        del r["id"]
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    from nsg_agent.errors import LoadError
    with pytest.raises(LoadError) as e:
        load(path)
    assert "give the NSG with --nsg NAME" in e.value.problems[0].message
    loaded = load(path, nsg="my-nsg")
    assert [n.name for n in loaded.state.networkSecurityGroups] == ["my-nsg"]


def test_effective_nsg_list_with_topology_gives_web1s_verdicts(flat):
    """The effective NSGs of web1 (subnet NSG by its subnet association, NIC NSG by its NIC
    association; prefixes expanded) with the topology: web1's verdicts are the flat file's."""
    loaded = load([CORPUS / "topology.yaml", CORPUS / "effective-nsg-web1.json"])
    web1 = [f for f in FLOWS if f[0] == "web1"]
    assert _verdicts(loaded, web1) == _verdicts(flat, web1)


def test_effective_rules_json_round_trips(flat, tmp_path, capsys):
    """The product's own effective-rules --json, read back with the topology, gives the
    same verdicts for that NIC (for each NIC of the flat file)."""
    for nic in ("web1", "app1"):
        assert main(["effective-rules", str(CORPUS / "flat.yaml"), "--nic", nic, "--json"]) == 0
        out = tmp_path / f"{nic}.json"
        out.write_text(capsys.readouterr().out)
        loaded = load([CORPUS / "topology.yaml", out])
        mine = [f for f in FLOWS if f[0] == nic]
        assert _verdicts(loaded, mine) == _verdicts(flat, mine)


def test_back_reference_conflicting_with_an_association_is_an_error(tmp_path):
    """nsg-list.json says web-nsg is on hub/web; a topology that puts another NSG there
    contradicts it: an error naming both, not a silent choice."""
    import yaml
    topo = yaml.safe_load((CORPUS / "topology.yaml").read_text())
    topo["virtualNetworks"][0]["subnets"][0]["networkSecurityGroup"] = "other-nsg"
    topo["networkSecurityGroups"] = [{"name": "other-nsg"}]
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(topo))
    from nsg_agent.errors import LoadError
    with pytest.raises(LoadError) as e:
        load([path, CORPUS / "nsg-list.json", CORPUS / "rule-list.json"])
    msgs = [str(p) for p in e.value.problems]
    assert any("NSG 'web-nsg' lists subnet hub/web, whose networkSecurityGroup is 'other-nsg'" in m
               and "nsg-list.json" in m for m in msgs), msgs


def test_back_reference_to_a_missing_subnet_is_a_warning(tmp_path):
    """With a topology that lacks hub/app, web-nsg's back-reference to it is not enforced:
    said in a warning (an error with --strict); a lone NSG export (no topology) is quiet."""
    vnets = json.loads((CORPUS / "vnet-list.json").read_text())
    subnets = vnets["value"][0]["properties"]["subnets"]
    subnets[:] = [s for s in subnets if s["name"] != "app"]
    nics = [n for n in json.loads((CORPUS / "nic-list.json").read_text()) if n["name"] != "app1"]
    (tmp_path / "vnets.json").write_text(json.dumps(vnets))
    (tmp_path / "nics.json").write_text(json.dumps(nics))
    files = [tmp_path / "vnets.json", tmp_path / "nics.json", CORPUS / "asg-list.json",
             CORPUS / "nsg-list.json", CORPUS / "rule-list.json"]
    loaded = load(files)
    (w,) = [w for w in loaded.warnings if "not enforced" in w.message]
    assert w.file.endswith("nsg-list.json") and w.path == "[0].properties.subnets[1]"
    assert "NSG 'web-nsg' is associated with subnet hub/app, which is not in the input" in w.message
    from nsg_agent.errors import LoadError
    with pytest.raises(LoadError):
        load(files, strict=True)
    assert not [w for w in load(CORPUS / "nsg-list.json").warnings if "not enforced" in w.message]


def test_rest_list_pages_given_as_several_files(tmp_path, flat):
    """A paged REST list ({"value": [...], "nextLink": ...}): each page is a file; together
    they are the whole list."""
    vnets = json.loads((CORPUS / "vnet-list.json").read_text())["value"]
    (tmp_path / "p1.json").write_text(json.dumps({"value": vnets[:1], "nextLink": "https://management.azure.com/...&$skiptoken=1"}))
    (tmp_path / "p2.json").write_text(json.dumps({"value": vnets[1:]}))
    files = [tmp_path / "p1.json", tmp_path / "p2.json"] + [CORPUS / f for f in (
        "nic-list.json", "asg-list.json", "nsg-list.json", "rule-list.json", "route-table.json")]
    assert _verdicts(load(files)) == _verdicts(flat)


def test_single_show_outputs_load(tmp_path):
    """az network vnet show / nic show / nsg show: one object each."""
    vnet = json.loads((CORPUS / "vnet-list.json").read_text())["value"][2]
    nic = json.loads((CORPUS / "nic-list.json").read_text())[3]
    (tmp_path / "vnet.json").write_text(json.dumps(vnet))
    (tmp_path / "nic.json").write_text(json.dumps(nic))
    loaded = load([tmp_path / "vnet.json", tmp_path / "nic.json"])
    assert [v.name for v in loaded.state.virtualNetworks] == ["spoke2"]
    assert [(n.name, n.subnet, n.ipAddresses) for n in loaded.state.networkInterfaces] == [
        ("spoke2-vm", "spoke2/default", ["10.3.0.4"])]


@pytest.mark.parametrize("change,message", [
    (lambda cfg: cfg[1]["properties"]["subnet"].__setitem__("id", cfg[1]["properties"]["subnet"]["id"].replace("/web", "/app")),
     "ipConfigurations are in different subnets (hub/app, hub/web): one NIC, one subnet"),
    (lambda cfg: cfg[0]["properties"].pop("privateIPAddress"),
     "ipConfigurations ipconfig1 without privateIPAddress (a Dynamic address is known only once deployed"),
])
def test_nic_ip_configurations_that_cannot_be_one_nic(tmp_path, change, message):
    nics = json.loads((CORPUS / "nic-list.json").read_text())
    change(nics[0]["properties"]["ipConfigurations"])
    (tmp_path / "nics.json").write_text(json.dumps(nics))
    from nsg_agent.errors import LoadError
    with pytest.raises(LoadError) as e:
        load([CORPUS / "vnet-list.json", tmp_path / "nics.json", CORPUS / "asg-list.json"])
    assert any(message in p.message and p.path == "[0]" for p in e.value.problems), [str(p) for p in e.value.problems]


def test_unknown_key_in_an_effective_rule_is_a_warning(tmp_path):
    doc = json.loads((CORPUS / "effective-nsg-web1.json").read_text())
    doc["value"][1]["effectiveSecurityRules"][0]["destinationPortRnage"] = "23"
    path = tmp_path / "eff.json"
    path.write_text(json.dumps(doc))
    loaded = load([CORPUS / "topology.yaml", path])
    (w,) = [w for w in loaded.warnings if "unknown key" in w.message]
    assert w.path == "value[1].effectiveSecurityRules[0].destinationPortRnage"
    assert "did you mean 'destinationPortRange'?" in w.message
