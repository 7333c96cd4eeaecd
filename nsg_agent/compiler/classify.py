"""First-match decomposition of one level's rules into disjoint boxes (pure, no nft).

A level is an ordered rule list (first match wins). Seen from the NIC, every rule is a box
in five dimensions:

    remote address . local address . l4proto . source port . destination port

(remote = source for inbound, destination for outbound). ``Decomposer`` takes the dimensions
in a chosen **order**, cuts each one into elementary intervals (the cut points of the rules
still in play), labels each piece with the rules that contain it, and recurses on each
distinct label; the first rule left when no dimension remains decides. Adjacent pieces whose
sub-results are identical are merged, and results are interned, so identical sub-trees are
shared. This is the two-stage class lookup of design.md, cut after the first ``k``
dimensions of the order (``stop``):

- stage 1: the tree over the first ``k`` dimensions, ending in classes (interned sub-trees),
- stage 2: per class, the rest of its sub-tree (rendered by nsg_agent/compiler/classified.py).

Two orders are used (``ORDERS``): *remote first* (stage 1 = the remote address alone, stage 2
= local . proto . sport . dport) and *ports first* (stage 1 = local . proto . sport . dport,
stage 2 = the remote address). Which one is smaller depends on the level: many overlapping
prefix lists make many remote classes, many distinct port ranges make many port classes.

Ports only constrain TCP and UDP: the protocol dimension always cuts 6 and 17 into pieces of
their own, and for every other protocol piece the rules with port terms are dropped, so the
boxes of non-TCP/UDP protocols always span 0-65535 on both port fields (``th`` reads arbitrary
bytes there, which then match whatever they are).

Everything is integers: addresses as ``int(ip_address)`` within one family. The sweep keeps
the rules in play as a bit mask over their rank (bit i = the i-th candidate), so a label is
one integer and its members come out in priority order.
"""

from __future__ import annotations

from dataclasses import dataclass

Interval = tuple[int, int]

DIMS = ("remote", "local", "proto", "sport", "dport")
D_REMOTE, D_LOCAL, D_PROTO, D_SPORT, D_DPORT = range(5)
PORT_PROTOCOLS = (6, 17)
REMOTE_FIRST = (D_REMOTE, D_LOCAL, D_PROTO, D_SPORT, D_DPORT)
PORTS_FIRST = (D_LOCAL, D_PROTO, D_SPORT, D_DPORT, D_REMOTE)
# order -> number of stage-1 dimensions
ORDERS = {"remote-first": (REMOTE_FIRST, 1), "ports-first": (PORTS_FIRST, 4)}


def full_ranges(family: int) -> tuple[Interval, ...]:
    top = (1 << 32) - 1 if family == 4 else (1 << 128) - 1
    return ((0, top), (0, top), (0, 255), (0, 65535), (0, 65535))


class TooLarge(Exception):
    """The decomposition would exceed the element budget: render the level simply."""


@dataclass(frozen=True)
class Box:
    """One projected rule: per dimension (in DIMS order) a tuple of disjoint sorted intervals."""

    index: int  # position in the level (priority order)
    dims: tuple[tuple[Interval, ...], ...]
    ports_any: bool


LEAF, NODE, CLASS = "leaf", "node", "class"
EMPTY = -1


class Decomposer:
    """Decomposes one level for one address family, dimensions taken in ``order`` (a
    permutation of DIMS indices). Results are interned node ids.

    ``nodes[id]`` is either ("leaf", rule_index) -- that rule for the whole remaining space --
    or ("node", ((lo, hi, child_id), ...)) for one dimension, pieces sorted and disjoint; a
    space not covered by any piece matches no rule; or, at dimension ``stop`` when that is
    not 5, ("class", rules): the candidate rules there, left for the caller to render.
    Dimension numbers below (``d``) are
    positions in ``order``.
    """

    def __init__(self, boxes: list[Box], family: int, budget: int,
                 order: tuple[int, ...] = REMOTE_FIRST, stop: int = 5):
        full = full_ranges(family)
        self.order = order
        self.full = tuple(full[o] for o in order)
        self.proto_d = order.index(D_PROTO)
        self.boxes = {b.index: tuple(b.dims[o] for o in order) for b in boxes}
        self.ports_any = {b.index: b.ports_any for b in boxes}
        self.rule_order = tuple(b.index for b in boxes)
        self.budget = budget
        self.stop = stop  # at this dimension a node is ("class", rules): not decomposed further
        self.work = 0
        self.nodes: list[tuple] = []
        self._intern: dict[tuple, int] = {}
        self._memo: dict[tuple[int, tuple[int, ...]], int] = {}
        self.cands_at: dict[tuple[int, int], tuple[int, ...]] = {}  # (d, node) -> its rules
        # full_from[i][d]: rule i covers the whole space in dimensions d.. (so it ends the list)
        self._full_from: dict[int, list[bool]] = {}
        for index, dims in self.boxes.items():
            flags = [False] * 6
            flags[5] = True
            for d in range(4, -1, -1):
                flags[d] = flags[d + 1] and dims[d] == (self.full[d],)
            self._full_from[index] = flags

    # interning -------------------------------------------------------------------------
    def _node(self, key: tuple) -> int:
        found = self._intern.get(key)
        if found is None:
            found = len(self.nodes)
            self.nodes.append(key)
            self._intern[key] = found
        return found

    def root(self) -> int:
        return self.decompose(self.rule_order, 0)

    def decompose(self, cands: tuple[int, ...], d: int) -> int:
        for i, c in enumerate(cands):
            if self._full_from[c][d]:
                cands = cands[: i + 1]
                break
        if not cands:
            return EMPTY
        if self._full_from[cands[0]][d]:
            return self._node((LEAF, cands[0]))
        if d == self.stop:
            return self._node((CLASS, cands))
        key = (d, cands)
        found = self._memo.get(key)
        if found is not None:
            return found
        result = self._sweep(cands, d)
        self._memo[key] = result
        self.cands_at.setdefault((d, result), cands)
        return result

    def rules_of(self, node: int, d: int) -> tuple[int, ...]:
        """The candidate rules (priority order) whose first match ``node`` at dim d is."""
        kind, payload = self.nodes[node]
        if kind == LEAF:
            return (payload,)
        return payload if kind == CLASS else self.cands_at[(d, node)]

    def _sweep(self, cands: tuple[int, ...], d: int) -> int:
        lo_all, hi_all = self.full[d]
        n = len(cands)
        shift = n.bit_length()  # event = point << shift | rank; rank n = a cut without toggle
        events: list[int] = []
        append = events.append
        boxes = self.boxes
        for rank, c in enumerate(cands):
            for lo, hi in boxes[c][d]:
                append(lo << shift | rank)
                if hi < hi_all:
                    append((hi + 1) << shift | rank)
        proto = d == self.proto_d
        if proto:
            for p in PORT_PROTOCOLS:  # 6 and 17 always stand alone
                append(p << shift | n)
                append((p + 1) << shift | n)
        append(lo_all << shift | n)
        if self.work + len(events) > self.budget:  # one piece per cut: fail over before sorting
            raise TooLarge(f"more than {self.budget} pieces")
        events.sort()
        rank_mask = (1 << shift) - 1
        ports_any = [self.ports_any[c] for c in cands]
        port_mask = sum(1 << r for r in range(n) if ports_any[r])
        child_of_label: dict[int, int] = {}
        pieces: list[list[int]] = []
        active = 0
        count = len(events)
        i = 0
        work = 0
        while i < count:
            cut = events[i] >> shift
            while i < count and events[i] >> shift == cut:
                r = events[i] & rank_mask
                if r != n:
                    active ^= 1 << r
                i += 1
            hi = (events[i] >> shift) - 1 if i < count else hi_all
            work += 1
            label = active
            if proto and not (cut == hi and cut in PORT_PROTOCOLS):
                label = active & port_mask
            child = child_of_label.get(label)
            if child is None:
                members = []
                m = label
                while m:
                    low = m & -m
                    members.append(cands[low.bit_length() - 1])
                    m ^= low
                child = self.decompose(tuple(members), d + 1)
                child_of_label[label] = child
            if child == EMPTY:
                continue
            if pieces and pieces[-1][2] == child and pieces[-1][1] + 1 == cut:
                pieces[-1][1] = hi
            else:
                pieces.append([cut, hi, child])
        self.work += work
        if self.work > self.budget:
            raise TooLarge(f"more than {self.budget} pieces")
        if not pieces:
            return EMPTY
        if len(pieces) == 1 and (pieces[0][0], pieces[0][1]) == self.full[d] and self.nodes[pieces[0][2]][0] == LEAF:
            return pieces[0][2]  # the same rule everywhere: a leaf covers this dimension too
        return self._node((NODE, tuple(tuple(p) for p in pieces)))


def first_match_1d(rules: list[tuple[int, tuple[Interval, ...]]]) -> list[tuple[int, int, int]]:
    """One dimension, rules in priority order as (rule, sorted disjoint intervals): the
    pieces (lo, hi, first rule containing them), adjacent equal pieces merged, gaps left out."""
    n = len(rules)
    shift = (n + 1).bit_length()
    events = []
    for rank, (_, ivs) in enumerate(rules):
        for lo, hi in ivs:
            events.append(lo << shift | rank)
            events.append((hi + 1) << shift | rank)
    events.sort()
    mask = (1 << shift) - 1
    out: list[list[int]] = []
    active = 0
    i, count = 0, len(events)
    while i < count:
        cut = events[i] >> shift
        while i < count and events[i] >> shift == cut:
            active ^= 1 << (events[i] & mask)
            i += 1
        if not active or i == count:
            continue
        rule = rules[(active & -active).bit_length() - 1][0]
        hi = (events[i] >> shift) - 1
        if out and out[-1][2] == rule and out[-1][1] + 1 == cut:
            out[-1][1] = hi
        else:
            out.append([cut, hi, rule])
    return [(lo, hi, r) for lo, hi, r in out]
