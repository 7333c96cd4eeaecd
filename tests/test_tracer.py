"""The tracer itself, and a fixed table of nsg-semantics.md items walked through compiled
rulesets (ids name the item)."""

from __future__ import annotations

import pytest

from compiler_helpers import policy_from_dict
from nsg_agent.compiler import FabricPlacement, HostPlacement, compile_ruleset
from nsg_agent.kernel.tracer import Packet, UnsupportedExpression, trace

T = "t"


def _chain(name, hook=None, policy="accept"):
    c = {"family": "inet", "table": T, "name": name}
    if hook:
        c.update({"type": "filter", "hook": hook, "prio": 0, "policy": policy})
    return {"add": {"chain": c}}


def _rule(chain, *expr, comment=None):
    r = {"family": "inet", "table": T, "chain": chain, "expr": list(expr)}
    if comment:
        r["comment"] = comment
    return {"add": {"rule": r}}


def _m(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}
DPORT = {"payload": {"protocol": "th", "field": "dport"}}
L4 = {"meta": {"key": "l4proto"}}
TABLE = [{"add": {"table": {"family": "inet", "name": T}}}]


class TestTracerInterpretsJson:
    def test_jump_returns_and_goto_skips_rest(self):
        """A jumped chain that falls off returns to the caller; a goto'd one returns past it."""
        cmds = TABLE + [_chain("in", "input"), _chain("a"), _chain("b"),
                        _rule("in", {"jump": {"target": "a"}}),
                        _rule("in", {"counter": None}, {"drop": None}, comment="after-jump"),
                        _rule("a", {"goto": {"target": "b"}}),
                        _rule("a", {"accept": None}, comment="never"),
                        _rule("b", {"counter": None}, comment="in-b")]
        res = trace(cmds, Packet("input", "10.0.0.1", "10.0.0.2", 6, 1, 2))
        assert res.verdict == "drop"
        assert res.comments == ["in-b", "after-jump"]
        assert res.chains == ["in", "a", "b"]

    def test_interval_map_and_concat_lookup(self):
        """Named interval maps and anonymous concatenated maps with ranges and prefixes decide."""
        cmds = TABLE + [_chain("in", "input"), _chain("ok"),
                        {"add": {"map": {"family": "inet", "table": T, "name": "m", "type": "ipv4_addr",
                                         "map": "verdict", "flags": ["interval"], "elem": [
                                             [{"range": ["10.0.0.0", "10.0.0.9"]}, {"jump": {"target": "ok"}}],
                                             [{"prefix": {"addr": "10.1.0.0", "len": 16}}, {"drop": None}]]}}},
                        _rule("in", {"vmap": {"key": SADDR, "data": "@m"}}),
                        _rule("ok", {"vmap": {"key": {"concat": [L4, DPORT]}, "data": {"set": [
                            [{"concat": ["tcp", {"range": [80, 81]}]}, {"accept": None}]]}}}),
                        _rule("ok", {"drop": None}, comment="ok-end")]
        assert trace(cmds, Packet("input", "10.0.0.9", "1.1.1.1", 6, 5, 81)).verdict == "accept"
        assert trace(cmds, Packet("input", "10.0.0.9", "1.1.1.1", 6, 5, 82)).comments == ["ok-end"]
        assert trace(cmds, Packet("input", "10.1.2.3", "1.1.1.1", 17, 5, 80)).verdict == "drop"
        assert trace(cmds, Packet("input", "10.2.0.0", "1.1.1.1", 17, 5, 80)).verdict == "accept"

    def test_family_specific_payload_does_not_match_other_family(self):
        """``ip saddr`` never matches an IPv6 packet (the rule is skipped, not an error)."""
        cmds = TABLE + [_chain("in", "input"), _rule("in", _m(SADDR, {"prefix": {"addr": "0.0.0.0", "len": 0}}), {"drop": None})]
        assert trace(cmds, Packet("input", "2001:db8::1", "2001:db8::2", 6, 1, 2)).verdict == "accept"
        assert trace(cmds, Packet("input", "10.0.0.1", "10.0.0.2", 6, 1, 2)).verdict == "drop"

    def test_ct_state_flags_and_policy(self):
        """``ct state {established,related}`` matches either flag; the base policy applies last."""
        cmds = TABLE + [_chain("in", "input", policy="drop"),
                        _rule("in", _m({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None})]
        assert trace(cmds, Packet("input", "10.0.0.1", "10.0.0.2", 6, 1, 2, ct_state="related")).verdict == "accept"
        assert trace(cmds, Packet("input", "10.0.0.1", "10.0.0.2", 6, 1, 2, ct_state="new")).verdict == "drop"

    def test_other_hooks_and_deleted_tables_are_ignored(self):
        """Only base chains of the packet's hook run; a deleted table's chains are gone."""
        cmds = TABLE + [_chain("out", "output", policy="drop"),
                        {"add": {"table": {"family": "inet", "name": "x"}}},
                        {"add": {"chain": {"family": "inet", "table": "x", "name": "in", "type": "filter",
                                           "hook": "input", "prio": 0, "policy": "drop"}}},
                        {"delete": {"table": {"family": "inet", "name": "x"}}}]
        assert trace(cmds, Packet("input", "10.0.0.1", "10.0.0.2", 6, 1, 2)).verdict == "accept"

    def test_unknown_expression_is_refused(self):
        """JSON the tracer does not understand raises instead of being guessed at."""
        cmds = TABLE + [_chain("in", "input"), _rule("in", _m({"meta": {"key": "mark"}}, 1), {"drop": None})]
        with pytest.raises(UnsupportedExpression):
            trace(cmds, Packet("input", "10.0.0.1", "10.0.0.2", 6, 1, 2))


# --- nsg-semantics.md items through compiled rulesets ------------------------------------


def _rule_doc(name, prio, direction, access, proto="Tcp", src="*", dst="*", dport="*", sport="*"):
    r = {"name": name, "priority": prio, "direction": direction, "access": access, "protocol": proto,
         "sourcePortRange": sport, "destinationPortRange": dport}
    r["sourceApplicationSecurityGroups" if src.startswith("asg:") else "sourceAddressPrefix"] = \
        [src[4:]] if src.startswith("asg:") else src
    r["destinationApplicationSecurityGroups" if dst.startswith("asg:") else "destinationAddressPrefix"] = \
        [dst[4:]] if dst.startswith("asg:") else dst
    return r


def _state(subnet_rules=None, nic_rules=None, smtp="blocked", extra_nic_nsg=None):
    nsgs = []
    if subnet_rules is not None:
        nsgs.append({"name": "subnet-nsg", "securityRules": subnet_rules})
    if nic_rules is not None:
        nsgs.append({"name": "nic-nsg", "securityRules": nic_rules})
    return {
        "virtualNetworks": [
            {"name": "hub", "addressSpace": ["10.1.0.0/16"], "subnets": [
                {"name": "web", "addressPrefix": "10.1.1.0/24",
                 "networkSecurityGroup": "subnet-nsg" if subnet_rules is not None else None}]},
            {"name": "other", "addressSpace": ["10.9.0.0/16"], "subnets": [
                {"name": "s", "addressPrefix": "10.9.1.0/24", "networkSecurityGroup": extra_nic_nsg}]}],
        "networkInterfaces": [
            {"name": "web1", "subnet": "hub/web", "ipAddresses": ["10.1.1.4"], "interface": "eth0",
             "networkSecurityGroup": "nic-nsg" if nic_rules is not None else None,
             "applicationSecurityGroups": ["WebServers"]},
            {"name": "web2", "subnet": "hub/web", "ipAddresses": ["10.1.1.5"], "interface": "eth1",
             "applicationSecurityGroups": ["WebServers"]},
            {"name": "far1", "subnet": "other/s", "ipAddresses": ["10.9.1.4"], "interface": "eth2"}],
        "applicationSecurityGroups": [{"name": "WebServers"}],
        "networkSecurityGroups": nsgs,
        "platform": {"outboundSmtp": smtp},
    }


ALLOW80 = [_rule_doc("allow-80", 100, "Inbound", "Allow", dport="80")]
DENY80 = [_rule_doc("deny-80", 100, "Inbound", "Deny", dport="80")]
INET = "203.0.113.10"

# (id, state, hook, saddr, daddr, proto, sport, dport, ct_state, verdict, comment expected on the path)
CASES = [
    ("3-first-match-wins", _state(nic_rules=[_rule_doc("deny-80", 100, "Inbound", "Deny", dport="80"),
                                             _rule_doc("allow-80", 200, "Inbound", "Allow", dport="80")]),
     "input", INET, "10.1.1.4", 6, 40000, 80, "new", "drop", "nic-nsg: UserRule_deny-80"),
    ("3-lower-priority-number-first", _state(nic_rules=[_rule_doc("deny-80", 300, "Inbound", "Deny", dport="80"),
                                                        _rule_doc("allow-80", 200, "Inbound", "Allow", dport="80")]),
     "input", INET, "10.1.1.4", 6, 40000, 80, "new", "accept", "nic-nsg: UserRule_allow-80"),
    ("3-default-deny-all-inbound", _state(nic_rules=[]),
     "input", INET, "10.1.1.4", 6, 40000, 22, "new", "drop", "nic-nsg: DefaultRule_DenyAllInBound"),
    ("3-default-allow-vnet-inbound", _state(nic_rules=[]),
     "input", "10.1.1.5", "10.1.1.4", 17, 40000, 53, "new", "accept", "nic-nsg: DefaultRule_AllowVnetInBound"),
    ("6-host-vip-is-virtualnetwork", _state(nic_rules=[]),
     "input", "168.63.129.16", "10.1.1.4", 6, 40000, 8080, "new", "accept", "nic-nsg: DefaultRule_AllowVnetInBound"),
    ("3-default-allow-internet-outbound", _state(nic_rules=[]),
     "output", "10.1.1.4", INET, 6, 40000, 443, "new", "accept", "nic-nsg: DefaultRule_AllowInternetOutBound"),
    ("4-no-nsg-allows-everything", _state(),
     "input", INET, "10.1.1.4", 6, 40000, 22, "new", "accept", None),
    ("4-seed-port80-subnet-only", _state(subnet_rules=ALLOW80),
     "input", INET, "10.1.1.4", 6, 40000, 80, "new", "accept", "subnet-nsg: UserRule_allow-80"),
    ("4-seed-port80-nic-only", _state(nic_rules=ALLOW80),
     "input", INET, "10.1.1.4", 6, 40000, 80, "new", "accept", "nic-nsg: UserRule_allow-80"),
    ("4-both-levels-must-allow", _state(subnet_rules=ALLOW80, nic_rules=ALLOW80),
     "input", INET, "10.1.1.4", 6, 40000, 80, "new", "accept", "nic-nsg: UserRule_allow-80"),
    ("4-subnet-allows-nic-denies", _state(subnet_rules=ALLOW80, nic_rules=DENY80),
     "input", INET, "10.1.1.4", 6, 40000, 80, "new", "drop", "nic-nsg: UserRule_deny-80"),
    ("4-nic-allows-subnet-denies", _state(subnet_rules=DENY80, nic_rules=ALLOW80),
     "input", INET, "10.1.1.4", 6, 40000, 80, "new", "drop", "subnet-nsg: UserRule_deny-80"),
    ("4-outbound-nic-level-first", _state(
        subnet_rules=[_rule_doc("allow-out", 100, "Outbound", "Allow", dport="8080")],
        nic_rules=[_rule_doc("deny-out", 100, "Outbound", "Deny", dport="8080")]),
     "output", "10.1.1.4", INET, 6, 40000, 8080, "new", "drop", "nic-nsg: UserRule_deny-out"),
    ("5-established-accepted", _state(subnet_rules=DENY80, nic_rules=DENY80),
     "input", INET, "10.1.1.4", 6, 40000, 80, "established", "accept", "conntrack: established,related"),
    ("5-invalid-dropped", _state(),
     "input", INET, "10.1.1.4", 6, 40000, 80, "invalid", "drop", "conntrack: invalid"),
    ("6-asg-destination", _state(nic_rules=[_rule_doc("web", 100, "Inbound", "Allow", dst="asg:WebServers", dport="443")]),
     "input", INET, "10.1.1.4", 6, 40000, 443, "new", "accept", "nic-nsg: UserRule_web"),
    ("6-internet-tag-excludes-vnet", _state(nic_rules=[_rule_doc("deny-inet", 100, "Inbound", "Deny", src="Internet")]),
     "input", "10.1.1.5", "10.1.1.4", 6, 40000, 443, "new", "accept", "nic-nsg: DefaultRule_AllowVnetInBound"),
    ("7-smtp-blocked-to-internet", _state(),
     "output", "10.1.1.4", INET, 6, 40000, 25, "new", "drop", "PlatformRule_BlockOutboundSmtp"),
    ("7-smtp-allowed-setting", _state(smtp="allowed"),
     "output", "10.1.1.4", INET, 6, 40000, 25, "new", "accept", None),
    ("7-smtp-inside-vnet-not-blocked", _state(),
     "output", "10.1.1.4", "10.1.1.5", 6, 40000, 25, "new", "accept", None),
    ("7-platform-exempt-despite-deny-all", _state(nic_rules=[_rule_doc("deny-all-out", 100, "Outbound", "Deny", proto="*")]),
     "output", "10.1.1.4", "169.254.169.254", 6, 40000, 80, "new", "accept", "PlatformRule_PlatformExemption"),
    ("7-platform-tag-rule-denies", _state(nic_rules=[_rule_doc("no-dns", 100, "Outbound", "Deny", proto="Udp", dst="AzurePlatformDNS", dport="53")]),
     "output", "10.1.1.4", "168.63.129.16", 17, 40000, 53, "new", "drop", "nic-nsg: UserRule_no-dns"),
    ("2-ports-only-constrain-tcp-udp", _state(nic_rules=[_rule_doc("deny-any-80", 100, "Inbound", "Deny", proto="*", src="10.1.1.5", dport="80")]),
     "input", "10.1.1.5", "10.1.1.4", 1, 80, 80, "new", "accept", "nic-nsg: DefaultRule_AllowVnetInBound"),
    ("2-any-protocol-matches-esp", _state(nic_rules=[_rule_doc("deny-any", 100, "Inbound", "Deny", proto="*", src="10.1.1.5")]),
     "input", "10.1.1.5", "10.1.1.4", 50, 0, 0, "new", "drop", "nic-nsg: UserRule_deny-any"),
    ("2-icmp-rule-matches-icmp", _state(nic_rules=[_rule_doc("ping", 100, "Inbound", "Allow", proto="Icmp")]),
     "input", INET, "10.1.1.4", 1, 8, 0, "new", "accept", "nic-nsg: UserRule_ping"),
    ("2-port-range-edge", _state(nic_rules=[_rule_doc("range", 100, "Inbound", "Allow", proto="Udp", dport="1000-2000")]),
     "input", INET, "10.1.1.4", 17, 5, 2000, "new", "accept", "nic-nsg: UserRule_range"),
    ("2-port-range-past-edge", _state(nic_rules=[_rule_doc("range", 100, "Inbound", "Allow", proto="Udp", dport="1000-2000")]),
     "input", INET, "10.1.1.4", 17, 5, 2001, "new", "drop", "nic-nsg: DefaultRule_DenyAllInBound"),
    ("host-loopback-never-filtered", _state(nic_rules=[]),
     "input", "127.0.0.1", "127.0.0.1", 6, 40000, 22, "new", "accept", "loopback"),
    # §6: Internet is Azure's list, private space outside the VNet is neither tag
    ("6-internet-rule-skips-private-space", _state(nic_rules=[_rule_doc("allow-inet", 100, "Inbound", "Allow", src="Internet")]),
     "input", "172.31.0.100", "10.1.1.4", 6, 40000, 80, "new", "drop", "nic-nsg: DefaultRule_DenyAllInBound"),
    ("6-internet-rule-matches-public", _state(nic_rules=[_rule_doc("allow-inet", 100, "Inbound", "Allow", src="Internet")]),
     "input", "168.1.2.3", "10.1.1.4", 6, 40000, 80, "new", "accept", "nic-nsg: UserRule_allow-inet"),
    ("6-private-outside-vnet-denied-outbound", _state(nic_rules=[]),
     "output", "10.1.1.4", "172.31.0.100", 6, 40000, 80, "new", "drop", "nic-nsg: DefaultRule_DenyAllOutBound"),
    # §7: platform drops before any NSG, whatever it allows
    ("7-gre-dropped-inbound", _state(nic_rules=[_rule_doc("all", 100, "Inbound", "Allow")]),
     "input", "10.1.1.5", "10.1.1.4", 47, 0, 0, "new", "drop", "PlatformRule_BlockGre"),
    ("7-ipip-dropped-outbound", _state(nic_rules=[_rule_doc("all", 100, "Outbound", "Allow")]),
     "output", "10.1.1.4", "10.1.1.5", 4, 0, 0, "new", "drop", "PlatformRule_BlockIpInIp"),
    ("7-multicast-dropped", _state(nic_rules=[_rule_doc("all", 100, "Outbound", "Allow")]),
     "output", "10.1.1.4", "224.0.0.251", 17, 5353, 5353, "new", "drop", "PlatformRule_BlockMulticast"),
    ("7-subnet-broadcast-dropped", _state(nic_rules=[_rule_doc("all", 100, "Outbound", "Allow")]),
     "output", "10.1.1.4", "10.1.1.255", 17, 68, 67, "new", "drop", "PlatformRule_BlockBroadcast"),
    # neighbour solicitation (ICMPv6 type 135: th's first byte) passes before DenyAllInBound
    ("7-neighbour-discovery-passes", _state(nic_rules=[]),
     "input", "fe80::9", "ff02::1:ff00:4", 58, 135 << 8, 0, "new", "accept", "PlatformRule_AllowNeighborDiscovery"),
    ("7-limited-broadcast-dropped-inbound", _state(nic_rules=[_rule_doc("all", 100, "Inbound", "Allow")]),
     "input", "10.1.1.5", "255.255.255.255", 17, 67, 68, "new", "drop", "PlatformRule_BlockBroadcast"),
]


@pytest.mark.parametrize("mode", ["classify", "simple"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_semantics_item_through_host_ruleset(case, mode):
    """The compiled host ruleset gives the nsg-semantics.md item's verdict, via the named rule."""
    _, state, hook, saddr, daddr, proto, sport, dport, ct_state, verdict, comment = case
    policy = policy_from_dict(state)
    rs = compile_ruleset(policy, HostPlacement({"web1": "eth0", "web2": "eth1", "far1": "eth2"}), mode=mode)
    ifname = "lo" if saddr.startswith("127.") else "eth0"
    pkt = Packet(hook, saddr, daddr, proto, sport, dport, ct_state=ct_state,
                 iifname=ifname if hook == "input" else "", oifname=ifname if hook == "output" else "")
    res = trace(rs.commands, pkt)
    assert res.verdict == verdict
    if comment is not None:
        assert comment in res.comments


FABRIC_CASES = [
    ("4-intra-subnet-sender-outbound-applies", _state(nic_rules=[_rule_doc("deny-out", 100, "Outbound", "Deny", dport="22")]),
     "10.1.1.4", "10.1.1.5", 22, "drop", "nic-nsg: UserRule_deny-out"),
    ("4-intra-subnet-receiver-inbound-applies", _state(nic_rules=[_rule_doc("deny-in", 100, "Inbound", "Deny", dport="22")]),
     "10.1.1.5", "10.1.1.4", 22, "drop", "nic-nsg: UserRule_deny-in"),
    ("4-sender-and-receiver-both-allow", _state(nic_rules=[]),
     "10.1.1.4", "10.1.1.5", 22, "accept", "nic-nsg: DefaultRule_AllowVnetOutBound"),
    ("6-vnet-tag-per-vnet", _state(nic_rules=[], subnet_rules=[]),
     "10.9.1.4", "10.1.1.4", 22, "drop", "subnet-nsg: DefaultRule_DenyAllInBound"),
    ("fabric-external-only-nic-side", _state(nic_rules=ALLOW80),
     INET, "10.1.1.4", 80, "accept", "nic-nsg: UserRule_allow-80"),
]


@pytest.mark.parametrize("mode", ["classify", "simple"])
@pytest.mark.parametrize("case", FABRIC_CASES, ids=[c[0] for c in FABRIC_CASES])
def test_semantics_item_through_fabric_ruleset(case, mode):
    """In the lab fabric, NIC-to-NIC traffic meets the sender's outbound and the receiver's inbound."""
    _, state, saddr, daddr, dport, verdict, comment = case
    rs = compile_ruleset(policy_from_dict(state), FabricPlacement(), mode=mode)
    res = trace(rs.commands, Packet("forward", saddr, daddr, 6, 40000, dport, iifname="br0", oifname="br0"))
    assert res.verdict == verdict
    assert comment in res.comments
