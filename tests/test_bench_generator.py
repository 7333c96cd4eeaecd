"""The benchmark's policy generator: deterministic, the sizes asked for, honest probe flows."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace

import pytest

from bench.generate import (
    CLIENT_ADDRESS,
    MAXIMUM,
    NAIVE_COMPARISON,
    NAIVE_LARGE,
    PORT_IPERF,
    SERVER_NIC,
    Scale,
    generate,
)
from nsg_agent.desired import loader
from nsg_agent.desired.vocabulary import Access, Direction
from nsg_agent.semantics import resolver as semantics
from nsg_agent.semantics.policy import Flow

# A mid-size policy with every rule kind (literal, wide, ASG, service tag, IPv6, mixed
# protocols), small enough to load and resolve in a fraction of a second.
MIXED = Scale(rules=60, prefixes=20, ports=2, wide_rules=1, wide_prefixes=500, asg_every=7,
              asgs_per_rule=10, asgs=30, nics=50, tag_prefixes=2000, tags=10, tag_every=5,
              ipv6_share=0.2, mixed_protocols=True, seed=7)

SCALES = [
    pytest.param(NAIVE_COMPARISON, id="naive-comparison-200x50"),
    pytest.param(NAIVE_LARGE, id="naive-large-1000x50"),
    pytest.param(MIXED, id="mixed-kinds"),
    pytest.param(replace(MIXED, seed=8, rules=2, wide_rules=0), id="two-rules"),
]


def _dump(gen) -> str:
    return json.dumps([gen.state, gen.service_tags], sort_keys=True)


def _loaded(gen, tmp_path):
    path = gen.write(tmp_path, interface="nsgb-s0")
    return loader.load(path)


class TestDeterminism:
    @pytest.mark.parametrize("scale", SCALES)
    def test_same_seed_same_policy(self, scale):
        """Two generations from the same seed are byte-for-byte identical."""
        assert _dump(generate(scale)) == _dump(generate(scale))

    def test_other_seed_other_policy(self):
        """A different seed gives different prefixes."""
        assert _dump(generate(MIXED)) != _dump(generate(replace(MIXED, seed=MIXED.seed + 1)))


class TestSizes:
    @pytest.mark.parametrize("scale", SCALES)
    def test_counts_as_requested(self, scale):
        """Rules, NICs, ASGs, per-rule prefixes and port ranges, and tag-file size match the scale."""
        gen = generate(scale)
        rules = gen.rules
        assert len(rules) == scale.rules
        assert len(gen.state["networkInterfaces"]) == scale.nics
        assert len(gen.state["applicationSecurityGroups"]) == scale.asgs
        literal = [r for r in rules if "sourceAddressPrefixes" in r]
        wide = [r for r in literal if len(r["sourceAddressPrefixes"]) == scale.wide_prefixes]
        assert len(wide) == min(scale.wide_rules, max(0, scale.rules - 2))
        assert all(len(r["sourceAddressPrefixes"]) == scale.prefixes for r in literal if r not in wide)
        for r in rules:
            assert len(r.get("sourceApplicationSecurityGroups", [])) in (0, scale.asgs_per_rule)
            assert 1 <= len(r["destinationPortRanges"]) <= max(scale.ports, 2)
        if scale.tag_prefixes:
            tag_total = sum(len(v["properties"]["addressPrefixes"]) for v in gen.service_tags["values"])
            assert tag_total == scale.tag_prefixes
            assert len(gen.service_tags["values"]) == scale.tags
        else:
            assert gen.service_tags is None

    def test_maximum_reaches_azure_limits(self):
        """The maximum policy has 1,000 rules, 4,000-prefix sides, 10-ASG sides, 100 ASGs,
        hundreds of NICs and a 100k-prefix service-tag file, and every tag rule names a tag
        of that file."""
        gen = generate(MAXIMUM)
        rules = gen.rules
        assert len(rules) == 1000
        assert max(len(r.get("sourceAddressPrefixes", [])) for r in rules) == 4000
        assert max(len(r.get("sourceApplicationSecurityGroups", [])) for r in rules) == 10
        referenced = {g for r in rules for side in ("source", "destination")
                      for g in r.get(f"{side}ApplicationSecurityGroups", [])}
        assert len(referenced) <= 100
        assert len(gen.state["networkInterfaces"]) >= 300
        assert sum(len(v["properties"]["addressPrefixes"]) for v in gen.service_tags["values"]) == 100_000
        tags = {v["name"] for v in gen.service_tags["values"]}
        used = {r["sourceAddressPrefix"] for r in rules if "sourceAddressPrefix" in r}
        assert used and used <= tags

    @pytest.mark.parametrize("kwargs", [
        pytest.param({"rules": 1}, id="one-rule"),
        pytest.param({"rules": 1500}, id="priorities-exhausted"),
        pytest.param({"prefixes": 4001}, id="too-many-prefixes"),
        pytest.param({"asgs": 101}, id="too-many-asgs"),
        pytest.param({"asg_every": 3, "asgs_per_rule": 11, "asgs": 50}, id="too-many-asgs-per-rule"),
        pytest.param({"tag_every": 3}, id="tag-rules-without-file"),
    ])
    def test_beyond_limits_refused(self, kwargs):
        """A scale beyond Azure's limits (or inconsistent) is refused up front."""
        with pytest.raises(ValueError):
            Scale(**kwargs)


class TestLoadsAndFlows:
    @pytest.mark.parametrize("scale", SCALES)
    def test_loads_without_problems(self, scale, tmp_path):
        """The written file and its service-tag file load with nsg_agent.desired.loader, warning-free."""
        loaded = _loaded(generate(scale), tmp_path)
        assert loaded.warnings == ()
        assert loaded.state.nic(SERVER_NIC).interface == "nsgb-s0"

    @pytest.mark.parametrize("scale", SCALES)
    @pytest.mark.parametrize("flow_name", ["first", "last", "none"])
    def test_probe_flow_decided_as_claimed(self, scale, flow_name, tmp_path):
        """nsg_agent.semantics.resolver decides each probe flow by the rule the generator claims."""
        gen = generate(scale)
        loaded = _loaded(gen, tmp_path)
        nic = semantics.resolve(loaded.state, loaded.tags).nics[SERVER_NIC]
        probe = gen.flows[flow_name]
        verdict = semantics.evaluate(nic, Flow(Direction.INBOUND, 6, ipaddress.ip_address(gen.server_address),
                                               ipaddress.ip_address(CLIENT_ADDRESS), probe.port, 40000))
        assert verdict.deciding.rule.name == probe.rule
        assert verdict.access is Access(probe.access)

    @pytest.mark.parametrize("protocol", [6, 17], ids=["tcp", "udp"])
    def test_iperf_port_hits_the_last_rule(self, protocol, tmp_path):
        """iperf3's TCP and UDP traffic is decided by the last rule, like the connection test."""
        gen = generate(MIXED)
        loaded = _loaded(gen, tmp_path)
        nic = semantics.resolve(loaded.state, loaded.tags).nics[SERVER_NIC]
        verdict = semantics.evaluate(nic, Flow(Direction.INBOUND, protocol, ipaddress.ip_address(gen.server_address),
                                               ipaddress.ip_address(CLIENT_ADDRESS), PORT_IPERF, 40000))
        assert verdict.deciding.rule.name == gen.rules[-1]["name"]
        assert verdict.allowed

    def test_no_middle_rule_matches_the_client(self, tmp_path):
        """Only the first and last rule contain the client's address: every other rule,
        whatever its kind, misses it (so 'last' really is the last rule evaluated)."""
        gen = generate(MIXED)
        loaded = _loaded(gen, tmp_path)
        nic = semantics.resolve(loaded.state, loaded.tags).nics[SERVER_NIC]
        client = ipaddress.ip_address(CLIENT_ADDRESS)
        users = [r for r in nic.inbound[0].rules if not r.default]
        matching = [r.name for r in users if r.source.contains(client)]
        assert matching == [gen.rules[0]["name"], gen.rules[-1]["name"]]


class TestElementCut:
    @pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0], ids=["none", "half", "all"])
    def test_cut_keeps_structure(self, fraction, tmp_path):
        """Cutting a compiled table's set/map elements to a fraction keeps every command and
        rule, keeps each named set's first elements in order, and counts what it kept."""
        from bench.control import _cut_elements
        from nsg_agent.compiler import HostPlacement, compile_ruleset

        loaded = _loaded(generate(MIXED), tmp_path)
        rs = compile_ruleset(semantics.resolve(loaded.state, loaded.tags),
                             HostPlacement(interfaces={SERVER_NIC: "nsgb-s0"}), mode="classify")
        cut, count = _cut_elements(rs.commands, fraction)
        assert len(cut) == len(rs.commands)
        expected = 0
        for before, after in zip(rs.commands, cut):
            body = before.get("add", {})
            kind = "set" if "set" in body else "map" if "map" in body else None
            if kind and "elem" in body[kind]:
                keep = int(len(body[kind]["elem"]) * fraction)
                expected += keep
                assert after["add"][kind].get("elem", []) == body[kind]["elem"][:keep]
                assert {k: v for k, v in after["add"][kind].items() if k != "elem"} == \
                    {k: v for k, v in body[kind].items() if k != "elem"}
            else:
                assert after == before
        assert count == expected
        assert expected > 0 or fraction == 0.0
