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
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from agent.compiler import expr as E
from agent.compiler.classify import D_REMOTE, Box, Decomposer, TooLarge, full_ranges
from agent.compiler.placement import FabricPlacement, HostPlacement
from agent.policy import (
    Access,
    AddressTerm,
    Direction,
    Level,
    NicPolicy,
    Policy,
    PortTerm,
    ResolvedRule,
)

TABLE_NAME = "nsg_agent"
MODES = ("classify", "simple")
# A level whose classification would need more map elements than this is rendered simply.
# Measured here: 108k elements (1,000 rules x 100 prefixes) replace in 2.4 s, so 150k keeps
# an apply within a few seconds.
MAX_LEVEL_ELEMENTS = 150_000
# Bound on decomposition work (pieces examined) so a pathological level fails over fast.
MAX_LEVEL_WORK = 600_000
COMMENT_MAX = 128  # nft refuses longer comments

SMTP_COMMENT = "PlatformRule_BlockOutboundSmtp"
EXEMPT_COMMENT = "PlatformRule_PlatformExemption"


@dataclass(frozen=True)
class RuleRef:
    """What one counted nft rule stands for. ``scope`` lists the users as "nic/level-kind"
    (a shared level chain counts for all of them together)."""

    nsg: str
    rule: str  # Azure flow-log name: UserRule_x / DefaultRule_x / PlatformRule_x
    direction: str
    chain: str
    scope: tuple[str, ...]


@dataclass
class Ruleset:
    """The compiled table. ``commands`` replace the table atomically when run as one batch."""

    commands: list[dict]
    summary: dict
    rule_index: dict[tuple[str, str], RuleRef] = field(default_factory=dict)

    def to_json(self) -> str:
        doc = {"nftables": [{"metainfo": {"json_schema_version": 1}}, *self.commands]}
        return json.dumps(doc, separators=(",", ":"))


# --- helpers ------------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _comment(text: str) -> str:
    if len(text.encode()) <= COMMENT_MAX:
        return text
    return text[: COMMENT_MAX - 10] + "~" + _digest(text)[:8]


def rule_comment(rule: ResolvedRule) -> str:
    return _comment(f"{rule.nsg}: {rule.log_name}" if rule.nsg else rule.log_name)


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if s == name and len(s) <= 20:
        return s
    return f"{s[:12]}_{_digest(name)[:6]}"


def _family_prefixes(term: AddressTerm, family: int) -> list | None:
    """Prefixes of one family; None means "any" (no match needed)."""
    if term.any:
        return None
    return [p for p in term.prefixes if p.version == family]


def _catch_all(rule: ResolvedRule) -> bool:
    return (rule.protocol.numbers is None and rule.source.any and rule.destination.any
            and rule.source_ports.any and rule.destination_ports.any)


def _addr_field(family: int, field_name: str) -> dict:
    return E.payload("ip" if family == 4 else "ip6", field_name)


# --- level rendering ----------------------------------------------------------------------


@dataclass
class _Level:
    """One level chain to emit (shared by all NICs with identical resolved rules)."""

    name: str
    nsg: str
    direction: Direction
    platform: bool  # an outbound_platform level: no match means "next level"
    rules: tuple[ResolvedRule, ...]
    users: list[str] = field(default_factory=list)


class _Builder:
    def __init__(self, policy: Policy, mode: str, max_elements: int):
        self.policy = policy
        self.mode = mode
        self.max_elements = max_elements
        self.chains: list[dict] = []  # chain objects, in order
        self.maps: list[dict] = []
        self.rules: list[dict] = []
        self.rule_index: dict[tuple[str, str], RuleRef] = {}
        self.levels: dict[str, _Level] = {}
        self._level_by_key: dict[str, str] = {}
        self.level_summary: dict[str, dict] = {}
        self.elements = 0

    # objects ----------------------------------------------------------------------------
    def chain(self, name: str, **kw: Any) -> None:
        self.chains.append(E.chain_obj(TABLE_NAME, name, **kw))

    def rule(self, chain: str, exprs: list, comment: str | None = None) -> None:
        self.rules.append(E.rule_obj(TABLE_NAME, chain, exprs, comment))

    def counted(self, chain: str, exprs: list, comment: str, ref: RuleRef) -> None:
        self.rule(chain, exprs, comment)
        self.rule_index[(chain, comment)] = ref

    # levels -----------------------------------------------------------------------------
    def level(self, lv: Level, direction: Direction, platform: bool, user: str) -> str:
        """The chain name for this level's resolved content (created once per content)."""
        key = repr((direction.value, platform, lv.nsg, lv.rules))
        digest = _digest(key)
        if key in self._level_by_key:
            name = self._level_by_key[key]
        else:
            n = 8
            while f"lvl_{digest[:n]}" in self.levels:
                n += 2
            name = f"lvl_{digest[:n]}"
            self._level_by_key[key] = name
            self.levels[name] = _Level(name, lv.nsg, direction, platform, lv.rules)
        self.levels[name].users.append(user)
        return name

    def render_levels(self) -> None:
        for name, lv in self.levels.items():
            info = {"nsg": lv.nsg, "direction": lv.direction.value, "platform": lv.platform,
                    "rules": len(lv.rules), "users": list(lv.users)}
            mode = self.mode
            if mode == "classify":
                try:
                    plan = self._classify(lv)
                except TooLarge as e:
                    plan = None
                    info["fallback"] = str(e)
                if plan is not None:
                    self._emit_classified(lv, plan)
                    info["elements"] = plan["elements"]
                    info["classes"] = plan["classes"]
                else:
                    mode = "simple"
            if mode == "simple":
                self._emit_simple(lv)
            info["mode"] = mode
            self.level_summary[name] = info

    def _ref(self, lv: _Level, rule: ResolvedRule, chain: str) -> RuleRef:
        return RuleRef(nsg=rule.nsg, rule=rule.log_name, direction=lv.direction.value,
                       chain=chain, scope=tuple(lv.users))

    def _fallthrough(self, lv: _Level, chain: str) -> None:
        """A regular level that matched no rule denies (evaluate's rule=None case); a
        platform level returns (implicitly) and the next level decides."""
        if not lv.platform:
            comment = _comment(f"{lv.nsg}: NoRuleMatched")
            self.counted(chain, [E.counter(), E.verdict("drop")], comment,
                         RuleRef(lv.nsg, "NoRuleMatched", lv.direction.value, chain, tuple(lv.users)))

    # simple mode ------------------------------------------------------------------------
    def _emit_simple(self, lv: _Level) -> None:
        self.chain(lv.name)
        for rule in lv.rules:
            comment = rule_comment(rule)
            tail = [E.counter(), E.verdict("return" if rule.access is Access.ALLOW else "drop")]
            for exprs in simple_matches(rule):
                self.counted(lv.name, exprs + tail, comment, self._ref(lv, rule, lv.name))
        if not any(_catch_all(r) for r in lv.rules):
            self._fallthrough(lv, lv.name)

    # classify mode ----------------------------------------------------------------------
    def _classify(self, lv: _Level) -> dict | None:
        inbound = lv.direction is Direction.INBOUND
        plan: dict[str, Any] = {"families": {}, "elements": 0, "classes": 0}
        total = 0
        for family in (4, 6):
            boxes = [b for i, r in enumerate(lv.rules) if (b := project(r, i, inbound, family))]
            if not boxes:
                continue
            dec = Decomposer(boxes, family, MAX_LEVEL_WORK)
            stage1 = dec.stage1()
            if not stage1:
                continue
            cache: dict[int, int] = {}
            background = _background(dec, stage1, family)
            classes = []
            seen = set()
            for _, child in stage1:
                if dec.nodes[child][0] != "leaf" and child not in seen:
                    seen.add(child)
                    classes.append(child)
            in_map = sum(1 for _, child in stage1 if child != background)
            total += in_map + sum(dec.size(c, cache) for c in classes)
            if total > self.max_elements:
                raise TooLarge(f"{total}+ elements > {self.max_elements}")
            plan["families"][family] = (dec, stage1, classes, background)
            plan["classes"] += len(classes)
        plan["elements"] = total
        return plan

    def _emit_classified(self, lv: _Level, plan: dict) -> None:
        inbound = lv.direction is Direction.INBOUND
        remote_field, local_field = ("saddr", "daddr") if inbound else ("daddr", "saddr")
        self.chain(lv.name)
        rule_chains: dict[int, str] = {}

        def target(index: int) -> dict:
            if index not in rule_chains:
                rule_chains[index] = f"{lv.name}_r{index}"
            return E.verdict("goto", rule_chains[index])

        class_chains: list[tuple[str, int, list]] = []
        class_no = 0
        stage1_rules = []
        for family, (dec, stage1, classes, background) in sorted(plan["families"].items()):
            names = {}
            for child in classes:
                names[child] = f"{lv.name}_c{class_no}"
                class_no += 1

            def goto(child: int) -> dict:
                kind, payload = dec.nodes[child]
                return target(payload) if kind == "leaf" else E.verdict("goto", names[child])

            elements = [[E.addr_value(family, lo, hi), goto(child)]
                        for (lo, hi), child in stage1 if child != background]
            if elements:
                map_name = f"{lv.name}_{family}"
                self.maps.append(E.map_obj(TABLE_NAME, map_name,
                                           "ipv4_addr" if family == 4 else "ipv6_addr", elements))
                self.elements += len(elements)
                stage1_rules.append([E.vmap(_addr_field(family, remote_field), "@" + map_name)])
            if background is not None:
                # The class most pieces map to is left out of the map: whatever the map
                # does not hold (of this family) is that class.
                stage1_rules.append([E.match(E.meta("nfproto"), "ipv4" if family == 4 else "ipv6"),
                                     goto(background)])
            for child in classes:
                entries = []
                for (local, proto, sport, dport), index in dec.flatten(child, D_REMOTE + 1):
                    key = E.concat([E.addr_value(family, *local), E.int_value(*proto),
                                    E.int_value(*sport), E.int_value(*dport)])
                    entries.append([key, target(index)])
                class_chains.append((names[child], family, entries))
        for exprs in stage1_rules:
            self.rule(lv.name, exprs)
        self._fallthrough(lv, lv.name)
        for name, family, entries in class_chains:
            self.chain(name)
            key = E.concat([_addr_field(family, local_field), E.meta("l4proto"),
                            E.payload("th", "sport"), E.payload("th", "dport")])
            self.rule(name, [E.vmap(key, {"set": entries})])
            self.elements += len(entries)
            self._fallthrough(lv, name)
        for index, name in sorted(rule_chains.items()):
            rule = lv.rules[index]
            comment = rule_comment(rule)
            self.chain(name)
            self.counted(name, [E.counter(), E.verdict("return" if rule.access is Access.ALLOW else "drop")],
                         comment, self._ref(lv, rule, name))


def _background(dec: Decomposer, stage1: list, family: int) -> int | None:
    """The child most stage-1 pieces lead to, when the pieces cover the family's whole
    address space (so "not in the map" means exactly that child); else None."""
    lo_all, hi_all = full_ranges(family)[D_REMOTE]
    if sum(hi - lo + 1 for (lo, hi), _ in stage1) != hi_all - lo_all + 1:
        return None
    counts: dict[int, int] = {}
    for _, child in stage1:
        counts[child] = counts.get(child, 0) + 1
    return max(counts, key=lambda c: counts[c])  # first of the most frequent (dicts keep order)


# --- projections and simple matches ------------------------------------------------------


def _intervals(term: AddressTerm, family: int) -> tuple | None:
    if term.any:
        return (full_ranges(family)[0],)
    nets = sorted((int(p.network_address), int(p.broadcast_address))
                  for p in term.prefixes if p.version == family)
    return tuple(nets) if nets else None


def project(rule: ResolvedRule, index: int, inbound: bool, family: int) -> Box | None:
    """The rule as a box in (remote, local, proto, sport, dport) for one family, or None
    when it cannot match that family (an address term without prefixes of it)."""
    remote, local = (rule.source, rule.destination) if inbound else (rule.destination, rule.source)
    r, l = _intervals(remote, family), _intervals(local, family)
    if r is None or l is None:
        return None
    nums = rule.protocol.numbers
    proto = ((0, 255),) if nums is None else tuple((n, n) for n in sorted(nums))
    ports_any = rule.source_ports.any and rule.destination_ports.any
    return Box(index, (r, l, proto, rule.source_ports.ranges, rule.destination_ports.ranges), ports_any)


def _addr_match(term: AddressTerm, family: int, field_name: str) -> list | None:
    prefixes = _family_prefixes(term, family)
    if prefixes is None:
        return []
    if not prefixes:
        return None
    return [E.match(_addr_field(family, field_name), E.anon_set([E.net_value(p) for p in prefixes]))]


def _port_match(term: PortTerm, field_name: str) -> list:
    if term.any:
        return []
    return [E.match(E.payload("th", field_name), E.int_set(term.ranges))]


def simple_matches(rule: ResolvedRule) -> list[list]:
    """The match expressions of one NSG rule as nft rules (one per address family when an
    address term is restricted; none when it can match nothing)."""
    nums = rule.protocol.numbers
    ports = _port_match(rule.source_ports, "sport") + _port_match(rule.destination_ports, "dport")
    proto: list = []
    if nums is not None:
        numbers = sorted(nums) if not ports else sorted(nums & {6, 17})
        if not numbers:
            return []
        proto = [E.match(E.meta("l4proto"), E.anon_set(numbers))]
    elif ports:
        proto = [E.match(E.meta("l4proto"), E.anon_set([6, 17]))]
    if rule.source.any and rule.destination.any:
        return [proto + ports]
    out = []
    for family in (4, 6):
        src = _addr_match(rule.source, family, "saddr")
        dst = _addr_match(rule.destination, family, "daddr")
        if src is None or dst is None:
            continue
        if not src and not dst:
            continue  # unreachable: handled above
        out.append(src + dst + proto + ports)
    return out


# --- NIC chains and base chains --------------------------------------------------------


def _prefix_rules(term: AddressTerm, field_name: str) -> list[list]:
    """Match lists for "address in term" (one per family), [[]] for any."""
    if term.any:
        return [[]]
    out = []
    for family in (4, 6):
        m = _addr_match(term, family, field_name)
        if m:
            out.append(m)
    return out


def _conntrack(b: _Builder, chain: str) -> None:
    b.rule(chain, [E.match(E.ct("state"), ["established", "related"], "in"), E.counter(),
                   E.verdict("accept")], "conntrack: established,related")
    b.rule(chain, [E.match(E.ct("state"), "invalid", "in"), E.counter(), E.verdict("drop")],
           "conntrack: invalid")


def _nic_chains(b: _Builder, nic: NicPolicy, slug: str) -> tuple[str, str]:
    cin, cout, cpf = f"nic_{slug}_in", f"nic_{slug}_out", f"nic_{slug}_pf"
    b.chain(cin)
    b.chain(cout)
    for lv in nic.inbound:
        b.rule(cin, [E.verdict("jump", b.level(lv, Direction.INBOUND, False, f"{nic.nic}/{lv.kind.value}"))])
    if nic.smtp_block is not None:
        ref = RuleRef("", SMTP_COMMENT, Direction.OUTBOUND.value, cout, (nic.nic,))
        tcp25 = [E.match(E.meta("l4proto"), 6), E.match(E.payload("th", "dport"), 25)]
        for m in _prefix_rules(nic.smtp_block, "daddr"):
            b.counted(cout, m + tcp25 + [E.counter(), E.verdict("drop")], SMTP_COMMENT, ref)
    if nic.platform_exempt is not None:
        b.chain(cpf)
        for m in _prefix_rules(nic.platform_exempt, "daddr"):
            b.rule(cout, m + [E.verdict("goto", cpf)])
        for lv in nic.outbound_platform:
            b.rule(cpf, [E.verdict("jump", b.level(lv, Direction.OUTBOUND, True, f"{nic.nic}/{lv.kind.value}-platform"))])
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
                    mode: str = "classify", max_level_elements: int = MAX_LEVEL_ELEMENTS) -> Ruleset:
    """Compile ``policy`` for ``placement`` into commands replacing table inet nsg_agent.

    ``mode`` "classify": per level a two-stage class lookup (verdict maps); a level whose
    maps would exceed ``max_level_elements`` falls back to "simple" (one nft rule per NSG
    rule with anonymous sets). The summary records the mode each level actually got.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    b = _Builder(policy, mode, max_level_elements)
    table = E.table_obj(TABLE_NAME)
    nic_summary: dict[str, dict] = {}

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
            cin, cout = _nic_chains(b, nic, _slug(nic.nic))
            dispatch_in.append([ifname, E.verdict("jump", cin)])
            dispatch_out.append([ifname, E.verdict("jump", cout)])
            nic_summary[nic.nic] = {"interface": ifname, "inbound": cin, "outbound": cout}
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
            cin, cout = _nic_chains(b, nic, _slug(nic.nic))
            for addr in sorted(nic.addresses, key=lambda a: (a.version, int(a))):
                if addr in by_addr:
                    raise ValueError(f"address {addr} belongs to both {by_addr[addr]!r} and {nic.nic!r}")
                by_addr[addr] = nic.nic
                src[addr.version].append([str(addr), E.verdict("jump", cout)])
                dst[addr.version].append([str(addr), E.verdict("jump", cin)])
            nic_summary[nic.nic] = {"addresses": [str(a) for a in nic.addresses],
                                    "inbound": cin, "outbound": cout}
        _conntrack(b, "forward")
        for field_name, table_ in (("saddr", src), ("daddr", dst)):
            for family in (4, 6):
                elems = sorted(table_[family], key=lambda e: int(ipaddress.ip_address(e[0])))
                if elems:
                    b.rule("forward", [E.vmap(_addr_field(family, field_name), {"set": elems})])
                    b.elements += len(elems)
        b.rule("forward", [E.verdict("accept")])
        placement_name = "fabric"
    else:
        raise TypeError(f"unknown placement {placement!r}")

    b.render_levels()
    levels_by_nic: dict[str, dict] = {}
    for name, lv in b.levels.items():
        for user in lv.users:
            nic_name = user.split("/", 1)[0]
            levels_by_nic.setdefault(nic_name, {}).setdefault(user.split("/", 1)[1], []).append(
                {"chain": name, "nsg": lv.nsg, "direction": lv.direction.value,
                 "mode": b.level_summary[name]["mode"]})
    for nic_name, info in nic_summary.items():
        info["levels"] = levels_by_nic.get(nic_name, {})

    commands = [{"add": table}, {"delete": table}, {"add": table}]
    commands += [{"add": c} for c in b.chains]
    commands += [{"add": m} for m in b.maps]
    commands += [{"add": r} for r in b.rules]
    modes_used = sorted({info["mode"] for info in b.level_summary.values()})
    summary = {
        "table": f"inet {TABLE_NAME}",
        "placement": placement_name,
        "mode": mode,
        "modes_used": modes_used,
        "chains": len(b.chains),
        "rules": len(b.rules),
        "sets": len(b.maps),
        "set_elements": b.elements,
        "nics": nic_summary,
        "levels": b.level_summary,
    }
    return Ruleset(commands=commands, summary=summary, rule_index=b.rule_index)
