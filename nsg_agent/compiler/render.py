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
from typing import Any

from nsg_agent.compiler import expr as E
from nsg_agent.compiler import flowmark as F
from nsg_agent.compiler.classify import (
    D_DPORT,
    D_LOCAL,
    D_PROTO,
    D_REMOTE,
    D_SPORT,
    EMPTY,
    NODE,
    ORDERS,
    Box,
    Decomposer,
    TooLarge,
    first_match_1d,
    full_ranges,
)
from nsg_agent.compiler.placement import FabricPlacement, HostPlacement
from nsg_agent.compiler.results import LevelSummary, NicLevel, NicSummary, RuleIndex, RuleRef, Summary
from nsg_agent.desired.vocabulary import NEIGHBOR_DISCOVERY_TYPES, Access, Direction
from nsg_agent.semantics.policy import AddressTerm, Level, NicPolicy, Policy, PortTerm, ResolvedRule

TABLE_NAME = "nsg_agent"
MODES = ("classify", "simple")
# A level whose classification would need more map elements than this is rendered simply.
# The benchmark's maximum NSG (1,000 rules, 185k prefixes) needs 187k; simple mode would load
# about as many elements (its anonymous sets hold every prefix) and cost ~3x per connection.
MAX_LEVEL_ELEMENTS = 250_000
# Bound on decomposition work (pieces examined) so a pathological level fails over fast.
MAX_LEVEL_WORK = 600_000
COMMENT_MAX = 128  # nft refuses longer comments

SMTP_COMMENT = "PlatformRule_BlockOutboundSmtp"
EXEMPT_COMMENT = "PlatformRule_PlatformExemption"
ND_COMMENT = "PlatformRule_AllowNeighborDiscovery"


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
    def __init__(self, policy: Policy, mode: str, max_elements: int, element_cache: "ElementCache",
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
        self.levels: dict[str, _Level] = {}
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
                digest = _digest(repr(base_key))
                n = 8
                while f"lvl_{digest[:n]}" in self._level_base.values():
                    n += 2
                base = self._level_base[base_key] = f"lvl_{digest[:n]}"
            variant = sum(1 for k in self._level_by_key if k[:3] == base_key) + 1
            name = base if variant == 1 else f"{base}v{variant}"
            self._level_by_key[key] = name
            self.levels[name] = _Level(name, lv.nsg, direction, platform, lv.rules)
        self.levels[name].users.append(user)
        return name

    def render_levels(self) -> None:
        for name, lv in self.levels.items():
            mode = self.mode
            plan: dict | None = None
            fallback = None
            if mode == "classify":
                try:
                    plan = self._classify(lv)
                except TooLarge as e:
                    fallback = str(e)
                if plan is not None:
                    self._emit_classified(lv, plan)
                else:
                    mode = "simple"
            if mode == "simple":
                self._emit_simple(lv)
            self.level_summary[name] = LevelSummary(
                nsg=lv.nsg, direction=lv.direction.value, platform=lv.platform, rules=len(lv.rules),
                users=tuple(lv.users), mode=mode, fallback=fallback,
                elements=plan["elements"] if plan is not None else None,
                classes=plan["classes"] if plan is not None else None,
                orders=plan["orders"] if plan is not None else None)

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
    def _classify(self, lv: _Level) -> dict:
        """Per address family the smaller of the two dimension orders (see classify.py);
        TooLarge when neither fits ``max_elements``."""
        inbound = lv.direction is Direction.INBOUND
        plan: dict[str, Any] = {"families": {}, "elements": 0, "classes": 0, "orders": {}}
        for family in (4, 6):
            boxes = [b for i, r in enumerate(lv.rules) if (b := project(r, i, inbound, family))]
            if not boxes:
                continue
            limit = self.max_elements - plan["elements"]
            best: _FamilyPlan | None = None
            why = []
            work = MAX_LEVEL_WORK
            for order_name in ORDER_PREFERENCE:
                try:
                    fp = _plan_family(boxes, family, order_name, limit, work)
                except TooLarge as e:
                    why.append(f"{order_name}: {e}")
                    # a later order gets work in proportion to what is still allowed
                    work = min(work, 3 * limit // 2 + 10_000)
                    continue
                work = min(work, 3 * fp.elements // 2 + 10_000)  # it must beat this one
                if best is None or fp.elements < best.elements:
                    best = fp
                    limit = fp.elements
            if best is None:
                raise TooLarge(f"IPv{family}: " + "; ".join(why))
            if best.root != EMPTY:
                plan["families"][family] = best
                plan["elements"] += best.elements
                plan["classes"] += len(best.classes)
                plan["orders"][f"ipv{family}"] = best.order
        return plan

    def _emit_classified(self, lv: _Level, plan: dict) -> None:
        inbound = lv.direction is Direction.INBOUND
        fields = {D_REMOTE: "saddr" if inbound else "daddr", D_LOCAL: "daddr" if inbound else "saddr"}
        self.chain(lv.name)
        rule_chains: dict[int, str] = {}

        def target(index: int) -> dict:
            if index not in rule_chains:
                rule_chains[index] = f"{lv.name}_r{index}"
            return E.verdict("goto", rule_chains[index])

        class_chains: list[tuple[str, list]] = []
        node_bodies: list[tuple[str, list]] = []  # stage-1 nodes below the root: (chain, rules)
        class_no = node_no = 0
        stage1_rules = []
        for family, fp in sorted(plan["families"].items()):
            dec = fp.dec
            names = {}
            for child in fp.classes:
                names[child] = f"{lv.name}_c{class_no}"
                class_no += 1

            def goto(child: int) -> dict:
                kind, payload = dec.nodes[child]
                return target(payload) if kind == "leaf" else E.verdict("goto", names[child])

            dims2 = fp.dims[fp.k:]
            family_guard = E.match(E.meta("nfproto"), "ipv4" if family == 4 else "ipv6")
            if not fp.tree:  # the root is a leaf: one rule for this whole family
                stage1_rules.append([family_guard, goto(fp.root)])
            # Chains of the tree nodes: the level chain holds the stage-1 root; a remote-first
            # class's chain holds the root of its sub-tree; other nodes get chains of their own.
            trees = [(fp.tree, None)] + [(fp.stage2[c][0][1], names[c]) for c in fp.classes
                                        if _is_tree(fp.stage2[c])]
            in_tree = {(node, d) for tree, _ in trees for node, d, _ in tree}
            roots = {(tree[0][0], tree[0][1]) for tree, _ in trees if tree}

            def passable(node: int, d: int) -> int | None:
                """The child of a node that is one piece over its whole dimension, when
                skipping the node loses nothing: not a root, and no transport header read
                that nothing after it would read (a th sport node before a th dport node)."""
                if (node, d) in roots:
                    return None
                pieces = dec.nodes[node][1]
                if len(pieces) != 1 or (pieces[0][0], pieces[0][1]) != dec.full[d]:
                    return None
                child = pieces[0][2]
                if fp.dims[d] == D_DPORT or (fp.dims[d] == D_SPORT and not (
                        d + 1 < len(fp.dims) and fp.dims[d + 1] == D_DPORT and (child, d + 1) in in_tree)):
                    return None
                return child

            skip = {key: passable(*key) for key in in_tree}  # node -> child it passes through
            # Chains of the tree nodes: the level chain holds the stage-1 root; a remote-first
            # class's chain holds the root of its sub-tree; other nodes that decide something
            # get chains of their own, numbered in order.
            node_chains = {}
            for tree, root_chain in trees:
                for i, (node, d, _) in enumerate(tree):
                    if i == 0 and root_chain is not None:
                        node_chains[(node, d)] = root_chain
                    elif i > 0 and (node, d) not in node_chains and skip[(node, d)] is None:
                        node_chains[(node, d)] = f"{lv.name}_n{node_no}"
                        node_no += 1

            def step(child: int, d: int) -> dict:
                """The verdict for ``child`` reached after dimension ``d``: the next node's
                chain (nodes that decide nothing skipped), else the class or rule chain."""
                d += 1
                while (child, d) in in_tree and (passed := skip[(child, d)]) is not None:
                    child, d = passed, d + 1
                if (child, d) in node_chains:
                    return E.verdict("goto", node_chains[(child, d)])
                return goto(child)

            emitted = set()
            for t, (tree, root_chain) in enumerate(trees):
                for i, (node, d, bg) in enumerate(tree):
                    level_root = t == 0 and i == 0
                    if i > 0 and skip[(node, d)] is not None:
                        continue
                    chain = None if level_root else node_chains[(node, d)]
                    if chain in emitted:
                        continue
                    emitted.add(chain)
                    dim = fp.dims[d]
                    key = _key_expr(family, (dim,), fields)
                    elements = [[_key_value(family, (dim,), ((lo, hi),)), step(child, d)]
                                for lo, hi, child in dec.nodes[node][1] if child != bg]
                    body: list = []  # rules here; (rules, element count) pairs for the class chains below
                    if elements:
                        if len(elements) > INLINE_MAX:
                            map_name = f"{lv.name}_{family}" if chain is None else chain + "m"  # None: level root
                            self.maps.append(E.map_obj(TABLE_NAME, map_name, _key_type(family, (dim,)), elements))
                            body.append([E.vmap(key, "@" + map_name)])
                        else:
                            body.append([E.vmap(key, {"set": elements})])
                        self.elements += len(elements)
                    if bg is not None:
                        # The piece most of this dimension maps to is left out of the map:
                        # what the map does not hold (with a readable transport header when
                        # the key reads one) is that piece.
                        body.append([*([family_guard] if level_root else []), *_th_guard((dim,)),
                                     step(bg, d)])
                    if level_root:
                        stage1_rules.extend(body)
                    else:
                        assert chain is not None  # not the level root: a node chain's name
                        node_bodies.append((chain, body))
            key2 = _key_expr(family, dims2, fields)
            set_names = {}
            for r, ivs in sorted(fp.shared.items()):
                set_names[r] = f"{lv.name}_s{r}_{family}"
                self.maps.append(E.set_obj(TABLE_NAME, set_names[r], _key_type(family, dims2),
                                           self.element_cache.get(family, ivs)))
                self.elements += len(ivs)

            def to(tok: tuple) -> dict:
                return target(tok[1]) if tok[0] == "r" else goto(tok[1])

            for child in fp.classes:
                if _is_tree(fp.stage2[child]):
                    continue  # remote first: rendered with the trees above
                body = []
                for seg in fp.stage2[child]:
                    if seg[0] == "map":
                        elems = [[_key_value(family, dims2, ivs), to(tok)] for ivs, tok in seg[1]]
                        if elems:
                            body.append(([E.vmap(key2, {"set": elems})], len(elems)))
                    elif seg[0] == "set":
                        body.append(([E.match(key2, "@" + set_names[seg[1][1]]), to(seg[1])], 0))
                    else:
                        # the class's last rule for the rest (a readable th when the map read it)
                        body.append(([*_th_guard(dims2), to(seg[1])], 0))
                class_chains.append((names[child], body))
        for exprs in stage1_rules:
            self.rule(lv.name, exprs)
        self._fallthrough(lv, lv.name)
        for name, body in node_bodies:
            self.chain(name)
            for exprs in body:
                self.rule(name, exprs)
            self._fallthrough(lv, name)
        for name, body in class_chains:
            self.chain(name)
            for exprs, count in body:
                self.rule(name, exprs)
                self.elements += count
            self._fallthrough(lv, name)
        for index, name in sorted(rule_chains.items()):
            rule = lv.rules[index]
            comment = rule_comment(rule)
            self.chain(name)
            self.counted(name, [E.counter(), E.verdict("return" if rule.access is Access.ALLOW else "drop")],
                         comment, self._ref(lv, rule, name))


# Orders tried per level and family, the preferred first (it wins ties).
ORDER_PREFERENCE = ("ports-first", "remote-first")


@dataclass
class _FamilyPlan:
    """One family of one level, classified in one dimension order."""

    order: str
    dims: tuple[int, ...]  # DIMS indices in the decomposer's order
    k: int  # stage-1 dimensions
    dec: Decomposer
    root: int  # the decomposition's root node (EMPTY: no rule applies to this family)
    tree: list[tuple[int, int, int | None]]  # stage-1 nodes (node, dim position, background
    #   piece's child or None), root first; empty when the root is a leaf or EMPTY
    classes: list[int]  # stage-1 children that are classes (not leaves), in first-use order
    stage2: dict[int, list]  # class -> remote first: [("tree", nodes of its sub-tree, as
    #   in ``tree``)]; ports first: segments in order: ("map", [(remote intervals, target)]),
    #   ("set", target) (the target rule's shared remote set), ("else", target)
    shared: dict[int, tuple]  # rule -> remote intervals of its shared named set
    elements: int


def _is_tree(segments: list) -> bool:
    return bool(segments) and segments[0][0] == "tree"


def _background(boxes: list, covers: bool) -> int | None:
    """The node most boxes lead to, when the boxes cover their whole space (so "not in the
    map" means exactly that node); else None."""
    if not covers or not boxes:
        return None
    counts: dict[int, int] = {}
    for _, node in boxes:
        counts[node] = counts.get(node, 0) + 1
    return max(counts, key=counts.__getitem__)  # first of the most frequent (dicts keep order)


def _plan_family(boxes: list[Box], family: int, order_name: str, limit: int, work: int) -> _FamilyPlan:
    dims, k = ORDERS[order_name]
    dec = Decomposer(boxes, family, work, dims, stop=5 if k == 1 else k)
    root = dec.root()
    tree, classes, elements = _walk_tree(dec, root, 0, k, limit)
    stage2: dict[int, list] = {}
    shared: dict[int, tuple] = {}
    if k == 1:  # remote first: per class the rest of its sub-tree, one map per node
        for child in classes:
            sub, _, n = _walk_tree(dec, child, k, 5, limit - elements)
            stage2[child] = [("tree", sub)]
            elements += n
    else:  # ports first: per class the remote address in priority order (see _remote_segments)
        cands = {child: dec.rules_of(child, k) for child in classes}  # class nodes
        uses: dict[int, int] = {}
        for rules in cands.values():
            for r in rules:
                uses[r] = uses.get(r, 0) + 1
        remote = {i: box.dims[D_REMOTE] for i, box in ((b.index, b) for b in boxes)}
        full = full_ranges(family)[D_REMOTE]
        for r, n in uses.items():
            if n > 1 and len(remote[r]) >= SHARE_MIN_INTERVALS and remote[r] != (full,):
                shared[r] = remote[r]
                elements += len(remote[r])
        for child in classes:
            if elements > limit:
                break
            segments = _remote_segments(cands[child], remote, shared, full)
            stage2[child] = segments
            elements += sum(len(seg[1]) for seg in segments if seg[0] == "map")
    if elements > limit:
        raise TooLarge(f"{elements}+ elements > {limit}")
    return _FamilyPlan(order_name, dims, k, dec, root, tree, classes, stage2, shared, elements)


# A stage-1 node with at most this many map elements is an anonymous map inside its rule;
# larger ones are named maps (easier to read in `nft list ruleset`, listed on their own).
INLINE_MAX = 16


def _walk_tree(dec: Decomposer, root: int, start: int, k: int, limit: int) -> tuple[list, list[int], int]:
    """Dimensions ``start``..``k``-1 of the decomposition below ``root``, as its own tree:
    one single-field verdict map per node, shared sub-trees rendered once. A single-field interval map is
    a tree lookup in the kernel (rbtree, O(log n)) for any size, whereas one concatenated
    interval map over all ``k`` fields is a pipapo set, whose lookup walks bitmaps as long as
    its entries after prefix expansion: at the benchmark maximum 12,382 entries expanded to
    334,295 and cost a third of the new-connection rate. Returns (nodes as (node, position,
    background child), root first; the classes met at dimension ``k`` in first-use order;
    map elements). Raises TooLarge beyond ``limit`` elements."""
    tree: list[tuple[int, int, int | None]] = []
    classes: list[int] = []
    seen: set[tuple[int, int]] = set()
    seen_classes: set[int] = set()
    elements = 0

    def visit(node: int, d: int) -> None:
        nonlocal elements
        if node == EMPTY:
            return
        kind = dec.nodes[node][0]
        if kind != NODE or d == k:
            if kind != "leaf" and node not in seen_classes:
                seen_classes.add(node)
                classes.append(node)
            return
        if (node, d) in seen:
            return
        seen.add((node, d))
        pieces = dec.nodes[node][1]
        bg = _background([(None, child) for _, _, child in pieces],
                         sum(hi - lo + 1 for lo, hi, _ in pieces) == dec.full[d][1] - dec.full[d][0] + 1)
        tree.append((node, d, bg))
        elements += sum(1 for _, _, child in pieces if child != bg)
        if elements > limit:
            raise TooLarge(f"{elements}+ elements > {limit}")
        for _, _, child in pieces:
            visit(child, d + 1)

    visit(root, start)
    return tree, classes, elements


class ElementCache:
    """The element lists of shared remote-address sets, kept from one compile to the next
    (its owner, the daemon's pipeline, passes it to each compile; a fresh one otherwise).

    Turning intervals into libnftables values is a third of compiling the benchmark
    maximum (174k values), and an edit leaves nearly every set as it was: the daemon's next
    compile reuses the lists (the same objects, so the delta compares them at once and the
    two batches share their memory). Entries not used by the latest compile are dropped, so
    it holds at most two compiles' sets. The output is the same with or without it."""

    def __init__(self) -> None:
        self._current: dict[tuple, list] = {}
        self._previous: dict[tuple, list] = {}

    def next_compile(self) -> None:
        self._previous, self._current = self._current, {}

    def get(self, family: int, intervals: tuple) -> list:
        key = (family, intervals)
        found = self._current.get(key)
        if found is None:
            found = self._previous.get(key)
            if found is None:
                found = [E.addr_value(family, lo, hi) for lo, hi in intervals]
            self._current[key] = found
        return found




# A rule whose remote term has at least this many intervals and that is a candidate in more
# than one ports-first class gets one named set, looked up from each of those classes,
# instead of a copy of its prefixes in each class's map.
SHARE_MIN_INTERVALS = 16


def _remote_segments(rules: tuple[int, ...], remote: dict, shared: dict, full: tuple) -> list:
    """A ports-first class chain: its candidate rules in priority order as lookups of the
    remote address. Runs of unshared rules become one first-match verdict map; a shared rule
    is a match on its named set; a rule for any remote address ends the chain."""
    segments: list = []
    run: list = []

    def flush() -> None:
        if run:
            segments.append(("map", [(((lo, hi),), ("r", rule)) for lo, hi, rule in first_match_1d(run)]))
            run.clear()

    for r in rules:
        if remote[r] == (full,):
            flush()
            segments.append(("else", ("r", r)))
            break
        if r in shared:
            flush()
            segments.append(("set", ("r", r)))
        else:
            run.append((r, remote[r]))
    flush()
    return segments


_KEY_TYPES = {D_PROTO: "inet_proto", D_SPORT: "inet_service", D_DPORT: "inet_service"}


def _key_type(family: int, dims: tuple[int, ...]) -> str | list[str]:
    types = [_KEY_TYPES.get(d, "ipv4_addr" if family == 4 else "ipv6_addr") for d in dims]
    return types[0] if len(types) == 1 else types


def _key_expr(family: int, dims: tuple[int, ...], fields: dict[int, str]) -> dict:
    parts = []
    for d in dims:
        if d in fields:
            parts.append(_addr_field(family, fields[d]))
        elif d == D_PROTO:
            parts.append(E.meta("l4proto"))
        else:
            parts.append(E.payload("th", "sport" if d == D_SPORT else "dport"))
    return parts[0] if len(parts) == 1 else E.concat(parts)


def _key_value(family: int, dims: tuple[int, ...], intervals: tuple) -> Any:
    parts = [E.addr_value(family, lo, hi) if d in (D_REMOTE, D_LOCAL) else E.int_value(lo, hi)
             for d, (lo, hi) in zip(dims, intervals)]
    return parts[0] if len(parts) == 1 else E.concat(parts)


def _th_guard(dims: tuple[int, ...]) -> list:
    """A match that holds exactly when the transport header can be read (th dport covers th
    sport): a fallback after a map keyed on th must not catch packets the map could not
    look up, those end in NoRuleMatched (fail closed) as before."""
    if D_SPORT in dims or D_DPORT in dims:
        return [E.match(E.payload("th", "dport"), E.int_value(0, 65535))]
    return []


# --- projections and simple matches ------------------------------------------------------


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


def _platform_drops(b: _Builder, nic: NicPolicy, chain: str, direction: Direction) -> None:
    """GRE, IP-in-IP, multicast and broadcast: dropped before any NSG, both directions."""
    for drop in nic.platform_drops:
        comment = rule_comment(drop.rule)
        ref = RuleRef("", comment, direction.value, chain, (nic.nic,))
        proto: list = []
        if drop.protocols is not None:
            proto.append(E.match(E.meta("l4proto"), E.anon_set(sorted(drop.protocols))))
        for number in sorted(drop.except_protocols):
            proto.append(E.match(E.meta("l4proto"), number, "!="))
        for m in (_prefix_rules(drop.destination, "daddr") if drop.destination is not None else [[]]):
            b.counted(chain, m + proto + [E.counter(), E.verdict("drop")], comment, ref)


def _neighbor_discovery(b: _Builder, nic: NicPolicy, chain: str, direction: Direction) -> None:
    """ICMPv6 neighbour discovery and MLD pass before any NSG (agent.policy)."""
    if not nic.neighbor_discovery:
        return
    ref = RuleRef("", ND_COMMENT, direction.value, chain, (nic.nic,))
    b.counted(chain, [E.match(E.meta("l4proto"), 58),
                      E.match(E.payload("icmpv6", "type"), E.anon_set(sorted(NEIGHBOR_DISCOVERY_TYPES))),
                      E.counter(), E.verdict("accept")], ND_COMMENT, ref, flow=False)


def _nic_chains(b: _Builder, nic: NicPolicy, slug: str) -> tuple[str, str]:
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
        for m in _prefix_rules(nic.smtp_block, "daddr"):
            b.counted(cout, m + tcp25 + [E.counter(), E.verdict("drop")], SMTP_COMMENT, ref)
    if nic.platform_exempt is not None:
        b.chain(cpf)
        for m in _prefix_rules(nic.platform_exempt, "daddr"):
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
    b = _Builder(policy, mode, max_level_elements, elements, flow_logs)
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
            cin, cout = _nic_chains(b, nic, _slug(nic.nic))
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
            cin, cout = _nic_chains(b, nic, _slug(nic.nic))
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
                    b.rule("forward", [E.vmap(_addr_field(family, field_name), {"set": elems})])
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
