"""Level chains (pure): one chain per NSG, direction and resolved content, shared by every
NIC whose resolved rules are identical, and the builder that collects the table's objects.

A level is rendered in simple mode here (one counted nft rule per NSG rule, anonymous sets)
or in classify mode by nsg_agent.compiler.classified (first-match decomposition, verdict
maps); ``render_levels`` picks per level and records what each got (LevelSummary).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nsg_agent.compiler import classified
from nsg_agent.compiler import expr as E
from nsg_agent.compiler import flowmark as F
from nsg_agent.compiler.classified import ElementCache
from nsg_agent.compiler.classify import TooLarge
from nsg_agent.compiler.matches import catch_all, simple_matches
from nsg_agent.compiler.naming import TABLE_NAME, name_digest, nft_comment, rule_comment
from nsg_agent.compiler.results import LevelSummary, RuleRef
from nsg_agent.desired.vocabulary import Access, Direction
from nsg_agent.semantics.policy import Level, Policy, ResolvedRule


@dataclass
class LevelChain:
    """One level chain to emit (shared by all NICs with identical resolved rules)."""

    name: str
    nsg: str
    direction: Direction
    platform: bool  # an outbound_platform level: no match means "next level"
    rules: tuple[ResolvedRule, ...]
    users: list[str] = field(default_factory=list)


class Builder:
    def __init__(self, policy: Policy, mode: str, max_elements: int, element_cache: ElementCache,
                 flow_logs: bool = False):
        self.policy = policy
        self.flow_logs = flow_logs
        self.element_cache = element_cache
        self.mode = mode
        self.max_elements = max_elements
        self.chains: list[dict] = []  # chain objects, in order
        self.maps: list[dict] = []
        self.rules: list[dict] = []
        self.rule_index: dict[tuple[str, str], RuleRef] = {}
        self.levels: dict[str, LevelChain] = {}
        self._level_by_key: dict[tuple, str] = {}
        self._level_base: dict[tuple, str] = {}  # (direction, platform, nsg) -> lvl_<h8>
        self.level_summary: dict[str, LevelSummary] = {}
        self.elements = 0
        self._marks: list[tuple[dict, tuple[str, str, str]]] = []  # ct mark statements, ids set last

    # objects ----------------------------------------------------------------------------
    def chain(self, name: str, **kw: Any) -> None:
        self.chains.append(E.chain_obj(TABLE_NAME, name, **kw))

    def rule(self, chain: str, exprs: list, comment: str | None = None) -> None:
        self.rules.append(E.rule_obj(TABLE_NAME, chain, exprs, comment))

    def counted(self, chain: str, exprs: list, comment: str, ref: RuleRef, flow: bool = True) -> None:
        """A counted rule (``[matches..., counter, verdict]``) and, for flow logs
        (compiler/flowmark.py): before a drop, the same matches with a rate-limited ``log``
        and no verdict; in an allow, the ``ct mark`` of the rule's id."""
        verdict = next(iter(exprs[-1]))
        flow = flow and self.flow_logs
        if flow and verdict == "drop":
            self.rule(chain, exprs[:-2] + F.log_statements(ref.direction, comment))
        elif flow and verdict in ("return", "accept"):
            stmt = F.mark_statement(ref.direction, 0)
            self._marks.append((stmt, (ref.direction, ref.nsg or "", ref.rule)))
            exprs = exprs[:-2] + [stmt] + exprs[-2:]
        self.rule(chain, exprs, comment)
        self.rule_index[(chain, comment)] = ref

    def number_marks(self) -> None:
        """Give every allow's ct mark its rule id (known once the whole index is)."""
        ids = F.rule_ids(self.rule_index.values())
        for stmt, triple in self._marks:
            stmt["mangle"]["value"]["|"][1] = ids[triple] << F.SHIFT[triple[0]]

    # levels -----------------------------------------------------------------------------
    def level(self, lv: Level, direction: Direction, platform: bool, user: str) -> str:
        """The chain name for this level's resolved content (created once per content)."""
        # The tuple itself is the sharing key (rules and terms hash cheaply); the text form,
        # which spells out every prefix, is built only to name a new level.
        # Names come from the NSG and direction, not from the resolved content, so that an
        # edit of the content (an ASG member, a tag prefix) keeps every name and can be
        # applied as a delta (nsg_agent/kernel/delta.py). A second resolution of the same NSG
        # and direction (VirtualNetwork or ASGs of another VNet) is variant v2, v3, ... in
        # the order NICs are compiled (sorted by name).
        key = (direction.value, platform, lv.nsg, lv.rules)
        if key in self._level_by_key:
            name = self._level_by_key[key]
        else:
            base_key = (direction.value, platform, lv.nsg)
            base = self._level_base.get(base_key)
            if base is None:
                digest = name_digest(repr(base_key))
                n = 8
                while f"lvl_{digest[:n]}" in self._level_base.values():
                    n += 2
                base = self._level_base[base_key] = f"lvl_{digest[:n]}"
            variant = sum(1 for k in self._level_by_key if k[:3] == base_key) + 1
            name = base if variant == 1 else f"{base}v{variant}"
            self._level_by_key[key] = name
            self.levels[name] = LevelChain(name, lv.nsg, direction, platform, lv.rules)
        self.levels[name].users.append(user)
        return name

    def render_levels(self) -> None:
        for name, lv in self.levels.items():
            mode = self.mode
            plan: dict | None = None
            fallback = None
            if mode == "classify":
                try:
                    plan = classified.plan_level(self, lv)
                except TooLarge as e:
                    fallback = str(e)
                if plan is not None:
                    classified.emit_level(self, lv, plan)
                else:
                    mode = "simple"
            if mode == "simple":
                self.emit_simple(lv)
            self.level_summary[name] = LevelSummary(
                nsg=lv.nsg, direction=lv.direction.value, platform=lv.platform, rules=len(lv.rules),
                users=tuple(lv.users), mode=mode, fallback=fallback,
                elements=plan["elements"] if plan is not None else None,
                classes=plan["classes"] if plan is not None else None,
                orders=plan["orders"] if plan is not None else None)

    def ref(self, lv: LevelChain, rule: ResolvedRule, chain: str) -> RuleRef:
        return RuleRef(nsg=rule.nsg, rule=rule.log_name, direction=lv.direction.value,
                       chain=chain, scope=tuple(lv.users))

    def fallthrough(self, lv: LevelChain, chain: str) -> None:
        """A regular level that matched no rule denies (evaluate's rule=None case); a
        platform level returns (implicitly) and the next level decides."""
        if not lv.platform:
            comment = nft_comment(f"{lv.nsg}: NoRuleMatched")
            self.counted(chain, [E.counter(), E.verdict("drop")], comment,
                         RuleRef(lv.nsg, "NoRuleMatched", lv.direction.value, chain, tuple(lv.users)))

    # simple mode ------------------------------------------------------------------------
    def emit_simple(self, lv: LevelChain) -> None:
        self.chain(lv.name)
        for rule in lv.rules:
            comment = rule_comment(rule)
            tail = [E.counter(), E.verdict("return" if rule.access is Access.ALLOW else "drop")]
            for exprs in simple_matches(rule):
                self.counted(lv.name, exprs + tail, comment, self.ref(lv, rule, lv.name))
        if not any(catch_all(r) for r in lv.rules):
            self.fallthrough(lv, lv.name)
