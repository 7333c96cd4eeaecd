"""One NSG rule as matches (pure): as a box in the five dimensions the classifier splits
(``project``), and as nft match expressions for simple mode and the platform rules."""

from __future__ import annotations

from nsg_agent.compiler import expr as E
from nsg_agent.compiler.classify import Box, full_ranges
from nsg_agent.semantics.policy import AddressTerm, PortTerm, ResolvedRule


def _family_prefixes(term: AddressTerm, family: int) -> list | None:
    """Prefixes of one family; None means "any" (no match needed)."""
    if term.any:
        return None
    return [p for p in term.prefixes if p.version == family]


def catch_all(rule: ResolvedRule) -> bool:
    return (rule.protocol.numbers is None and rule.source.any and rule.destination.any
            and rule.source_ports.any and rule.destination_ports.any)


def addr_field(family: int, field_name: str) -> dict:
    return E.payload("ip" if family == 4 else "ip6", field_name)


def _intervals(term: AddressTerm, family: int) -> tuple | None:
    """The term's addresses of one family as sorted, disjoint, merged integer ranges; None
    when it has none of that family."""
    if term.any:
        return (full_ranges(family)[0],)
    ranges = getattr(term, "ranges", None)  # integer ranges straight from the policy
    if ranges is not None:
        return tuple(ranges(family)) or None
    nets = sorted((int(p.network_address), int(p.broadcast_address))
                  for p in term.prefixes if p.version == family)
    merged: list[list[int]] = []
    for lo, hi in nets:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged) or None


def project(rule: ResolvedRule, index: int, inbound: bool, family: int) -> Box | None:
    """The rule as a box in (remote, local, proto, sport, dport) for one family, or None
    when it cannot match that family (an address term without prefixes of it)."""
    remote, local = (rule.source, rule.destination) if inbound else (rule.destination, rule.source)
    r, loc = _intervals(remote, family), _intervals(local, family)
    if r is None or loc is None:
        return None
    nums = rule.protocol.numbers
    proto = ((0, 255),) if nums is None else tuple((n, n) for n in sorted(nums))
    ports_any = rule.source_ports.any and rule.destination_ports.any
    return Box(index, (r, loc, proto, rule.source_ports.ranges, rule.destination_ports.ranges), ports_any)


def addr_match(term: AddressTerm, family: int, field_name: str) -> list | None:
    prefixes = _family_prefixes(term, family)
    if prefixes is None:
        return []
    if not prefixes:
        return None
    return [E.match(addr_field(family, field_name), E.anon_set([E.net_value(p) for p in prefixes]))]


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
        src = addr_match(rule.source, family, "saddr")
        dst = addr_match(rule.destination, family, "daddr")
        if src is None or dst is None:
            continue
        if not src and not dst:
            continue  # unreachable: handled above
        out.append(src + dst + proto + ports)
    return out


def prefix_rules(term: AddressTerm, field_name: str) -> list[list]:
    """Match lists for "address in term" (one per family), [[]] for any."""
    if term.any:
        return [[]]
    out = []
    for family in (4, 6):
        m = addr_match(term, family, field_name)
        if m:
            out.append(m)
    return out
