"""What a reviewer needs to approve a change (pure): per-rule field changes, rules that can
never match (shadowed by higher-priority rules), and the live connections a change revokes.

- ``rule_changes(old, new)``: per NSG and rule, added / removed / changed, and for a changed
  rule each field old -> new; prefix lists are summarised with their counts and the first
  differences (a 4,000-prefix list is not printed whole).
- ``shadowed_rules(policy)``: rules that match nothing because the rules above them in the
  same NSG and direction already decide every packet they could match. Exact: the level's
  first-match decomposition (nsg_agent.compiler.classify, the one the compiler renders) is
  walked, and a rule no piece of the space reaches first is shadowed.
- ``revocations(old, new, entries)``: live flows (conntrack entries) that the old policy
  allows and the new one denies: cut now when an NSG of the NIC sets ``flushConnection``,
  else they live on (Azure's default) but would be refused if opened again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from nsg_agent.compiler.classify import LEAF, NODE, Decomposer, TooLarge
from nsg_agent.compiler.matches import project
from nsg_agent.desired.model import DesiredState, SecurityRule
from nsg_agent.desired.vocabulary import Direction
from nsg_agent.host.conntrack import CtFlow, denied_entries
from nsg_agent.semantics.policy import Level, Policy

LIST_SHOWN = 3  # differences shown per prefix list
RULE_FIELDS = ("priority", "direction", "access", "protocol",
               "source", "sourcePorts", "destination", "destinationPorts", "description")
SHADOW_BUDGET = 200_000


# --- per-rule changes ---------------------------------------------------------------------


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: str
    new: str

    def as_dict(self) -> dict:
        return {"field": self.field, "old": self.old, "new": self.new}


@dataclass(frozen=True)
class RuleChange:
    nsg: str
    rule: str
    kind: str  # "added", "removed", "changed"
    direction: str
    fields: tuple[FieldChange, ...] = ()

    def as_dict(self) -> dict:
        return {"nsg": self.nsg, "rule": self.rule, "kind": self.kind, "direction": self.direction,
                "fields": [f.as_dict() for f in self.fields]}


def _side(rule: SecurityRule, side: str) -> list[str]:
    groups = getattr(rule, f"{side}ApplicationSecurityGroups")
    if groups:
        return [f"ASG {g}" for g in groups]
    return rule.address_items(side) or ["*"]


def rule_fields(rule: SecurityRule) -> dict[str, list[str]]:
    """A rule's meaning as comparable lists of text (what a reviewer reads)."""
    return {
        "priority": [str(rule.priority)], "direction": [rule.direction.value],
        "access": [rule.access.value], "protocol": [rule.protocol.value],
        "source": _side(rule, "source"), "sourcePorts": rule.port_items("source"),
        "destination": _side(rule, "destination"), "destinationPorts": rule.port_items("destination"),
        "description": [rule.description or ""],
    }


def summarize_list(old: list[str], new: list[str]) -> tuple[str, str]:
    """Short texts for a list change: the whole list when short, else counts and the first
    differences ("4000 prefixes" -> "4001 prefixes (+10.9.0.0/24)")."""
    if len(old) <= LIST_SHOWN and len(new) <= LIST_SHOWN:
        return ", ".join(old), ", ".join(new)
    old_set, new_set = set(old), set(new)
    added = [x for x in new if x not in old_set]
    removed = [x for x in old if x not in new_set]
    diff = [f"+{x}" for x in added[:LIST_SHOWN]] + [f"-{x}" for x in removed[:LIST_SHOWN]]
    more = len(added) + len(removed) - len(diff)
    detail = ", ".join(diff) + (f", ... {more} more" if more > 0 else "")
    return f"{len(old)} entries", f"{len(new)} entries ({detail or 'same entries, other order'})"


def rule_changes(old: DesiredState | None, new: DesiredState) -> list[RuleChange]:
    """Per NSG rule, what changed from ``old`` (None: nothing enforced yet) to ``new``."""
    def index(state: DesiredState | None) -> dict[tuple[str, str], tuple[str, SecurityRule]]:
        out = {}
        for nsg in (state.networkSecurityGroups if state else []):
            for r in nsg.securityRules:
                out[(nsg.name.lower(), r.name.lower())] = (nsg.name, r)
        return out

    before, after = index(old), index(new)
    changes: list[RuleChange] = []
    for key in sorted(set(before) | set(after)):
        if key not in before:
            nsg, r = after[key]
            changes.append(RuleChange(nsg, r.name, "added", r.direction.value))
        elif key not in after:
            nsg, r = before[key]
            changes.append(RuleChange(nsg, r.name, "removed", r.direction.value))
        else:
            (nsg, a), (_, b) = before[key], after[key]
            fa, fb = rule_fields(a), rule_fields(b)
            diffs = []
            for name in RULE_FIELDS:
                if fa[name] != fb[name]:
                    o, n = summarize_list(fa[name], fb[name])
                    diffs.append(FieldChange(name, o, n))
            if diffs:
                changes.append(RuleChange(nsg, b.name, "changed", b.direction.value, tuple(diffs)))
    return changes


# --- shadowed rules -------------------------------------------------------------------------


@dataclass(frozen=True)
class Shadowed:
    nsg: str
    rule: str
    direction: str
    priority: int
    reason: str  # "shadowed by higher-priority rules" / "matches no address" / "not checked: ..."

    def as_dict(self) -> dict:
        return {"nsg": self.nsg, "rule": self.rule, "direction": self.direction,
                "priority": self.priority, "reason": self.reason}


def _reached(level: Level, family: int) -> set[int] | None:
    """Indexes of the rules that decide some packet of ``family``; None if too large."""
    inbound = level.rules[0].direction is Direction.INBOUND if level.rules else True
    boxes = [b for i, r in enumerate(level.rules) if (b := project(r, i, inbound, family)) is not None]
    if not boxes:
        return set()
    try:
        dec = Decomposer(boxes, family, SHADOW_BUDGET)
        root = dec.root()
    except TooLarge:
        return None
    seen: set[int] = set()
    reached: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node in seen or node < 0:
            continue
        seen.add(node)
        kind, data = dec.nodes[node]
        if kind == LEAF:
            reached.add(data)
        elif kind == NODE:
            stack += [child for _, _, child in data]
    return reached


def shadowed_rules(policy: Policy) -> list[Shadowed]:
    """User rules that can never decide a packet, per NSG and direction. Each resolved level
    is checked once; an NSG resolved differently for several NICs (VirtualNetwork is per
    VNet) counts a rule as live if it decides something in any of them."""
    live: set[tuple[str, str, str]] = set()
    found: dict[tuple[str, str, str], Shadowed] = {}
    checked: set[int] = set()
    for nic in sorted(policy.nics.values(), key=lambda n: n.nic):
        for level in nic.inbound + nic.outbound:
            if id(level) in checked:
                continue
            checked.add(id(level))
            reached = (_reached(level, 4), _reached(level, 6))
            for i, rule in enumerate(level.rules):
                if rule.default:
                    continue
                key = (rule.nsg.lower(), rule.name.lower(), rule.direction.value)
                if None in reached:
                    reason = "not checked: the level is too large to decompose"
                elif any(i in r for r in reached if r is not None):
                    live.add(key)
                    continue
                elif project(rule, i, True, 4) is None and project(rule, i, True, 6) is None:
                    reason = "matches no address (an ASG without members, or a tag without prefixes)"
                else:
                    earlier = [r.name for r in level.rules[:i] if not r.default]
                    reason = "shadowed by higher-priority rules" + (
                        f" ({', '.join(earlier[-5:])}{', ...' if len(earlier) > 5 else ''})" if earlier else "")
                found.setdefault(key, Shadowed(rule.nsg, rule.name, rule.direction.value, rule.priority, reason))
    return sorted((s for k, s in found.items() if k not in live),
                  key=lambda s: (s.nsg.lower(), s.direction, s.priority))


# --- revocation impact ----------------------------------------------------------------------


@dataclass(frozen=True)
class Revocation:
    nic: str
    direction: str
    protocol: int
    source: str
    sport: int | None
    destination: str
    dport: int | None
    rule: str  # the new policy's deciding rule
    cut: bool  # flushConnection: the agent cuts it at apply; else it lives on until closed

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def text(self) -> str:
        ports = lambda a, p: f"{a}:{p}" if p is not None else a  # noqa: E731
        what = "cut at apply (flushConnection)" if self.cut else "lives on, refused if reopened"
        return (f"{self.nic} {self.direction} proto {self.protocol} {ports(self.source, self.sport)} -> "
                f"{ports(self.destination, self.dport)}: denied by {self.rule}; {what}")


def revocations(old: Policy | None, new: Policy, entries: Iterable[CtFlow]) -> list[Revocation]:
    """Live flows the old policy allows (or that exist with nothing enforced) and the new
    policy denies."""
    entries = list(entries)
    before = ({(c.flow, c.nic) for c in denied_entries(old, entries, only_flush=False)}
              if old is not None else set())
    out = []
    for cut in denied_entries(new, entries, only_flush=False):
        if (cut.flow, cut.nic) in before:
            continue  # already denied: nothing is revoked
        f = cut.flow
        out.append(Revocation(cut.nic, cut.direction.value, f.protocol, str(f.source), f.sport,
                              str(f.destination), f.dport, cut.deciding,
                              new.nics[cut.nic].flush_connection))
    return out


@dataclass
class Review:
    changes: list[RuleChange] = field(default_factory=list)
    shadowed: list[Shadowed] = field(default_factory=list)
    revoked: list[Revocation] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ruleChanges": [c.as_dict() for c in self.changes],
                "shadowedRules": [s.as_dict() for s in self.shadowed],
                "revokedConnections": [r.as_dict() for r in self.revoked]}

    def lines(self) -> list[str]:
        out = []
        for c in self.changes:
            sign = {"added": "+", "removed": "-", "changed": "~"}[c.kind]
            out.append(f"  {sign} {c.nsg}: {c.rule} ({c.direction})")
            out += [f"      {f.field}: {f.old} -> {f.new}" for f in c.fields]
        for s in self.shadowed:
            out.append(f"  ! {s.nsg}: {s.rule} ({s.direction}, priority {s.priority}) never matches: {s.reason}")
        for r in self.revoked:
            out.append(f"  x {r.text()}")
        return out
