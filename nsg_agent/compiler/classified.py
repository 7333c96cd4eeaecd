"""Classify mode (pure): a level as its first-match decomposition (nsg_agent.compiler.classify)
rendered as single-field verdict maps. Stage 1 splits the packet space into classes by a few
fields (the ports first, or the remote address first: whichever needs fewer elements);
stage 2 finds, per class, the first rule whose remaining fields match; each rule's own chain
counts and decides. A level that would exceed its element budget raises TooLarge and is
rendered in simple mode instead (nsg_agent.compiler.levels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nsg_agent.compiler import expr as E
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
from nsg_agent.compiler.matches import addr_field, project
from nsg_agent.compiler.naming import TABLE_NAME, rule_comment
from nsg_agent.desired.vocabulary import Access, Direction

if TYPE_CHECKING:
    from nsg_agent.compiler.levels import Builder, LevelChain

# Bound on decomposition work (pieces examined) so a pathological level fails over fast.
MAX_LEVEL_WORK = 600_000


def plan_level(b: Builder, lv: LevelChain) -> dict:
    """Per address family the smaller of the two dimension orders (see classify.py);
    TooLarge when neither fits ``max_elements``."""
    inbound = lv.direction is Direction.INBOUND
    plan: dict[str, Any] = {"families": {}, "elements": 0, "classes": 0, "orders": {}}
    for family in (4, 6):
        boxes = [box for i, r in enumerate(lv.rules) if (box := project(r, i, inbound, family))]
        if not boxes:
            continue
        limit = b.max_elements - plan["elements"]
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

def emit_level(b: Builder, lv: LevelChain, plan: dict) -> None:
    inbound = lv.direction is Direction.INBOUND
    fields = {D_REMOTE: "saddr" if inbound else "daddr", D_LOCAL: "daddr" if inbound else "saddr"}
    b.chain(lv.name)
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
                        b.maps.append(E.map_obj(TABLE_NAME, map_name, _key_type(family, (dim,)), elements))
                        body.append([E.vmap(key, "@" + map_name)])
                    else:
                        body.append([E.vmap(key, {"set": elements})])
                    b.elements += len(elements)
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
            b.maps.append(E.set_obj(TABLE_NAME, set_names[r], _key_type(family, dims2),
                                       b.element_cache.get(family, ivs)))
            b.elements += len(ivs)

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
        b.rule(lv.name, exprs)
    b.fallthrough(lv, lv.name)
    for name, body in node_bodies:
        b.chain(name)
        for exprs in body:
            b.rule(name, exprs)
        b.fallthrough(lv, name)
    for name, body in class_chains:
        b.chain(name)
        for exprs, count in body:
            b.rule(name, exprs)
            b.elements += count
        b.fallthrough(lv, name)
    for index, name in sorted(rule_chains.items()):
        rule = lv.rules[index]
        comment = rule_comment(rule)
        b.chain(name)
        b.counted(name, [E.counter(), E.verdict("return" if rule.access is Access.ALLOW else "drop")],
                     comment, b.ref(lv, rule, name))


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
            parts.append(addr_field(family, fields[d]))
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
