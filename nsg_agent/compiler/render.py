"""compile_ruleset: a resolved Policy and a placement in, one nftables table out (pure).

Chain layout (see README.md beside this file for the hook diagrams):

    base chains   input/output (host) or forward (fabric): conntrack, then dispatch
    nic_<slug>_in / nic_<slug>_out   one per enforced NIC and direction: platform rules, then
                                     ``jump`` to each level chain in Azure's order
    nic_<slug>_pf                    outbound platform exemption: platform-tag levels, accept
    lvl_<h8>                         one NSG's rules for one direction as resolved for a VNet;
                                     shared by every NIC whose resolved rules are identical.
                                     Allow = ``return`` (go on to the next level), Deny = drop
    lvl_<h8>_c<k>                    classify mode: stage-2 chain of one address class
    lvl_<h8>_r<i>                    classify mode: rule i's counter + comment + verdict

Names are short and stable (content hashes), comments carry NSG and rule names.

This module is the layout: the base chains, the NIC chains and the summary. The pieces:
naming.py (table, chain and comment names), matches.py (a rule as matches and as a box),
levels.py (level chains, simple mode, the builder), classified.py (classify mode).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from nsg_agent.compiler import expr as E
from nsg_agent.compiler.classified import ElementCache
from nsg_agent.compiler.levels import Builder
from nsg_agent.compiler.matches import addr_field, prefix_rules
from nsg_agent.compiler.naming import (
    EXEMPT_COMMENT,
    ND_COMMENT,
    SMTP_COMMENT,
    TABLE_NAME,
    nic_slug,
    rule_comment,
)
from nsg_agent.compiler.placement import FabricPlacement, HostPlacement
from nsg_agent.compiler.results import NicLevel, NicSummary, RuleIndex, RuleRef, Summary
from nsg_agent.desired.vocabulary import NEIGHBOR_DISCOVERY_TYPES, Direction
from nsg_agent.semantics.policy import NicPolicy, Policy

MODES = ("classify", "simple")
# A level whose classification would need more map elements than this is rendered simply.
# The benchmark's maximum NSG (1,000 rules, 185k prefixes) needs 187k; simple mode would load
# about as many elements (its anonymous sets hold every prefix) and cost ~3x per connection.
MAX_LEVEL_ELEMENTS = 250_000


@dataclass
class Ruleset:
    """The compiled table. ``commands`` replace the table atomically when run as one batch;
    ``summary`` and ``rule_index`` describe it (compiler/results.py)."""

    commands: list[dict]
    summary: Summary
    rule_index: RuleIndex = field(default_factory=RuleIndex)

    def to_json(self) -> str:
        doc = {"nftables": [{"metainfo": {"json_schema_version": 1}}, *self.commands]}
        return json.dumps(doc, separators=(",", ":"))


# --- NIC chains and base chains --------------------------------------------------------


def _conntrack(b: Builder, chain: str) -> None:
    b.rule(chain, [E.match(E.ct("state"), ["established", "related"], "in"), E.counter(),
                   E.verdict("accept")], "conntrack: established,related")
    b.rule(chain, [E.match(E.ct("state"), "invalid", "in"), E.counter(), E.verdict("drop")],
           "conntrack: invalid")


def _platform_drops(b: Builder, nic: NicPolicy, chain: str, direction: Direction) -> None:
    """GRE, IP-in-IP, multicast and broadcast: dropped before any NSG, both directions."""
    for drop in nic.platform_drops:
        comment = rule_comment(drop.rule)
        ref = RuleRef("", comment, direction.value, chain, (nic.nic,))
        proto: list = []
        if drop.protocols is not None:
            proto.append(E.match(E.meta("l4proto"), E.anon_set(sorted(drop.protocols))))
        for number in sorted(drop.except_protocols):
            proto.append(E.match(E.meta("l4proto"), number, "!="))
        for m in (prefix_rules(drop.destination, "daddr") if drop.destination is not None else [[]]):
            b.counted(chain, m + proto + [E.counter(), E.verdict("drop")], comment, ref)


def _neighbor_discovery(b: Builder, nic: NicPolicy, chain: str, direction: Direction) -> None:
    """ICMPv6 neighbour discovery and MLD pass before any NSG (agent.policy)."""
    if not nic.neighbor_discovery:
        return
    ref = RuleRef("", ND_COMMENT, direction.value, chain, (nic.nic,))
    b.counted(chain, [E.match(E.meta("l4proto"), 58),
                      E.match(E.payload("icmpv6", "type"), E.anon_set(sorted(NEIGHBOR_DISCOVERY_TYPES))),
                      E.counter(), E.verdict("accept")], ND_COMMENT, ref, flow=False)


def _nic_chains(b: Builder, nic: NicPolicy, slug: str) -> tuple[str, str]:
    cin, cout, cpf = f"nic_{slug}_in", f"nic_{slug}_out", f"nic_{slug}_pf"
    b.chain(cin)
    b.chain(cout)
    _neighbor_discovery(b, nic, cin, Direction.INBOUND)
    _neighbor_discovery(b, nic, cout, Direction.OUTBOUND)
    _platform_drops(b, nic, cin, Direction.INBOUND)
    _platform_drops(b, nic, cout, Direction.OUTBOUND)
    for lv in nic.inbound:
        b.rule(cin, [E.verdict("jump", b.level(lv, Direction.INBOUND, False, f"{nic.nic}/{lv.kind.value}"))])
    if nic.smtp_block is not None:
        ref = RuleRef("", SMTP_COMMENT, Direction.OUTBOUND.value, cout, (nic.nic,))
        tcp25 = [E.match(E.meta("l4proto"), 6), E.match(E.payload("th", "dport"), 25)]
        for m in prefix_rules(nic.smtp_block, "daddr"):
            b.counted(cout, m + tcp25 + [E.counter(), E.verdict("drop")], SMTP_COMMENT, ref)
    if nic.platform_exempt is not None:
        b.chain(cpf)
        for m in prefix_rules(nic.platform_exempt, "daddr"):
            b.rule(cout, m + [E.verdict("goto", cpf)])
        for lv in nic.outbound_platform:
            user = f"{nic.nic}/{lv.kind.value}-platform"
            b.rule(cpf, [E.verdict("jump", b.level(lv, Direction.OUTBOUND, True, user))])
        b.counted(cpf, [E.counter(), E.verdict("accept")], EXEMPT_COMMENT,
                  RuleRef("", EXEMPT_COMMENT, Direction.OUTBOUND.value, cpf, (nic.nic,)))
    for lv in nic.outbound:
        b.rule(cout, [E.verdict("jump", b.level(lv, Direction.OUTBOUND, False, f"{nic.nic}/{lv.kind.value}"))])
    return cin, cout


def _find_nic(policy: Policy, name: str) -> NicPolicy:
    if name in policy.nics:
        return policy.nics[name]
    for key, nic in policy.nics.items():
        if key.lower() == name.lower():
            return nic
    raise ValueError(f"placement names NIC {name!r}, which the policy does not have")


def compile_ruleset(policy: Policy, placement: HostPlacement | FabricPlacement, *,
                    mode: str = "classify", max_level_elements: int = MAX_LEVEL_ELEMENTS,
                    elements: ElementCache | None = None, flow_logs: bool = False) -> Ruleset:
    """Compile ``policy`` for ``placement`` into commands replacing table inet nsg_agent.

    ``mode`` "classify": per level a two-stage class lookup (verdict maps); a level whose
    maps would exceed ``max_level_elements`` falls back to "simple" (one nft rule per NSG
    rule with anonymous sets). The summary records the mode each level actually got.

    ``flow_logs``: also emit what flow logs read (compiler/flowmark.py): a rate-limited NFLOG
    ``log`` before every counted drop and the deciding rule's id in the ct mark of every
    counted allow. Off unless the agent collects flow logs (``run --flow-logs``, ``lab run``):
    a table without them costs nothing for logs nobody reads and leaves the ct mark alone.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    elements = elements if elements is not None else ElementCache()
    elements.next_compile()
    b = Builder(policy, mode, max_level_elements, elements, flow_logs)
    table = E.table_obj(TABLE_NAME)
    # NIC -> (interface, addresses, inbound chain, outbound chain); levels are added at the end
    nic_chains: dict[str, tuple[str | None, tuple[str, ...] | None, str, str]] = {}

    if isinstance(placement, HostPlacement):
        chosen: list[tuple[NicPolicy, str]] = []
        used_if: dict[str, str] = {}
        for name, ifname in sorted(placement.interfaces.items()):
            if not ifname:
                continue
            nic = _find_nic(policy, name)
            if ifname in used_if:
                raise ValueError(f"interface {ifname!r} is given to both {used_if[ifname]!r} and {nic.nic!r}")
            used_if[ifname] = nic.nic
            chosen.append((nic, ifname))
        b.chain("input", hook="input")
        b.chain("output", hook="output")
        dispatch_in, dispatch_out = [], []
        for nic, ifname in chosen:
            cin, cout = _nic_chains(b, nic, nic_slug(nic.nic))
            dispatch_in.append([ifname, E.verdict("jump", cin)])
            dispatch_out.append([ifname, E.verdict("jump", cout)])
            nic_chains[nic.nic] = (ifname, None, cin, cout)
        for base, key, dispatch in (("input", "iifname", dispatch_in), ("output", "oifname", dispatch_out)):
            _conntrack(b, base)
            b.rule(base, [E.match(E.meta(key), "lo"), E.verdict("accept")], "loopback")
            if dispatch:
                b.rule(base, [E.vmap(E.meta(key), {"set": sorted(dispatch, key=lambda e: e[0])})])
                b.elements += len(dispatch)
        placement_name = "host"
    elif isinstance(placement, FabricPlacement):
        names = sorted(policy.nics) if placement.nics is None else sorted(
            _find_nic(policy, n).nic for n in placement.nics)
        b.chain("forward", hook="forward")
        by_addr: dict[Any, str] = {}
        src: dict[int, list] = {4: [], 6: []}
        dst: dict[int, list] = {4: [], 6: []}
        for name in names:
            nic = policy.nics[name]
            cin, cout = _nic_chains(b, nic, nic_slug(nic.nic))
            for addr in sorted(nic.addresses, key=lambda a: (a.version, int(a))):
                if addr in by_addr:
                    raise ValueError(f"address {addr} belongs to both {by_addr[addr]!r} and {nic.nic!r}")
                by_addr[addr] = nic.nic
                src[addr.version].append([str(addr), E.verdict("jump", cout)])
                dst[addr.version].append([str(addr), E.verdict("jump", cin)])
            nic_chains[nic.nic] = (None, tuple(str(a) for a in nic.addresses), cin, cout)
        _conntrack(b, "forward")
        for field_name, table_ in (("saddr", src), ("daddr", dst)):
            for family in (4, 6):
                elems = sorted(table_[family], key=lambda e: int(ipaddress.ip_address(e[0])))
                if elems:
                    b.rule("forward", [E.vmap(addr_field(family, field_name), {"set": elems})])
                    b.elements += len(elems)
        b.rule("forward", [E.verdict("accept")])
        placement_name = "fabric"
    else:
        raise TypeError(f"unknown placement {placement!r}")

    b.render_levels()
    b.number_marks()
    levels_by_nic: dict[str, dict[str, list[NicLevel]]] = {}
    for name, lv in b.levels.items():
        for user in lv.users:
            nic_name, _, kind = user.partition("/")
            levels_by_nic.setdefault(nic_name, {}).setdefault(kind, []).append(
                NicLevel(chain=name, nsg=lv.nsg, direction=lv.direction.value, mode=b.level_summary[name].mode))
    nics = {nic_name: NicSummary(inbound=cin, outbound=cout, interface=ifname, addresses=addresses,
                                 levels={kind: tuple(v) for kind, v in levels_by_nic.get(nic_name, {}).items()})
            for nic_name, (ifname, addresses, cin, cout) in nic_chains.items()}

    commands = [{"add": table}, {"delete": table}, {"add": table}]
    commands += [{"add": c} for c in b.chains]
    commands += [{"add": m} for m in b.maps]
    commands += [{"add": r} for r in b.rules]
    summary = Summary(
        table=f"inet {TABLE_NAME}", placement=placement_name, mode=mode,
        modes_used=tuple(sorted({info.mode for info in b.level_summary.values()})),
        chains=len(b.chains), rules=len(b.rules), sets=len(b.maps), set_elements=b.elements,
        nics=nics, levels=b.level_summary)
    return Ruleset(commands=commands, summary=summary, rule_index=RuleIndex(b.rule_index))
