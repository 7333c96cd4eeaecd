"""The compiled ruleset, walked by the tracer, decides exactly as nsg_agent.semantics.resolver.evaluate on
generated policies and flows: both modes, both placements."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from compiler_helpers import JUNK_PORTS, expected_fabric, host_packet, host_placement, policy_from_dict
from nsg_agent.compiler import FabricPlacement, compile_ruleset, flowmark
from nsg_agent.compiler.naming import rule_comment
from nsg_agent.desired.vocabulary import Direction
from nsg_agent.kernel.tracer import Packet, Ruleset, trace
from nsg_agent.semantics.policy import Flow
from nsg_agent.semantics.resolver import evaluate

VNETS = {
    "vnetA": {"addressSpace": ["10.1.0.0/16"],
              "subnets": [("s1", "10.1.1.0/24"), ("s2", "10.1.2.0/24")]},
    "vnetB": {"addressSpace": ["10.2.0.0/16"], "subnets": [("s1", "10.2.1.0/24")]},
}
PREFIX_POOL = [
    "10.1.0.0/16", "10.1.1.0/24", "10.1.1.0/25", "10.1.1.4", "10.1.1.128/25", "10.1.2.0/24",
    "10.2.0.0/16", "10.2.1.0/24", "172.16.0.0/16", "203.0.113.0/24", "198.51.100.128/25",
    "198.51.100.7", "0.0.0.0/0", "168.63.129.16", "169.254.169.254", "2001:db8::/32",
    "2001:db8:1::/48", "fd00:1::4",
]
TAGS = ["VirtualNetwork", "Internet", "AzureLoadBalancer"]
ASGS = ["asgA", "asgB", "asgEmpty"]
PORT_ITEMS = ["22", "25", "53", "80", "443", "1000-2000", "1999-2001", "0-1023", "65535", "0"]
PROTOCOLS = ["Tcp", "Udp", "Icmp", "Esp", "Ah", "*"]
FLOW_PROTOCOLS = [1, 6, 17, 50, 51, 47, 4, 58]
PORT_EDGES = [0, 1, 21, 22, 23, 25, 53, 79, 80, 81, 443, 999, 1000, 1023, 1024, 1998, 1999,
              2000, 2001, 2002, 40000, 65534, 65535]
EXTERNAL = ["203.0.113.10", "198.51.100.7", "198.51.100.200", "8.8.8.8", "172.16.5.5",
            "168.63.129.16", "169.254.169.254", "10.3.0.1",
            # Azure's Internet list: private and reserved space left out, edges of its blocks
            "172.31.0.100", "100.64.1.1", "198.18.0.1", "21.1.1.1", "168.1.1.1", "4.127.255.255",
            "4.128.0.0", "4.143.255.255", "4.144.0.0", "52.10.1.1",
            # platform drops: multicast, broadcast (limited and the subnets')
            "224.0.0.251", "239.255.255.250", "255.255.255.255", "10.1.1.255", "10.1.2.255", "10.2.1.255"]
V6_REMOTE = ["2001:db8::1", "2001:db8:1::9", "2001:db8:ffff::1", "fd00:1::4", "fd00:2::1", "::1",
             "2001::1", "2001:1ff:ffff::1", "2001:200::1", "3fff::1", "4000::1",
             "fe80::1234:5678:9abc", "fe80::1", "ff02::1", "ff02::1:ff00:4", "ff02::fb"]
ROUTE_PREFIXES = ["0.0.0.0/0", "172.31.0.0/16", "203.0.113.0/25", "52.10.0.0/16", "2001:db8:1::/48"]


def _boundaries() -> list[str]:
    out: set[str] = set()
    for text in PREFIX_POOL:
        net = ipaddress.ip_network(text)
        for a in (int(net.network_address) - 1, int(net.network_address),
                  int(net.broadcast_address), int(net.broadcast_address) + 1):
            if 0 <= a < (1 << net.max_prefixlen):
                out.add(str(ipaddress.ip_address(a) if net.version == 4 else ipaddress.IPv6Address(a)))
    return sorted(out)


BOUNDARIES = _boundaries()


@st.composite
def address_side(draw, outbound_destination: bool) -> dict:
    kinds = ["any", "tag", "list", "asg"] + (["platform"] if outbound_destination else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "any":
        return {"AddressPrefix": "*"}
    if kind == "tag":
        return {"AddressPrefix": draw(st.sampled_from(TAGS))}
    if kind == "platform":
        return {"AddressPrefix": draw(st.sampled_from(["AzurePlatformDNS", "AzurePlatformIMDS"]))}
    if kind == "asg":
        return {"ApplicationSecurityGroups": draw(st.lists(st.sampled_from(ASGS), min_size=1, max_size=2, unique=True))}
    items = draw(st.lists(st.sampled_from(PREFIX_POOL), min_size=1, max_size=3, unique=True))
    return {"AddressPrefixes": items} if len(items) > 1 or draw(st.booleans()) else {"AddressPrefix": items[0]}


@st.composite
def port_side(draw) -> dict:
    if draw(st.integers(0, 2)) == 0:
        return {"PortRange": "*"}
    items = draw(st.lists(st.sampled_from(PORT_ITEMS), min_size=1, max_size=3, unique=True))
    return {"PortRanges": items} if len(items) > 1 else {"PortRange": items[0]}


@st.composite
def security_rule(draw, name: str, priority: int) -> dict:
    direction = draw(st.sampled_from(["Inbound", "Outbound"]))
    rule = {"name": name, "priority": priority, "direction": direction,
            "access": draw(st.sampled_from(["Allow", "Deny"])),
            "protocol": draw(st.sampled_from(PROTOCOLS))}
    src = draw(address_side(False))
    dst = draw(address_side(direction == "Outbound"))
    for side, parts in (("source", src), ("destination", dst)):
        for k, v in parts.items():
            rule[side + k] = v
    for side in ("source", "destination"):
        for k, v in draw(port_side()).items():
            rule[side + k] = v
    return rule


@st.composite
def desired_state(draw) -> dict:
    nsgs = []
    for n in range(draw(st.integers(1, 3))):
        count = draw(st.integers(0, 6))
        prios = draw(st.lists(st.integers(100, 140), min_size=count, max_size=count, unique=True))
        rules = [draw(security_rule(f"r{n}_{i}", p)) for i, p in enumerate(prios)]
        nsgs.append({"name": f"nsg{n}", "securityRules": rules})
    nsg_names = [None] + [g["name"] for g in nsgs]
    vnets = []
    # peerings as Azure models them: the shorthand pair, both sides, one side, access held back
    peering = draw(st.sampled_from(["none", "pair", "both", "one-sided", "a-blocked"]))
    sides = {"none": ([], []), "pair": (["vnetB"], []),
             "both": ([_peer("vnetB")], [_peer("vnetA")]), "one-sided": ([_peer("vnetB")], []),
             "a-blocked": ([_peer("vnetB", allowVirtualNetworkAccess=False)], [_peer("vnetA")])}[peering]
    routes = draw(st.lists(st.sampled_from(ROUTE_PREFIXES), max_size=2, unique=True))
    route_tables = [{"name": "rt", "routes": [{"name": f"r{i}", "addressPrefix": p, "nextHopType": "VirtualNetworkGateway"}
                                              for i, p in enumerate(routes)]}] if routes else []
    for vname, v in VNETS.items():
        vnets.append({
            "name": vname, "addressSpace": v["addressSpace"],
            "onPremisesPrefixes": (draw(st.sampled_from([["172.16.0.0/16"], ["52.10.0.0/16"]]))
                                   if vname == "vnetA" and draw(st.booleans()) else []),
            "peerings": sides[0] if vname == "vnetA" else sides[1],
            "subnets": [{"name": s, "addressPrefix": p, "networkSecurityGroup": draw(st.sampled_from(nsg_names)),
                         **({"routeTable": "rt"} if route_tables and draw(st.booleans()) else {})}
                        for s, p in v["subnets"]],
        })
    nics = []
    subnets = [(vname, s, p) for vname, v in VNETS.items() for s, p in v["subnets"]]
    for i in range(draw(st.integers(1, 3))):
        vname, sname, prefix = draw(st.sampled_from(subnets))
        base = ipaddress.ip_network(prefix).network_address
        addrs = [str(base + 4 + i)]
        if draw(st.integers(0, 3)) == 0:
            addrs.append(f"fd00:1::{4 + i}")
        nics.append({"name": f"nic{i}", "subnet": f"{vname}/{sname}", "ipAddresses": addrs,
                     "networkSecurityGroup": draw(st.sampled_from(nsg_names)),
                     "applicationSecurityGroups": draw(st.lists(st.sampled_from(ASGS[:2]), max_size=2, unique=True))})
    return {
        "virtualNetworks": vnets, "networkInterfaces": nics,
        "applicationSecurityGroups": [{"name": a} for a in ASGS], "networkSecurityGroups": nsgs,
        "routeTables": route_tables,
        "platform": {"outboundSmtp": draw(st.sampled_from(["blocked", "allowed"])),
                     "platformExemption": draw(st.integers(0, 3)) > 0,
                     "platformDrops": draw(st.integers(0, 3)) > 0},
    }


def _peer(remote: str, **extra) -> dict:
    return {"name": f"to-{remote}", "remoteVirtualNetwork": {"id": f"/x/virtualNetworks/{remote}"}, **extra}


def _port(draw) -> int:
    return draw(st.one_of(st.sampled_from(PORT_EDGES), st.integers(0, 65535)))


def _inside(draw, term, version: int):
    """An address in ``term`` (edges or a random one) of the family, or None."""
    nets = [ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")] if term.any else \
        [p for p in term.prefixes if p.version == version]
    if not nets:
        return None
    net = draw(st.sampled_from(nets))
    lo, hi = int(net.network_address), int(net.broadcast_address)
    value = draw(st.one_of(st.sampled_from([lo, hi]), st.integers(lo, hi)))
    return ipaddress.ip_address(value) if version == 4 else ipaddress.IPv6Address(value)


def _port_in(draw, term) -> int:
    lo, hi = draw(st.sampled_from(term.ranges))
    return draw(st.one_of(st.sampled_from([lo, hi, max(lo - 1, 0), min(hi + 1, 65535)]), st.integers(lo, hi)))


@st.composite
def host_flows(draw, nic_names: list[str], policy) -> list[tuple[str, Flow, int]]:
    """Random flows, half of them aimed at one rule of the NIC (inside its terms, at edges)."""
    out = []
    for _ in range(draw(st.integers(10, 30))):
        nic = policy.nics[draw(st.sampled_from(nic_names))]
        local = draw(st.sampled_from(nic.addresses))
        direction = draw(st.sampled_from(list(Direction)))
        rules = [r for lv in nic.levels(direction) for r in lv.rules]
        pool = BOUNDARIES + EXTERNAL + [str(a) for n in policy.nics.values() for a in n.addresses] + V6_REMOTE
        remote = ipaddress.ip_address(draw(st.sampled_from([a for a in pool if ipaddress.ip_address(a).version == local.version])))
        proto = draw(st.sampled_from(FLOW_PROTOCOLS))
        lport, rport = _port(draw), _port(draw)
        if rules and draw(st.booleans()):
            rule = draw(st.sampled_from(rules))
            inbound = direction is Direction.INBOUND
            remote = _inside(draw, rule.source if inbound else rule.destination, local.version) or remote
            nums = rule.protocol.numbers
            if nums is not None and draw(st.integers(0, 4)):
                proto = draw(st.sampled_from(sorted(nums)))
            sport, dport = _port_in(draw, rule.source_ports), _port_in(draw, rule.destination_ports)
            lport, rport = (dport, sport) if inbound else (sport, dport)
        ports = proto in (6, 17)
        icmp_type = draw(st.sampled_from([None, 128, 129, 133, 135, 136, 143, 1])) if proto == 58 else None
        flow = Flow(direction, proto, local, remote, lport if ports else None, rport if ports else None, icmp_type)
        out.append((nic.nic, flow, draw(st.sampled_from(JUNK_PORTS))))
    return out


SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(st.data())
def test_host_placement_tracer_equals_semantics(data):
    """On host placement, each generated flow's traced verdict equals evaluate()'s, in both modes
    and with levels mixed by the fallback."""
    policy = policy_from_dict(data.draw(desired_state()))
    placement = host_placement(policy)
    flows = data.draw(host_flows(sorted(policy.nics), policy))
    # (mode, element bound): the third variant forces some levels onto the simple fallback
    for mode, bound in (("classify", 150_000), ("simple", 150_000), ("classify", 40)):
        rs = compile_ruleset(policy, placement, mode=mode, max_level_elements=bound, flow_logs=True)
        if bound > 40:
            assert rs.summary.modes_used in ((mode,), ())
        tr = Ruleset(rs.commands)
        for nic_name, flow, junk in flows:
            nic = policy.nics[nic_name]
            verdict = evaluate(nic, flow)
            expected = verdict.allowed
            got = trace(tr, host_packet(nic, placement.interfaces[nic_name], flow, junk))
            assert got.accepted == expected, (mode, nic_name, flow, got)
            check_flow_log_attribution(rs, verdict, flow.direction.value, got)


def check_flow_log_attribution(rs, verdict, direction: str, got) -> None:
    """Flow logs name the rule the semantics say decided: a denied packet met exactly one
    log statement, naming the deciding rule; an allowed one carries the id of the last
    allowing rule of its direction in the ct mark (or of the platform exemption)."""
    d = verdict.deciding
    if not verdict.allowed:
        assert len(got.logs) == 1, got
        parsed = flowmark.parse_prefix(got.logs[0])
        assert parsed is not None and parsed[0] == direction, got.logs
        if d is not None and d.rule is not None:
            assert parsed[1] == rule_comment(d.rule), (parsed, d)
        else:
            assert parsed[1].endswith("NoRuleMatched"), parsed
        return
    assert got.logs == [], got
    if d is None or d.rule is None or d.rule.log_name == "PlatformRule_AllowNeighborDiscovery":
        return  # no rule, or neighbour discovery (not tracked by conntrack: nothing to mark)
    ids = flowmark.ids_to_rules(rs.rule_index)
    slot = flowmark.decode_mark(got.ct_mark).get(direction)
    assert slot is not None, (got, d)
    named = ids[(direction, slot)]
    assert named in ((d.nsg or "", d.rule.log_name), ("", "PlatformRule_PlatformExemption")), (named, d)


@SETTINGS
@given(st.data())
def test_fabric_placement_tracer_equals_semantics(data):
    """On fabric placement, a packet's traced verdict equals sender-outbound AND receiver-inbound."""
    policy = policy_from_dict(data.draw(desired_state()))
    names = sorted(policy.nics)
    enforced = set(data.draw(st.one_of(st.none(), st.lists(st.sampled_from(names), unique=True, min_size=1))) or names)
    placement = FabricPlacement(None if enforced == set(names) else tuple(sorted(enforced)))
    nic_addrs = [str(a) for n in policy.nics.values() for a in n.addresses]
    pool = nic_addrs * 3 + EXTERNAL + BOUNDARIES + V6_REMOTE
    packets = []
    for _ in range(data.draw(st.integers(10, 30))):
        saddr = data.draw(st.sampled_from(pool))
        family = ipaddress.ip_address(saddr).version
        daddr = data.draw(st.sampled_from([a for a in pool if ipaddress.ip_address(a).version == family and a != saddr]))
        proto = data.draw(st.sampled_from(FLOW_PROTOCOLS))
        packets.append(Packet("forward", saddr, daddr, proto, _port(data.draw), _port(data.draw),
                              iifname="br-s1", oifname="br-s2"))
    for mode in ("classify", "simple"):
        tr = Ruleset(compile_ruleset(policy, placement, mode=mode).commands)
        for pkt in packets:
            expected = expected_fabric(policy, enforced, pkt.saddr, pkt.daddr, pkt.protocol, pkt.sport, pkt.dport)
            got = trace(tr, pkt)
            assert got.accepted == expected, (mode, pkt, got)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_every_delta_applied_to_the_model_is_a_fresh_load(data):
    """An edit's delta (kernel.delta) applied to the table model of the old ruleset gives the
    table a fresh full load of the new one gives: the same nft text, and every generated flow
    traced through both decides the same, with the same rules firing (the fake after a delta
    and the kernel after a replace are the same table)."""
    from nsg_agent.kernel.delta import delta
    from nsg_agent.kernel.state import NftRuleset

    old = policy_from_dict(data.draw(desired_state()))
    new = policy_from_dict(data.draw(desired_state()))
    # the NICs both states have, on the same interfaces, as an edit of one host's file keeps them
    from hypothesis import assume

    from nsg_agent.compiler import HostPlacement

    common = sorted(set(old.nics) & set(new.nics))
    assume(common)
    placement = HostPlacement({name: new.nics[name].interface or f"eth{i}" for i, name in enumerate(common)})
    for mode in ("classify", "simple"):
        a = compile_ruleset(old, placement, mode=mode).commands
        b = compile_ruleset(new, placement, mode=mode).commands
        d = delta(a, b, max_share=1.0)  # any size: the property is about correctness
        if d is None:
            continue  # structural change: the daemon replaces the table
        event(f"delta applied ({mode})")
        patched = NftRuleset.from_commands(a).apply(d)
        fresh = NftRuleset.from_commands(b)
        assert patched.dump() == fresh.dump()
        flows = data.draw(host_flows(common, new))
        for nic_name, flow, junk in flows:
            pkt = host_packet(new.nics[nic_name], placement.interfaces[nic_name], flow, junk)
            got, want = trace(Ruleset(patched), pkt), trace(Ruleset(fresh), pkt)
            assert (got.verdict, got.comments) == (want.verdict, want.comments), (mode, nic_name, flow)
