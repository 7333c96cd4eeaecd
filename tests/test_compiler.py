"""The compiler's contract: pure, deterministic, one table replaced atomically, readable
names and comments, shared levels, fallback to the simple rendering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compiler_helpers import REPO, big_policy, policy_from_dict
from nsg_agent.compiler import TABLE_NAME, FabricPlacement, HostPlacement, compile_ruleset
from nsg_agent.kernel.tracer import Packet, trace
from nsg_agent.semantics.policy import Policy

GOLDEN_INPUTS = Path(__file__).parent / "golden" / "inputs"


def _policy(name: str = "webservers-asg.yaml") -> Policy:
    from nsg_agent.desired.loader import load
    from nsg_agent.semantics.resolver import resolve

    loaded = load(GOLDEN_INPUTS / name)
    return resolve(loaded.state, loaded.tags)


def _host(policy: Policy) -> HostPlacement:
    return HostPlacement({n: nic.interface for n, nic in policy.nics.items() if nic.interface})


def _objects(rs, kind: str) -> list[dict]:
    return [c["add"][kind] for c in rs.commands if "add" in c and kind in c["add"]]


def test_compiler_imports_no_io_libraries():
    """Importing nsg_agent.compiler (and compiling) loads neither nftables, pyroute2 nor watchdog."""
    code = ("import sys, nsg_agent.compiler, nsg_agent.kernel.tracer; "
            "bad = [m for m in ('nftables', 'pyroute2', 'watchdog') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class TestShape:
    def test_replaces_one_table_atomically(self):
        """Commands start with add/delete/add of table inet nsg_agent and touch nothing else."""
        rs = compile_ruleset(_policy(), _host(_policy()))
        table = {"table": {"family": "inet", "name": TABLE_NAME}}
        assert rs.commands[:3] == [{"add": table}, {"delete": table}, {"add": table}]
        for cmd in rs.commands[3:]:
            (verb, obj), = cmd.items()
            assert verb == "add"
            (_, body), = obj.items()
            assert (body["family"], body["table"]) == ("inet", TABLE_NAME)

    def test_to_json_wraps_with_metainfo(self):
        """to_json() is the commands under "nftables" after a schema-version metainfo."""
        rs = compile_ruleset(_policy(), _host(_policy()))
        doc = json.loads(rs.to_json())
        assert doc["nftables"][0] == {"metainfo": {"json_schema_version": 1}}
        assert doc["nftables"][1:] == rs.commands

    @pytest.mark.parametrize("mode", ["classify", "simple"])
    def test_deterministic_bytes(self, mode):
        """The same policy compiles to the same bytes, whatever the order NICs were listed in."""
        p = _policy()
        reordered = Policy(nics=dict(reversed(list(p.nics.items()))))
        a = compile_ruleset(p, _host(p), mode=mode).to_json()
        b = compile_ruleset(_policy(), _host(p), mode=mode).to_json()
        c = compile_ruleset(reordered, HostPlacement(dict(reversed(list(_host(p).interfaces.items())))), mode=mode).to_json()
        assert a == b == c

    def test_host_base_chains_conntrack_first(self):
        """input/output hook chains begin with ct established,related accept and ct invalid drop."""
        rs = compile_ruleset(_policy(), _host(_policy()))
        chains = {c["name"]: c for c in _objects(rs, "chain")}
        assert (chains["input"]["hook"], chains["output"]["hook"]) == ("input", "output")
        for base in ("input", "output"):
            rules = [r for r in _objects(rs, "rule") if r["chain"] == base]
            assert rules[0]["comment"] == "conntrack: established,related"
            assert rules[1]["comment"] == "conntrack: invalid"

    def test_fabric_single_forward_chain(self):
        """Fabric placement has one base chain, on the forward hook, ending in accept."""
        rs = compile_ruleset(_policy(), FabricPlacement())
        bases = [c for c in _objects(rs, "chain") if "hook" in c]
        assert [(c["name"], c["hook"]) for c in bases] == [("forward", "forward")]
        rules = [r for r in _objects(rs, "rule") if r["chain"] == "forward"]
        assert rules[-1]["expr"] == [{"accept": None}]
        assert rs.summary.placement == "fabric"

    @pytest.mark.parametrize("mode", ["classify", "simple"])
    def test_every_nsg_rule_counted_and_named(self, mode):
        """Every rule_index entry is a rule with a counter and an Azure-vocabulary comment."""
        rs = compile_ruleset(_policy(), _host(_policy()), mode=mode)
        rules = {(r["chain"], r.get("comment")): r for r in _objects(rs, "rule")}
        assert rs.rule_index
        for (chain, comment), ref in rs.rule_index.items():
            assert {"counter": None} in rules[(chain, comment)]["expr"]
            assert ref.rule.split("_", 1)[0] in ("UserRule", "DefaultRule", "PlatformRule", "NoRuleMatched")
            assert comment == (f"{ref.nsg}: {ref.rule}" if ref.nsg else ref.rule)
        names = {ref.rule for ref in rs.rule_index.refs()}
        assert {"UserRule_allow-web", "DefaultRule_DenyAllInBound", "PlatformRule_BlockOutboundSmtp",
                "PlatformRule_PlatformExemption"} <= names

    def test_names_bounded_and_comments_short(self):
        """Long NIC/NSG/rule names give short chain names and comments within nft's 128 bytes."""
        long_nic, long_nsg, long_rule = "n" * 80, "g" * 80, "r" * 80
        state = {
            "virtualNetworks": [{"name": "v", "addressSpace": ["10.1.0.0/16"],
                                 "subnets": [{"name": "s", "addressPrefix": "10.1.1.0/24"}]}],
            "networkInterfaces": [{"name": long_nic, "subnet": "v/s", "ipAddresses": ["10.1.1.4"],
                                   "networkSecurityGroup": long_nsg}],
            "networkSecurityGroups": [{"name": long_nsg, "securityRules": [{
                "name": long_rule, "priority": 100, "direction": "Inbound", "access": "Allow",
                "protocol": "Tcp", "sourceAddressPrefix": "*", "sourcePortRange": "*",
                "destinationAddressPrefix": "*", "destinationPortRange": "80"}]}],
        }
        rs = compile_ruleset(policy_from_dict(state), HostPlacement({long_nic: "eth0"}))
        for obj in _objects(rs, "chain") + _objects(rs, "map"):
            assert len(obj["name"]) <= 31
        for r in _objects(rs, "rule"):
            assert len(r.get("comment", "").encode()) <= 128


class TestPlacement:
    def test_only_listed_interfaces_are_enforced(self):
        """A NIC without an interface in the host placement gets no chains."""
        p = _policy()
        rs = compile_ruleset(p, HostPlacement({"web1": "eth0"}))
        assert sorted(rs.summary.nics) == ["web1"]
        assert trace(rs.commands, Packet("input", "203.0.113.9", "10.1.2.4", 6, 1, 22, iifname="eth2")).verdict == "accept"
        assert trace(rs.commands, Packet("input", "203.0.113.9", "10.1.1.4", 6, 1, 22, iifname="eth0")).verdict == "drop"

    def test_unknown_nic_and_shared_interface_rejected(self):
        """Placement errors are ValueErrors naming the problem, not silent mis-enforcement."""
        p = _policy()
        with pytest.raises(ValueError, match="nosuch"):
            compile_ruleset(p, HostPlacement({"nosuch": "eth0"}))
        with pytest.raises(ValueError, match="eth0"):
            compile_ruleset(p, HostPlacement({"web1": "eth0", "web2": "eth0"}))
        with pytest.raises(ValueError, match="mode"):
            compile_ruleset(p, _host(p), mode="fast")

    def test_fabric_subset_of_nics(self):
        """FabricPlacement(nics=...) dispatches only the listed NICs' addresses."""
        rs = compile_ruleset(_policy(), FabricPlacement(("db1",)))
        assert sorted(rs.summary.nics) == ["db1"]
        assert trace(rs.commands, Packet("forward", "203.0.113.9", "10.1.1.4", 6, 1, 22)).verdict == "accept"
        assert trace(rs.commands, Packet("forward", "203.0.113.9", "10.1.2.4", 6, 1, 22)).verdict == "drop"


class TestLevels:
    def test_same_nsg_same_vnet_shares_one_chain_across_level_kinds(self):
        """One NSG used as subnet NSG for one NIC and NIC NSG for another (same VNet) is one chain."""
        state = {
            "virtualNetworks": [{"name": "v", "addressSpace": ["10.1.0.0/16"], "subnets": [
                {"name": "a", "addressPrefix": "10.1.1.0/24", "networkSecurityGroup": "g"},
                {"name": "b", "addressPrefix": "10.1.2.0/24"}]}],
            "networkInterfaces": [
                {"name": "x", "subnet": "v/a", "ipAddresses": ["10.1.1.4"]},
                {"name": "y", "subnet": "v/b", "ipAddresses": ["10.1.2.4"], "networkSecurityGroup": "g"}],
            "networkSecurityGroups": [{"name": "g"}],
        }
        rs = compile_ruleset(policy_from_dict(state), HostPlacement({"x": "eth0", "y": "eth1"}))
        inbound = [n for n, i in rs.summary.levels.items() if i.direction == "Inbound"]
        assert len(inbound) == 1
        assert rs.summary.levels[inbound[0]].users == ("x/subnet", "y/nic")

    def test_virtualnetwork_differs_per_vnet(self):
        """The same NSG in two unpeered VNets becomes two chains (VirtualNetwork differs)."""
        p = _policy()  # app-nsg serves hub NICs and the spoke NIC tools1
        levels = [i for i in compile_ruleset(p, _host(p)).summary.levels.values()
                  if i.direction == "Inbound"]
        assert sorted(len(i.users) for i in levels) == [1, 3]

    def test_fallback_to_simple_keeps_verdicts(self):
        """Over the element bound a level renders simply, the summary says so, verdicts stay."""
        p = _policy()
        small = compile_ruleset(p, _host(p), max_level_elements=10)
        normal = compile_ruleset(p, _host(p))
        assert "simple" in small.summary.modes_used
        assert any(i.fallback is not None for i in small.summary.levels.values())
        assert normal.summary.modes_used == ("classify",)
        for pkt in (Packet("input", "203.0.113.9", "10.1.1.4", 6, 1, 443, iifname="eth0"),
                    Packet("input", "10.1.1.4", "10.1.2.4", 6, 1, 1433, iifname="eth2"),
                    Packet("input", "10.1.2.9", "10.1.2.4", 6, 1, 1433, iifname="eth2"),
                    Packet("output", "10.1.1.4", "203.0.113.9", 6, 1, 2250, oifname="eth0")):
            assert trace(small.commands, pkt).verdict == trace(normal.commands, pkt).verdict

    def test_non_port_protocols_ignore_the_port_bytes(self):
        """Ports only constrain TCP/UDP: for ICMP and other protocols whatever bytes sit where
        th sport/dport would be never change the verdict or the deciding rule."""
        p = _policy()
        rs = compile_ruleset(p, _host(p))
        nics = [(n, nic) for n, nic in sorted(p.nics.items()) if nic.interface]
        checked = 0
        for name, nic in nics:
            local = str(nic.addresses[0])
            for remote in ("10.1.1.4", "10.1.2.4", "10.1.2.9", "203.0.113.9", "168.63.129.16"):
                for proto in (1, 47, 50):
                    for inbound in (True, False):
                        seen = set()
                        for junk in (0, 7, 80, 443, 1433, 3389, 65535):
                            pkt = (Packet("input", remote, local, proto, junk, junk, iifname=nic.interface)
                                   if inbound else
                                   Packet("output", local, remote, proto, junk, junk, oifname=nic.interface))
                            t = trace(rs.commands, pkt)
                            seen.add((t.verdict, tuple(t.comments)))
                        assert len(seen) == 1, (name, remote, proto, inbound, seen)
                        checked += 1
        assert checked

    def test_no_concatenated_interval_maps(self):
        """Classify mode renders one single-field map per decomposition node: the kernel looks
        each up in a tree (rbtree), never in a concatenated interval map (pipapo), whose lookup
        cost grows with its expanded entry count."""
        for name in ("webservers-asg.yaml", "port80.yaml"):
            p = _policy(name)
            rs = compile_ruleset(p, _host(p))
            for kind in ("map", "set"):
                for obj in _objects(rs, kind):
                    assert isinstance(obj["type"], str), obj["name"]
            for r in _objects(rs, "rule"):
                for stmt in r["expr"]:
                    if "vmap" in stmt:
                        assert "concat" not in stmt["vmap"]["key"], r

    def test_large_policy_classifies_within_bound(self):
        """1000 rules x 20 prefixes classify (no fallback) and report their element counts."""
        rs = compile_ruleset(big_policy(1000, 20), HostPlacement({"nic0": "eth0"}))
        (info,) = rs.summary.levels.values()
        assert info.mode == "classify"
        assert info.elements == rs.summary.set_elements - 2  # all but the iif/oifname dispatch
        assert info.elements is not None and 20_000 < info.elements < 150_000


def test_output_does_not_depend_on_earlier_compiles():
    """The set-element cache kept between compiles never changes what a compile emits."""
    a, b = _policy("webservers-asg.yaml"), _policy("port80.yaml")
    first = compile_ruleset(a, _host(a)).to_json()
    compile_ruleset(b, _host(b))
    compile_ruleset(big_policy(200, 20), HostPlacement({"nic0": "eth0"}))
    assert compile_ruleset(a, _host(a)).to_json() == first
    big1 = compile_ruleset(big_policy(200, 20), HostPlacement({"nic0": "eth0"})).to_json()
    compile_ruleset(a, _host(a))
    compile_ruleset(a, _host(a))  # the big policy's sets are gone from the cache now
    assert compile_ruleset(big_policy(200, 20), HostPlacement({"nic0": "eth0"})).to_json() == big1
