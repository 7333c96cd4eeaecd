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

from dataclasses import dataclass, field

from nsg_agent.compiler.render import TABLE_NAME

FAMILY = "inet"
# Use the delta only when it carries at most this share of the full batch's rules+elements.
MAX_SHARE = 0.5


@dataclass
class _Table:
    chains: dict[str, dict] = field(default_factory=dict)  # name -> chain object
    sets: dict[str, tuple[str, dict]] = field(default_factory=dict)  # name -> (set|map, object)
    rules: dict[str, list[dict]] = field(default_factory=dict)  # chain -> its rule objects, in order
    size: int = 0  # rules + set elements


def parse(commands: list[dict]) -> _Table | None:
    """The table a compiled batch builds; None for a batch of another shape. (Objects are
    compared with ``==``, which is C-speed on these nested dicts and lists.)"""
    t = _Table()
    for cmd in commands:
        verb, body = next(iter(cmd.items()))
        kind, obj = next(iter(body.items()))
        if kind == "table":
            continue  # the add/delete/add preamble
        if verb != "add":
            return None
        if kind == "chain":
            t.chains[obj["name"]] = obj
            t.rules.setdefault(obj["name"], [])
        elif kind in ("set", "map"):
            t.sets[obj["name"]] = (kind, obj)
            t.size += len(obj.get("elem", ()))
        elif kind == "rule":
            if obj["chain"] not in t.rules:
                return None
            t.rules[obj["chain"]].append(obj)
            t.size += 1
        else:
            return None
    return t


def _definition(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "elem"}


def _ref(name: str) -> dict:
    return {"family": FAMILY, "table": TABLE_NAME, "name": name}


def delta(old: list[dict], new: list[dict], max_share: float = MAX_SHARE) -> list[dict] | None:
    """Commands that turn the table built by ``old`` into the one built by ``new`` (see the
    module docstring), or None: replace the whole table instead."""
    a, b = parse(old), parse(new)
    if a is None or b is None:
        return None
    base_a = {n: c for n, c in a.chains.items() if "hook" in c}
    base_b = {n: c for n, c in b.chains.items() if "hook" in c}
    if base_a != base_b:
        return None
    for name in a.sets.keys() & b.sets.keys():
        (kind_a, obj_a), (kind_b, obj_b) = a.sets[name], b.sets[name]
        if kind_a != kind_b or _definition(obj_a) != _definition(obj_b):
            return None  # another type or flags: not something a flush can change
    for name in a.chains.keys() & b.chains.keys():
        if a.chains[name] != b.chains[name]:
            return None

    added_chains = [n for n in b.chains if n not in a.chains]
    removed_chains = [n for n in a.chains if n not in b.chains]
    added_sets = [n for n in b.sets if n not in a.sets]
    removed_sets = [n for n in a.sets if n not in b.sets]
    changed_sets = [n for n in b.sets if n in a.sets
                    and a.sets[n][1].get("elem", []) != b.sets[n][1].get("elem", [])]
    changed_chains = [n for n in b.chains if n in a.chains and a.rules[n] != b.rules[n]]

    out: list[dict] = []
    size = 0
    for n in added_chains:
        out.append({"add": {"chain": b.chains[n]}})
    for n in added_sets:
        kind, obj = b.sets[n]
        out.append({"add": {kind: obj}})
        size += len(obj.get("elem", ()))
    for n in changed_sets:
        # flush + "add set" with every element, not "add element": libnftables 1.0.6 reads
        # back the elements of every interval set in the table before an "add element"
        # (0.8 s at the benchmark maximum), but not before an "add set".
        kind, obj = b.sets[n]
        out += [{"flush": {kind: _ref(n)}}, {"add": {kind: obj}}]
        size += len(obj.get("elem", ()))
    for n in changed_chains + added_chains:
        if n in a.chains:
            out.append({"flush": {"chain": _ref(n)}})
        out += [{"add": {"rule": rule}} for rule in b.rules[n]]
        size += len(b.rules[n])
    for n in removed_chains:
        if a.rules[n]:
            out.append({"flush": {"chain": _ref(n)}})
    for n in removed_sets:
        out.append({"delete": {a.sets[n][0]: _ref(n)}})
    for n in removed_chains:
        out.append({"delete": {"chain": _ref(n)}})
    if size > max_share * max(b.size, 1):
        return None
    return out
