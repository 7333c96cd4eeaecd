"""The smaller batch that turns one compiled table into another, in one transaction (pure).

A full apply replaces the whole table (``add``/``delete``/``add table`` and everything in
it): simple and always right, but its cost grows with the table, not with the change. An
edit usually changes a few sets and chains (an ASG gains a member: the sets and class
chains of the rules that name it), so when the kernel still holds exactly the ``old``
batch, :func:`delta` builds a batch that touches only what differs:

1. ``add chain`` / ``add set|map`` (with elements) for new objects,
2. ``flush set|map`` + ``add set|map`` with its elements for sets whose elements changed,
3. ``flush chain`` + ``add rule`` for chains whose rules changed (and ``flush`` for chains
   that go away, dropping their references),
4. ``delete set|map`` / ``delete chain`` for objects that went away.

It is still one libnftables call, so one transaction: all of it or nothing. Counters of
rules in chains that are not rewritten keep counting. The result lists the same chains,
sets and rules as a fresh load of ``new`` (tests check it against the kernel); only the
order of objects in ``nft list`` and the handles differ.

:func:`delta` returns None when the change is structural (base chains, a set's type or
flags) or when the delta would not be clearly smaller than the full batch: the caller then
replaces the table.
"""

from __future__ import annotations

from nsg_agent.compiler.naming import TABLE_NAME
from nsg_agent.kernel.errors import NftError
from nsg_agent.kernel.state import NftRuleset, NftTable

FAMILY = "inet"
# Use the delta only when it carries at most this share of the full batch's rules+elements.
MAX_SHARE = 0.5


def parse(commands: list[dict]) -> NftTable | None:
    """The agent's table a compiled batch builds (the one table model, sharing the batch's
    objects: nothing is copied); None for a batch of another shape. (Objects are compared
    with ``==``, which is C-speed on these nested dicts and lists.)"""
    for cmd in commands:
        verb, body = next(iter(cmd.items()))
        kind = next(iter(body))
        if kind != "table" and verb != "add":
            return None
    try:
        model = NftRuleset.from_commands(commands, share=True)
    except NftError:
        return None
    return model.table(FAMILY, TABLE_NAME)


def _size(t: NftTable) -> int:
    """Rules + set elements: what a full load of the table costs."""
    return sum(len(c.rules) for c in t.chains.values()) + sum(len(s.elem) for s in t.sets.values())


def _ref(name: str) -> dict:
    return {"family": FAMILY, "table": TABLE_NAME, "name": name}


def delta(old: list[dict], new: list[dict], max_share: float = MAX_SHARE) -> list[dict] | None:
    """Commands that turn the table built by ``old`` into the one built by ``new`` (see the
    module docstring), or None: replace the whole table instead."""
    a, b = parse(old), parse(new)
    if a is None or b is None:
        return None
    base_a = {n: c.obj for n, c in a.chains.items() if c.is_base}
    base_b = {n: c.obj for n, c in b.chains.items() if c.is_base}
    if base_a != base_b:
        return None
    for name in a.sets.keys() & b.sets.keys():
        sa, sb = a.sets[name], b.sets[name]
        if sa.kind != sb.kind or sa.obj != sb.obj:
            return None  # another type or flags: not something a flush can change
    for name in a.chains.keys() & b.chains.keys():
        if a.chains[name].obj != b.chains[name].obj:
            return None

    added_chains = [n for n in b.chains if n not in a.chains]
    removed_chains = [n for n in a.chains if n not in b.chains]
    added_sets = [n for n in b.sets if n not in a.sets]
    removed_sets = [n for n in a.sets if n not in b.sets]
    changed_sets = [n for n in b.sets if n in a.sets and a.sets[n].elem != b.sets[n].elem]
    changed_chains = [n for n in b.chains if n in a.chains and a.chains[n].rules != b.chains[n].rules]

    out: list[dict] = []
    size = 0
    for n in added_chains:
        out.append({"add": {"chain": b.chains[n].obj}})
    for n in added_sets:
        st = b.sets[n]
        out.append({"add": {st.kind: st.as_object()}})
        size += len(st.elem)
    for n in changed_sets:
        # flush + "add set" with every element, not "add element": libnftables 1.0.6 reads
        # back the elements of every interval set in the table before an "add element"
        # (0.8 s at the benchmark maximum), but not before an "add set".
        st = b.sets[n]
        out += [{"flush": {st.kind: _ref(n)}}, {"add": {st.kind: st.as_object()}}]
        size += len(st.elem)
    for n in changed_chains + added_chains:
        if n in a.chains:
            out.append({"flush": {"chain": _ref(n)}})
        out += [{"add": {"rule": rule}} for rule in b.chains[n].rules]
        size += len(b.chains[n].rules)
    for n in removed_chains:
        if a.chains[n].rules:
            out.append({"flush": {"chain": _ref(n)}})
    for n in removed_sets:
        out.append({"delete": {a.sets[n].kind: _ref(n)}})
    for n in removed_chains:
        out.append({"delete": {"chain": _ref(n)}})
    if size > max_share * max(_size(b), 1):
        return None
    return out
