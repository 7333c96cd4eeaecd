"""The lab's address plan (nsg_agent.lab.topology) and its own nft tables (nsg_agent.lab.labrules)."""

from __future__ import annotations

import copy
import json

import pytest

from nsg_agent.desired.model import DesiredState
from nsg_agent.lab import labrules
from nsg_agent.lab.topology import LabPlan, LabPlanError, plan_lab

BASE = {
    "virtualNetworks": [
        {"name": "hub", "addressSpace": ["10.1.0.0/16"], "peerings": ["spoke1", "spoke2"],
         "subnets": [{"name": "web", "addressPrefix": "10.1.1.0/24"},
                     {"name": "db", "addressPrefix": "10.1.2.0/28"}]},
        {"name": "spoke1", "addressSpace": ["10.2.0.0/16"],
         "subnets": [{"name": "app", "addressPrefix": "10.2.1.0/24"}]},
        {"name": "spoke2", "addressSpace": ["10.3.0.0/16"],
         "subnets": [{"name": "data", "addressPrefix": "10.3.1.0/24"}]},
    ],
    "networkInterfaces": [
        {"name": "web1", "subnet": "hub/web", "ipAddresses": ["10.1.1.4", "10.1.1.9"]},
        {"name": "db1", "subnet": "hub/db", "ipAddresses": ["10.1.2.4"]},
        {"name": "app1", "subnet": "spoke1/app", "ipAddresses": ["10.2.1.4"]},
        {"name": "data1", "subnet": "spoke2/data", "ipAddresses": ["10.3.1.4"]},
    ],
    "lab": {"externalHosts": [{"name": "client", "address": "203.0.113.10"},
                              {"name": "partner", "address": "198.51.100.7"}]},
}


def state(doc=None, **edits) -> DesiredState:
    d = copy.deepcopy(doc or BASE)
    for k, v in edits.items():
        d[k] = v
    return DesiredState.model_validate(d)


def test_bridges_get_the_azure_gateway_address():
    """One bridge per subnet; its address is the subnet's first usable address (x.x.x.1)."""
    plan = plan_lab(state(), "t")
    got = {b.key: (b.ifname, b.prefix, b.gateway, b.prefixlen) for b in plan.bridges}
    assert got == {
        "hub/web": ("nsgb0", "10.1.1.0/24", "10.1.1.1", 24),
        "hub/db": ("nsgb1", "10.1.2.0/28", "10.1.2.1", 28),
        "spoke1/app": ("nsgb2", "10.2.1.0/24", "10.2.1.1", 24),
        "spoke2/data": ("nsgb3", "10.3.1.0/24", "10.3.1.1", 24),
    }


def test_nics_get_a_namespace_a_bridge_port_and_their_subnets_prefix():
    """Each NIC: its own namespace, a port on its subnet's bridge, every IP with the subnet's
    prefix length, and the subnet gateway as default route."""
    plan = plan_lab(state(), "t")
    web1 = plan.nic("WEB1")
    assert (web1.netns, web1.port, web1.bridge, web1.addresses, web1.prefixlen, web1.gateway) == (
        "nsgl-t-n0", "nsgp0", "nsgb0", ("10.1.1.4", "10.1.1.9"), 24, "10.1.1.1")
    assert web1.address == "10.1.1.4"
    assert plan.nic("db1").prefixlen == 28 and plan.nic("db1").bridge == "nsgb1"


def test_hosts_are_external_hosts_then_the_platform():
    """External hosts get namespaces h<i>; the platform host 168.63.129.16 is always there."""
    plan = plan_lab(state(), "t")
    assert [(h.name, h.kind, h.netns, h.port, h.address) for h in plan.hosts] == [
        ("client", "external", "nsgl-t-h0", "nsgh0", "203.0.113.10"),
        ("partner", "external", "nsgl-t-h1", "nsgh1", "198.51.100.7"),
        ("platform", "platform", "nsgl-t-plat", "nsghpl", "168.63.129.16"),
    ]
    assert plan.namespaces()[0] == "nsgl-t-fab"
    assert plan.netns_of("Client") == "nsgl-t-h0" and plan.netns_of("nope") is None


def test_isolation_is_pairwise_because_peering_is_not_transitive():
    """hub<->spoke are peered (listed on one side suffices); spoke1<->spoke2 are not."""
    plan = plan_lab(state(), "t")
    assert set(plan.isolation) == {("spoke1", "spoke2"), ("spoke2", "spoke1")}
    assert plan.isolated("SPOKE1", "spoke2") and not plan.isolated("hub", "spoke1")


def test_indexes_survive_removing_and_adding_nics():
    """Editing the file never renames a surviving NIC's namespace or port."""
    first = plan_lab(state(), "t")
    doc = copy.deepcopy(BASE)
    del doc["networkInterfaces"][1]  # db1 (n1) goes
    doc["networkInterfaces"].append({"name": "web2", "subnet": "hub/web", "ipAddresses": ["10.1.1.5"]})
    second = plan_lab(state(doc), "t", previous=first)
    idx = {n.name: n.index for n in second.nics}
    assert idx == {"web1": 0, "app1": 2, "data1": 3, "web2": 1}


def test_moving_a_nic_keeps_its_namespace_and_changes_its_bridge():
    """A NIC moved to another subnet keeps its index; bridge, prefix and gateway follow."""
    first = plan_lab(state(), "t")
    doc = copy.deepcopy(BASE)
    doc["networkInterfaces"][0] = {"name": "web1", "subnet": "hub/db", "ipAddresses": ["10.1.2.5"]}
    moved = plan_lab(state(doc), "t", previous=first).nic("web1")
    assert (moved.netns, moved.port, moved.bridge, moved.prefixlen, moved.gateway) == (
        "nsgl-t-n0", "nsgp0", "nsgb1", 28, "10.1.2.1")


def test_plan_round_trips_through_json():
    """The state file's plan reads back equal."""
    plan = plan_lab(state(), "t")
    again = LabPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["virtualNetworks"][1]["subnets"].append({"name": "x", "addressPrefix": "10.1.1.0/25"}),
     "overlap"),
    (lambda d: d["networkInterfaces"][0].update(ipAddresses=["10.1.1.1"]), "gateway"),
    (lambda d: d["networkInterfaces"][0].update(ipAddresses=["10.1.1.0"]), "network, broadcast"),
    (lambda d: d["networkInterfaces"].append({"name": "twin", "subnet": "hub/web",
                                               "ipAddresses": ["10.1.1.4"]}), "also used by web1"),
    (lambda d: d["lab"]["externalHosts"].append({"name": "inside", "address": "10.2.9.9"}),
     "outside every VNet"),
    (lambda d: d["lab"]["externalHosts"].append({"name": "uplink", "address": "192.0.2.5"}),
     "192.0.2.0/24"),
    (lambda d: d["virtualNetworks"][0]["subnets"].append({"name": "up", "addressPrefix": "192.0.2.0/24"}),
     "never uses"),
    (lambda d: d["networkInterfaces"].append({"name": "platform", "subnet": "hub/web",
                                               "ipAddresses": ["10.1.1.20"]}), "platform host"),
    (lambda d: d["virtualNetworks"][0]["subnets"].append({"name": "v6", "addressPrefix": "fd00::/64"}),
     "IPv6"),
], ids=["overlapping-subnets", "nic-on-gateway", "nic-on-network-address", "duplicate-ip",
        "host-inside-vnet", "host-in-forbidden-range", "subnet-in-forbidden-range",
        "nic-named-platform", "ipv6-subnet"])
def test_unbuildable_states_are_refused_with_reasons(edit, message):
    """States the lab cannot build safely are refused, naming what is wrong."""
    doc = copy.deepcopy(BASE)
    edit(doc)
    with pytest.raises(LabPlanError, match=message):
        plan_lab(state(doc), "t")


# --- labrules -----------------------------------------------------------------------------------


def _rules(cmds, family, chain):
    return [c["add"]["rule"] for c in cmds
            if "rule" in c.get("add", {}) and c["add"]["rule"]["family"] == family
            and c["add"]["rule"]["chain"] == chain]


def test_lab_tables_replace_only_the_lab_tables():
    """Every command touches table nsg_lab (bridge or inet), never the agent's or the ruleset."""
    cmds = labrules.lab_commands(plan_lab(state(), "t"))
    for c in cmds:
        (verb, body), = c.items()
        (kind, obj), = body.items()
        assert kind in ("table", "chain", "rule")
        assert (obj.get("name") if kind == "table" else obj["table"]) == "nsg_lab"
        assert obj["family"] in ("bridge", "inet")
    assert cmds[:3] == [{"add": {"table": {"family": "bridge", "name": "nsg_lab"}}},
                        {"delete": {"table": {"family": "bridge", "name": "nsg_lab"}}},
                        {"add": {"table": {"family": "bridge", "name": "nsg_lab"}}}]


def test_antispoof_drops_foreign_sources_per_nic_port_without_conntrack():
    """The bridge chain drops IPv4 from a NIC port whose source is not one of that NIC's IPs;
    no ct expression (no bridge conntrack on this kernel)."""
    cmds = labrules.lab_commands(plan_lab(state(), "t"))
    rules = _rules(cmds, "bridge", "antispoof")
    web1 = [r for r in rules if r["comment"] == "antispoof NIC web1"][0]
    assert web1["expr"][0] == {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "nsgp0"}}
    assert {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                      "right": {"set": ["10.1.1.4", "10.1.1.9"]}}} in web1["expr"]
    assert web1["expr"][-1] == {"drop": None}
    assert "ct" not in json.dumps(rules)
    hosts = _rules(cmds, "inet", "antispoof")
    assert [r["comment"] for r in hosts] == ["antispoof host client", "antispoof host partner",
                                             "antispoof host platform"]


def test_isolation_rules_drop_between_unpeered_vnets_only():
    """One forward drop per ordered unpeered pair, matching the two address spaces."""
    cmds = labrules.lab_commands(plan_lab(state(), "t"))
    iso = [r for r in _rules(cmds, "inet", "isolate") if r["comment"].startswith("no route")]
    assert [r["comment"] for r in iso] == ["no route: VNet spoke1 is not peered with spoke2",
                                           "no route: VNet spoke2 is not peered with spoke1"]
    assert iso[0]["expr"][:2] == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": {"set": [{"prefix": {"addr": "10.2.0.0", "len": 16}}]}}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                   "right": {"set": [{"prefix": {"addr": "10.3.0.0", "len": 16}}]}}}]


def test_lab_commands_are_deterministic():
    """The same plan gives the same bytes."""
    a = json.dumps(labrules.lab_commands(plan_lab(state(), "t")))
    b = json.dumps(labrules.lab_commands(plan_lab(state(), "t")))
    assert a == b
