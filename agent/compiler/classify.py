"""First-match decomposition of one level's rules into disjoint boxes (pure, no nft).

A level is an ordered rule list (first match wins). Seen from the NIC, every rule is a box
in five dimensions:

    remote address . local address . l4proto . source port . destination port

(remote = source for inbound, destination for outbound). ``decompose`` cuts each dimension,
in that order, into elementary intervals (the cut points of the rules still in play), labels
each piece with the rules that contain it, and recurses on each distinct label; the first
rule left when no dimension remains decides. Adjacent pieces whose sub-results are identical
are merged, and results are interned, so identical sub-trees are shared. This is the
two-stage class lookup of design.md:

- stage 1: the root's pieces (remote-address intervals) -> class (an interned sub-tree),
- stage 2: per class, the flattened sub-tree: boxes ``local . proto . sport . dport -> rule``.

Ports only constrain TCP and UDP: the protocol dimension always cuts 6 and 17 into pieces of
their own, and for every other protocol piece the rules with port terms are dropped, so the
boxes of non-TCP/UDP protocols always span 0-65535 on both port fields (``th`` reads arbitrary
bytes there, which then match whatever they are).

Everything is integers: addresses as ``int(ip_address)`` within one family.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

Interval = tuple[int, int]

DIMS = ("remote", "local", "proto", "sport", "dport")
D_REMOTE, D_LOCAL, D_PROTO, D_SPORT, D_DPORT = range(5)
PORT_PROTOCOLS = (6, 17)


def full_ranges(family: int) -> tuple[Interval, ...]:
    top = (1 << 32) - 1 if family == 4 else (1 << 128) - 1
    return ((0, top), (0, top), (0, 255), (0, 65535), (0, 65535))


class TooLarge(Exception):
    """The decomposition would exceed the element budget: render the level simply."""


@dataclass(frozen=True)
class Box:
    """One projected rule: per dimension a tuple of disjoint sorted intervals."""

    index: int  # position in the level (priority order)
    dims: tuple[tuple[Interval, ...], ...]
    ports_any: bool


LEAF, NODE = "leaf", "node"
EMPTY = -1


class Decomposer:
    """Decomposes one level for one address family. Results are interned node ids.

    ``nodes[id]`` is either ("leaf", rule_index) -- that rule for the whole remaining space --
    or ("node", ((lo, hi, child_id), ...)) for one dimension, pieces sorted and disjoint; a
    space not covered by any piece matches no rule.
    """

    def __init__(self, boxes: list[Box], family: int, budget: int):
        self.boxes = {b.index: b for b in boxes}
        self.order = [b.index for b in boxes]
        self.full = full_ranges(family)
        self.budget = budget
        self.work = 0
        self.nodes: list[tuple] = []
        self._intern: dict[tuple, int] = {}
        self._memo: dict[tuple[int, tuple[int, ...]], int] = {}
        rng = random.Random(0x5EED)  # Zobrist keys for labels: deterministic
        self._key = {b.index: rng.getrandbits(128) for b in boxes}
        # full_from[i][d]: rule i covers the whole space in dimensions d.. (so it ends the list)
        self._full_from: dict[int, list[bool]] = {}
        for b in boxes:
            flags = [False] * 6
            flags[5] = True
            for d in range(4, -1, -1):
                flags[d] = flags[d + 1] and b.dims[d] == (self.full[d],)
            self._full_from[b.index] = flags

    # interning -------------------------------------------------------------------------
    def _node(self, key: tuple) -> int:
        found = self._intern.get(key)
        if found is None:
            found = len(self.nodes)
            self.nodes.append(key)
            self._intern[key] = found
        return found

    def root(self) -> int:
        return self.decompose(tuple(self.order), 0)

    def decompose(self, cands: tuple[int, ...], d: int) -> int:
        for i, c in enumerate(cands):
            if self._full_from[c][d]:
                cands = cands[: i + 1]
                break
        if not cands:
            return EMPTY
        if self._full_from[cands[0]][d]:
            return self._node((LEAF, cands[0]))
        key = (d, cands)
        found = self._memo.get(key)
        if found is not None:
            return found
        result = self._sweep(cands, d)
        self._memo[key] = result
        return result

    def _sweep(self, cands: tuple[int, ...], d: int) -> int:
        events: dict[int, list[int]] = {}  # cut point -> rules toggling there
        lo_all, hi_all = self.full[d]
        for c in cands:
            for lo, hi in self.boxes[c].dims[d]:
                events.setdefault(lo, []).append(c)
                if hi < hi_all:
                    events.setdefault(hi + 1, []).append(c)
        if d == D_PROTO:
            for p in PORT_PROTOCOLS:  # 6 and 17 always stand alone
                events.setdefault(p, [])
                events.setdefault(p + 1, [])
        events.setdefault(lo_all, [])
        if self.work + len(events) > self.budget:  # one piece per cut: fail over before sorting
            raise TooLarge(f"more than {self.budget} pieces")
        cuts = sorted(events)
        active: set[int] = set()
        label = 0
        child_of_label: dict[int, int] = {}
        pieces: list[tuple[int, int, int]] = []
        rank = {c: i for i, c in enumerate(cands)}
        for i, cut in enumerate(cuts):
            for c in events[cut]:
                if c in active:
                    active.discard(c)
                else:
                    active.add(c)
                label ^= self._key[c]
            hi = cuts[i + 1] - 1 if i + 1 < len(cuts) else hi_all
            self.work += 1
            if self.work > self.budget:
                raise TooLarge(f"more than {self.budget} pieces")
            if d == D_PROTO:
                ports = cut == hi and cut in PORT_PROTOCOLS
                members = sorted((c for c in active if ports or self.boxes[c].ports_any), key=rank.__getitem__)
                child = self.decompose(tuple(members), d + 1)
            else:
                child = child_of_label.get(label)
                if child is None:
                    members = sorted(active, key=rank.__getitem__)
                    child = self.decompose(tuple(members), d + 1)
                    child_of_label[label] = child
            if child == EMPTY:
                continue
            if pieces and pieces[-1][2] == child and pieces[-1][1] + 1 == cut:
                pieces[-1] = (pieces[-1][0], hi, child)
            else:
                pieces.append((cut, hi, child))
        if not pieces:
            return EMPTY
        if len(pieces) == 1 and (pieces[0][0], pieces[0][1]) == self.full[d] and self.nodes[pieces[0][2]][0] == LEAF:
            return pieces[0][2]  # the same rule everywhere: a leaf covers this dimension too
        return self._node((NODE, tuple(pieces)))

    # flattening ------------------------------------------------------------------------
    def size(self, node: int, _cache: dict[int, int] | None = None) -> int:
        """Number of boxes ``flatten(node, ...)`` yields (without building them)."""
        cache = {} if _cache is None else _cache
        if node == EMPTY:
            return 0
        if node in cache:
            return cache[node]
        kind, payload = self.nodes[node]
        n = 1 if kind == LEAF else sum(self.size(ch, cache) for _, _, ch in payload)
        cache[node] = n
        return n

    def flatten(self, node: int, d: int) -> list[tuple[tuple[Interval, ...], int]]:
        """Boxes ``(intervals for dims d..4, rule index)`` of a sub-tree rooted at dim d."""
        if node == EMPTY:
            return []
        kind, payload = self.nodes[node]
        if kind == LEAF:
            return [(tuple(self.full[d:]), payload)]
        out = []
        for lo, hi, child in payload:
            for rest, rule in self.flatten(child, d + 1):
                out.append((((lo, hi),) + rest, rule))
        return out

    def stage1(self) -> list[tuple[Interval, int]]:
        """The root as remote-address pieces -> child node (EMPTY pieces omitted)."""
        root = self.root()
        if root == EMPTY:
            return []
        kind, payload = self.nodes[root]
        if kind == LEAF:
            return [(self.full[D_REMOTE], root)]
        return [((lo, hi), child) for lo, hi, child in payload]
