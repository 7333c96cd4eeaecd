"""The naive linear rendering of a policy, for comparison in the benchmarks ONLY.

This is what a simple tool would do: walk each NSG's rules in priority order and emit one nft
rule per expansion of (protocol x source prefix x destination prefix x source port range x
destination port range), each ending in its verdict. A packet pays for every rule before the
one that matches it. Nothing in the agent uses this module.

Layout (table ``inet nsg_naive``)::

    input  (hook input)   ct established,related accept; ct invalid drop;
                          iifname <nic iface> jump in_<k>
    in_<k>                jump in_<k>_0; jump in_<k>_1; accept      (the NIC's levels, in order)
    in_<k>_<level>        one rule per expansion: Allow -> return (on to the next level),
                          Deny -> drop; the level's defaults end it (DenyAllInBound)
    output / out_<k>...   the same for outbound, after two platform rules (the exemption of
                          168.63.129.16 and 169.254.169.254, and the SMTP block)

The platform-tag levels (AzurePlatformDNS/IMDS/LKM rules for exempt destinations) are not
rendered: the benchmarks measure the inbound path.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Iterable

from nsg_agent.desired.vocabulary import Access, Protocol
from nsg_agent.semantics.policy import AddressTerm, Level, NicPolicy, Policy, PortTerm, ResolvedRule

TABLE = "nsg_naive"
FAMILY = "inet"


def _cmd(verb: str, kind: str, **body: Any) -> dict[str, Any]:
    return {verb: {kind: {"family": FAMILY, "table": TABLE, **body}}}


def _addr_matches(term: AddressTerm, field: str) -> list[tuple[str | None, dict[str, Any] | None]]:
    """(family, match expr) per prefix; [(None, None)] when the term is '*'."""
    if term.any:
        return [(None, None)]
    out = []
    for p in term.prefixes:
        proto = "ip" if p.version == 4 else "ip6"
        right: Any = str(p.network_address) if p.prefixlen == p.max_prefixlen else {
            "prefix": {"addr": str(p.network_address), "len": p.prefixlen}}
        out.append((proto, {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": field}},
                                      "right": right}}))
    return out


def _port_matches(term: PortTerm, l4: str, field: str) -> list[dict[str, Any] | None]:
    if term.any:
        return [None]
    return [{"match": {"op": "==", "left": {"payload": {"protocol": l4, "field": field}},
                       "right": lo if lo == hi else {"range": [lo, hi]}}} for lo, hi in term.ranges]


def _l4_variants(rule: ResolvedRule) -> list[str | None]:
    """The transport headers to match: 'tcp'/'udp' for port rules, else a protocol name."""
    ports = not (rule.source_ports.any and rule.destination_ports.any)
    if rule.protocol is Protocol.ANY:
        return ["tcp", "udp"] if ports else [None]
    if rule.protocol in (Protocol.TCP, Protocol.UDP):
        return [rule.protocol.value.lower()]
    if ports:  # ICMP/ESP/AH with a port term never matches (semantics choice)
        return []
    return [rule.protocol.value.lower()]


_L4_NUMBERS = {"icmp": {"ip": 1, "ip6": 58, None: None}, "esp": 50, "ah": 51}


def expand(rule: ResolvedRule, verdict: dict[str, Any]) -> Iterable[list[dict[str, Any]]]:
    """Every nft rule (as an expression list) of one NSG rule's naive expansion."""
    for l4 in _l4_variants(rule):
        for (sfam, smatch), (dfam, dmatch) in itertools.product(
                _addr_matches(rule.source, "saddr"), _addr_matches(rule.destination, "daddr")):
            if sfam and dfam and sfam != dfam:
                continue
            fam = sfam or dfam
            proto_match: list[dict[str, Any]] = []
            if l4 in ("icmp", "esp", "ah"):
                num = _L4_NUMBERS[l4][fam] if l4 == "icmp" else _L4_NUMBERS[l4]
                right: Any = num if num is not None else {"set": [1, 58]}
                proto_match = [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": right}}]
            sports = _port_matches(rule.source_ports, l4, "sport") if l4 in ("tcp", "udp") else [None]
            dports = _port_matches(rule.destination_ports, l4, "dport") if l4 in ("tcp", "udp") else [None]
            for sp, dp in itertools.product(sports, dports):
                expr = [m for m in (smatch, dmatch, *proto_match, sp, dp) if m is not None]
                if l4 in ("tcp", "udp") and sp is None and dp is None:
                    expr.append({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": l4}})
                yield expr + [verdict]


def _level_rules(level: Level, chain: str) -> Iterable[dict[str, Any]]:
    for rule in level.rules:
        verdict = {"return": None} if rule.access is Access.ALLOW else {"drop": None}
        for expr in expand(rule, verdict):
            yield _cmd("add", "rule", chain=chain, expr=expr, comment=rule.log_name[:128])


def render(policy: Policy, interfaces: dict[str, str]) -> list[dict[str, Any]]:
    """Commands that replace table ``inet nsg_naive`` with the naive rendering of the NICs
    in ``interfaces`` (NIC name -> Linux interface)."""
    cmds: list[dict[str, Any]] = [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
    ]
    for hook in ("input", "output"):
        cmds.append(_cmd("add", "chain", name=hook, type="filter", hook=hook, prio=0, policy="accept"))
        cmds.append(_cmd("add", "rule", chain=hook, expr=[
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
            {"accept": None}]))
        cmds.append(_cmd("add", "rule", chain=hook, expr=[
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": None}]))
    for k, (nic_name, ifname) in enumerate(sorted(interfaces.items())):
        nic: NicPolicy = policy.nics[nic_name]
        for hook, prefix, levels, key in (("input", "in", nic.inbound, "iifname"),
                                          ("output", "out", nic.outbound, "oifname")):
            top = f"{prefix}_{k}"
            cmds.append(_cmd("add", "chain", name=top))
            cmds.append(_cmd("add", "rule", chain=hook, expr=[
                {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": ifname}},
                {"jump": {"target": top}}]))
            if prefix == "out":
                cmds += _outbound_platform(nic, top)
            for j, level in enumerate(levels):
                chain = f"{top}_{j}"
                cmds.append(_cmd("add", "chain", name=chain))
                cmds += list(_level_rules(level, chain))
                cmds.append(_cmd("add", "rule", chain=top, expr=[{"jump": {"target": chain}}]))
            cmds.append(_cmd("add", "rule", chain=top, expr=[{"accept": None}]))
    return cmds


def _outbound_platform(nic: NicPolicy, chain: str) -> list[dict[str, Any]]:
    out = []
    if nic.smtp_block is not None:
        for _fam, m in _addr_matches(nic.smtp_block, "daddr"):
            out.append(_cmd("add", "rule", chain=chain, expr=[
                m, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 25}},
                {"drop": None}], comment="PlatformRule_BlockOutboundSmtp"))
    if nic.platform_exempt is not None:
        for _fam, m in _addr_matches(nic.platform_exempt, "daddr"):
            out.append(_cmd("add", "rule", chain=chain, expr=[m, {"accept": None}],
                            comment="PlatformRule_PlatformExemption"))
    return out


def rule_count(commands: list[dict[str, Any]]) -> int:
    return sum(1 for c in commands if "add" in c and "rule" in c["add"])


def to_json(commands: list[dict[str, Any]]) -> str:
    return json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})
