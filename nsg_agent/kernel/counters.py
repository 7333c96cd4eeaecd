"""Rule hit counters in Azure's terms (pure): the kernel counts per nft rule; users think in
NSG, direction and rule.

Each counted nft rule carries a comment (``<nsg>: UserRule_<name>``) and the compiler's rule
index says which NSG rule it stands for and which NICs use its chain ("nic/level-kind"). A
rule can be counted in several chains (IPv4 and IPv6 variants, a level resolved differently
for NICs in different VNets): ``by_rule`` sums them per NSG, direction and rule and keeps the
NICs whose traffic those chains see. NICs that share a chain share its counters (one chain
in the kernel, by design: identical resolved NSGs are compiled once), so a per-NIC figure is
exact only for a NIC whose chains it uses alone; ``nics`` says who shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from nsg_agent.compiler.results import RuleIndex


@dataclass
class RuleHits:
    nsg: str  # "" for platform rules
    direction: str
    rule: str  # Azure flow-log name: UserRule_x, DefaultRule_x, PlatformRule_x
    packets: int = 0
    bytes: int = 0
    nics: set[str] = field(default_factory=set)
    levels: set[str] = field(default_factory=set)  # "subnet", "nic", "platform"

    def as_dict(self) -> dict[str, Any]:
        return {"nsg": self.nsg, "direction": self.direction, "rule": self.rule, "packets": self.packets,
                "bytes": self.bytes, "nics": sorted(self.nics), "levels": sorted(self.levels)}


def by_rule(counters: dict, index: "RuleIndex") -> list[RuleHits]:
    """Kernel counters ({(chain, comment): RuleCounter}) summed per NSG, direction and rule,
    using the commit's rule index ((chain, comment) -> RuleRef: nsg, rule, direction, scope)."""
    out: dict[tuple[str, str, str], RuleHits] = {}
    for (chain, comment), ctr in counters.items():
        ref = index.lookup(chain, comment)
        if ref is None:
            continue  # structural rules (conntrack, loopback) and rules of no NSG
        key = (ref.nsg, ref.direction, ref.rule or comment)
        hits = out.setdefault(key, RuleHits(*key))
        hits.packets += int(getattr(ctr, "packets", 0))
        hits.bytes += int(getattr(ctr, "bytes", 0))
        for user in ref.scope:
            nic, _, level = user.partition("/")
            hits.nics.add(nic)
            hits.levels.add(level.replace("-platform", "") or "platform")
    return sorted(out.values(), key=lambda h: (h.nsg.lower(), h.direction, h.rule))


def for_nic(counters: dict, index: "RuleIndex",
            nic: str) -> dict[tuple[str, str, str, str], tuple[int, int, tuple[str, ...]]]:
    """The counters a NIC's rules met: (level kind, nsg, direction, rule) -> (packets, bytes,
    the NICs sharing those chains), for ``effective-rules --live``."""
    out: dict[tuple[str, str, str, str], list] = {}
    for (chain, comment), ctr in counters.items():
        ref = index.lookup(chain, comment)
        if ref is None:
            continue
        users = ref.scope
        for user in users:
            name, _, level = user.partition("/")
            if name.lower() != nic.lower():
                continue
            key = (level, ref.nsg, ref.direction, ref.rule or comment)
            acc = out.setdefault(key, [0, 0, set()])
            acc[0] += int(getattr(ctr, "packets", 0))
            acc[1] += int(getattr(ctr, "bytes", 0))
            acc[2].update(u.partition("/")[0] for u in users)
    return {k: (p, b, tuple(sorted(n))) for k, (p, b, n) in out.items()}


def totals(hits: Iterable[RuleHits]) -> tuple[int, int]:
    hits = list(hits)
    return sum(h.packets for h in hits), sum(h.bytes for h in hits)
