"""One in-memory model of nftables tables: what the fake backend holds, what the tracer walks,
what ``delta`` diffs, what counters and set sizes are read from (pure).

An :class:`NftRuleset` is a set of :class:`NftTable` values (family, name) built by applying
libnftables JSON commands, all or nothing, the way a kernel transaction does (:meth:`apply`
returns a new ruleset and leaves the old one untouched; a refused command raises the same
typed errors as the kernel: NotFound, Exists, Busy). It is also built from a kernel listing
(:meth:`from_listing`), so the fake after a delta, a fresh full load and the kernel's own
table are the same kind of value, and :meth:`NftTable.dump` writes any of them as sorted nft
text a reviewer can read (the compiler's goldens are kept in that form too).

Only what the agent and its lab write is modelled: tables, chains (base or regular), named
sets and maps with their elements, rules (add/insert), and flush/delete of each.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Collection, Iterable, Iterator

from nsg_agent.kernel.errors import NftError, nft_error

TableKey = tuple[str, str]  # (family, name)

_ENOENT = "Error: No such file or directory"
_EEXIST = "Error: File exists"
_EBUSY = "Error: Could not process rule: Device or resource busy"
_CHAIN_FIELDS = ("family", "table", "name", "handle", "type", "hook", "prio", "policy", "dev")
_CHAIN_KEYS = frozenset(_CHAIN_FIELDS)


@dataclass(frozen=True)
class RuleCounter:
    packets: int = 0
    bytes: int = 0


@dataclass
class NftSet:
    kind: str  # "set" or "map"
    obj: dict  # the declaration without its elements (family, table, name, type, flags, map, ...)
    elem: list = field(default_factory=list)  # keys, or [key, data] pairs for maps

    @property
    def name(self) -> str:
        return self.obj["name"]

    def as_object(self, with_elements: bool = True) -> dict:
        out = dict(self.obj)
        if with_elements and self.elem:
            out["elem"] = list(self.elem)
        return out


@dataclass
class NftChain:
    obj: dict  # family, table, name, and for a base chain type, hook, prio, policy
    rules: list[dict] = field(default_factory=list)  # rule objects, in order

    @property
    def name(self) -> str:
        return self.obj["name"]

    @property
    def is_base(self) -> bool:
        return "hook" in self.obj


@dataclass
class NftTable:
    family: str
    name: str
    handle: int = 0
    chains: dict[str, NftChain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)

    # --- reading ------------------------------------------------------------------------
    @property
    def rules(self) -> list[dict]:
        """Every rule, chain by chain in creation order."""
        return [r for c in self.chains.values() for r in c.rules]

    def set_sizes(self) -> dict[str, int]:
        """Element count of every named set and map."""
        return {name: len(s.elem) for name, s in self.sets.items()}

    def counters(self, skip_chains: Iterable[str] = ()) -> dict[tuple[str, str], RuleCounter]:
        """Per-rule counters keyed by (chain, rule comment), summed when several rules of one
        chain carry the same comment (an IPv4 and an IPv6 variant)."""
        skip = set(skip_chains)
        out: dict[tuple[str, str], RuleCounter] = {}
        for chain in self.chains.values():
            if chain.name in skip:
                continue
            for rule in chain.rules:
                if not rule.get("comment"):
                    continue
                packets = nbytes = 0
                for expr in rule.get("expr", []):
                    c = expr.get("counter") if isinstance(expr, dict) else None
                    if isinstance(c, dict):
                        packets += int(c.get("packets", 0))
                        nbytes += int(c.get("bytes", 0))
                key = (chain.name, rule["comment"])
                prev = out.get(key, RuleCounter())
                out[key] = RuleCounter(prev.packets + packets, prev.bytes + nbytes)
        return out

    def referenced(self, chain: str) -> bool:
        """Does any rule or verdict map of the table jump to or go to ``chain``?"""
        needle = f'"target":"{chain}"'
        blobs = [json.dumps(r.get("expr", []), separators=(",", ":")) for r in self.rules]
        blobs += [json.dumps(st.elem, separators=(",", ":")) for st in self.sets.values() if st.kind == "map"]
        return any(needle in b for b in blobs)

    # --- writing a listing back ------------------------------------------------------------
    def listing_items(self, *, terse: bool = False) -> list[dict]:
        """The table as ``nft -j list table`` items: the table, its sets and maps (sorted),
        chains (sorted), then rules."""
        items: list[dict] = [{"table": {"family": self.family, "name": self.name, "handle": self.handle}}]
        for name in sorted(self.sets):
            s = self.sets[name]
            items.append({s.kind: s.as_object(with_elements=not terse)})
        items += [{"chain": dict(self.chains[n].obj)} for n in sorted(self.chains)]
        items += [{"rule": copy.deepcopy(r)} for r in self.rules]
        return items

    # --- nft text ------------------------------------------------------------------------
    def dump(self) -> str:
        """Sorted ``add`` lines in nft syntax, no handles: the table, its chains, its sets
        and maps with their elements, then each chain's rules in order. Two tables that
        enforce the same thing dump to the same text whatever order they were built in."""
        where = f"{self.family} {self.name}"
        lines = [f"add table {where}"]
        for name in sorted(self.chains):
            c = self.chains[name].obj
            spec = ""
            if "hook" in c:
                spec = (f" {{ type {c.get('type', 'filter')} hook {c['hook']}"
                        + (f" device {c['dev']}" if c.get("dev") else "")
                        + f" priority {c.get('prio', 0)} ; policy {c.get('policy', 'accept')} ; }}")
            lines.append(f"add chain {where} {name}{spec}")
        for name in sorted(self.sets):
            s = self.sets[name]
            o = s.obj
            decl = [f"type {_type_text(o.get('type'))}" + (f" : {_type_text(o.get('map'))}" if s.kind == "map" else "")]
            flags = o.get("flags")
            if flags:
                decl.append("flags " + ", ".join([flags] if isinstance(flags, str) else flags))
            lines.append(f"add {s.kind} {where} {name} {{ {' ; '.join(decl)} ; }}")
            if s.elem:
                lines.append(f"add element {where} {name} {_braces([_elem_text(e, s.kind == 'map') for e in s.elem])}")
        for name in sorted(self.chains):
            for rule in self.chains[name].rules:
                text = " ".join(_stmt_text(e) for e in rule.get("expr", []))
                comment = f" comment {json.dumps(rule['comment'])}" if rule.get("comment") else ""
                lines.append(f"add rule {where} {name} {text}{comment}".rstrip())
        return "\n".join(lines) + "\n"


class NftRuleset:
    """Several tables (the agent's, the lab's bridge and inet tables) keyed by (family, name)."""

    def __init__(self, tables: dict[TableKey, NftTable] | None = None, next_handle: int = 1,
                 *, share: bool = False):
        self.tables: dict[TableKey, NftTable] = tables or {}
        self.next_handle = next_handle
        # share: the model keeps the commands' own objects (no copies, no handles, counters as
        # written): for read-only use on a hot path (delta, set sizes). The caller must not
        # mutate the commands while the model lives.
        self.share = share

    @classmethod
    def from_commands(cls, commands: list[dict], *, share: bool = False) -> "NftRuleset":
        if share:
            return cls._shared(commands)
        return cls().apply(commands)

    @classmethod
    def _shared(cls, commands: list[dict]) -> "NftRuleset":
        """The shared model of a compiled batch, on the edit path (delta, set sizes): one
        tight loop over the adds a compiled batch is made of; anything else (or anything
        the kernel would refuse) takes the general path, which raises as the kernel would."""
        rs = cls(share=True)
        tables = rs.tables
        family = name = None  # the table the last command named (nearly all name the same one)
        table: NftTable | None = None
        for cmd in commands:
            verb, body = next(iter(cmd.items()))
            if verb == "metainfo":
                continue
            kind, obj = next(iter(body.items()))
            if verb == "add":
                if kind == "table":
                    key = (obj["family"], obj["name"])
                    if key not in tables:
                        tables[key] = NftTable(obj["family"], obj["name"])
                    family = None
                    continue
                if obj.get("table") != name or obj.get("family") != family:
                    family, name = obj.get("family"), obj.get("table")
                    table = tables.get((family, name))
                if table is not None:
                    if kind == "rule":
                        chain = table.chains.get(obj["chain"])
                        if chain is not None:
                            chain.rules.append(obj)
                            continue
                    elif kind == "chain":
                        if obj["name"] not in table.chains:
                            # a compiled chain object carries chain fields only: shared as it is
                            keep = obj.keys() <= _CHAIN_KEYS
                            table.chains[obj["name"]] = NftChain(
                                obj if keep else {k: v for k, v in obj.items() if k in _CHAIN_FIELDS})
                        continue
                    elif kind in ("set", "map") and obj["name"] not in table.sets:
                        table.sets[obj["name"]] = NftSet(kind, {k: v for k, v in obj.items() if k != "elem"},
                                                         obj.get("elem") or [])
                        continue
            elif verb == "delete" and kind == "table" and (obj["family"], obj["name"]) in tables:
                del tables[(obj["family"], obj["name"])]
                family = None
                continue
            return cls(share=True).apply(commands)  # the general path decides (and raises)
        return rs

    @classmethod
    def from_listing(cls, listing: dict | None) -> "NftRuleset":
        """From ``nft -j list table|ruleset`` output (counters and handles kept)."""
        rs = cls()
        for item in (listing or {}).get("nftables", []):
            (kind, obj), = item.items()
            if kind == "metainfo":
                continue
            if kind == "table":
                rs.tables[(obj["family"], obj["name"])] = NftTable(obj["family"], obj["name"], obj.get("handle", 0))
                continue
            family, name = obj.get("family", ""), obj.get("table", "")  # a partial listing: one table
            table = rs.tables.setdefault((family, name), NftTable(family, name))
            if kind == "chain":
                table.chains[obj["name"]] = NftChain({k: v for k, v in obj.items() if k in _CHAIN_FIELDS})
            elif kind in ("set", "map"):
                table.sets[obj["name"]] = NftSet(kind, {k: v for k, v in obj.items() if k != "elem"},
                                                 list(obj.get("elem", [])))
            elif kind == "rule":
                chain = table.chains.setdefault(obj["chain"], NftChain(
                    {"family": family, "table": name, "name": obj["chain"]}))
                chain.rules.append(copy.deepcopy(obj))
        return rs

    def table(self, family: str, name: str) -> NftTable | None:
        return self.tables.get((family, name))

    def __iter__(self) -> Iterator[NftTable]:
        return iter(self.tables.values())

    def copy(self) -> "NftRuleset":
        if self.share:
            if self.tables:
                raise ValueError("a shared model is built once, not applied to")
            return NftRuleset(share=True)
        return NftRuleset(copy.deepcopy(self.tables), self.next_handle)

    def dump(self) -> str:
        return "".join(self.tables[k].dump() for k in sorted(self.tables))

    # --- transactions ----------------------------------------------------------------------
    def apply(self, commands: list[dict]) -> "NftRuleset":
        """A new ruleset with ``commands`` applied, all or nothing: the first refused command
        raises (with its index) and this ruleset is unchanged."""
        out = self.copy()
        for i, cmd in enumerate(commands):
            (verb, body), = cmd.items()
            if verb == "metainfo":
                continue
            (kind, obj), = body.items()
            try:
                out._apply_one(verb, kind, obj)
            except NftError as e:
                raise nft_error(f"command #{i} refused", error=e.error, command=cmd, index=i) from None
        return out

    def _handle(self) -> int:
        self.next_handle += 1
        return self.next_handle

    def _new(self, obj: dict, keep: Collection[str] | None = None, drop: Collection[str] = ()) -> dict:
        """The object as the model stores it: a copy with a handle, or (shared) the very object."""
        if self.share and keep is None and not drop:
            return obj
        skip = set(drop)
        out = {k: v for k, v in obj.items() if (keep is None or k in keep) and k not in skip}
        if not self.share:
            out.setdefault("handle", self._handle())
        return out

    def _table_of(self, obj: dict) -> NftTable:
        table = self.tables.get((obj["family"], obj["table"]))
        if table is None:
            raise nft_error("no such table", error=_ENOENT)
        return table

    def _apply_one(self, verb: str, kind: str, obj: dict) -> None:
        if kind == "table":
            key = (obj["family"], obj["name"])
            table = self.tables.get(key)
            if verb in ("add", "create"):
                if table is None:
                    self.tables[key] = NftTable(obj["family"], obj["name"], 0 if self.share else self._handle())
                elif verb == "create":
                    raise nft_error("table exists", error=_EEXIST)
            elif verb in ("delete", "destroy"):
                if table is None:
                    if verb == "delete":
                        raise nft_error("no such table", error=_ENOENT)
                    return
                del self.tables[key]
            elif verb == "flush":
                if table is None:
                    raise nft_error("no such table", error=_ENOENT)
                for c in table.chains.values():
                    c.rules.clear()
                for s in table.sets.values():
                    s.elem.clear()
            else:
                raise nft_error("unmodelled", error=f"Error: the model does not know {verb} table")
            return
        table = self._table_of(obj)
        name: str = obj.get("name", "")
        if kind == "chain":
            if verb in ("add", "create"):
                if name in table.chains:
                    if verb == "create":
                        raise nft_error("chain exists", error=_EEXIST)
                    return
                table.chains[name] = NftChain(self._new(obj, keep=_CHAIN_FIELDS))
                return
            if name not in table.chains:
                raise nft_error("no such chain", error=_ENOENT)
            if verb == "flush":
                table.chains[name].rules.clear()
                return
            if verb == "delete":
                if table.chains[name].rules or table.referenced(name):
                    raise nft_error("chain in use", error=_EBUSY)
                del table.chains[name]
                return
        elif kind in ("set", "map"):
            if verb in ("add", "create"):
                if name in table.sets:
                    if verb == "create":
                        raise nft_error("set exists", error=_EEXIST)
                    st = table.sets[name]
                    st.elem = st.elem + list(obj.get("elem", []))
                    return
                table.sets[name] = NftSet(kind, self._new(obj, drop=("elem",)), list(obj.get("elem", [])))
                return
            if name not in table.sets:
                raise nft_error("no such set", error=_ENOENT)
            if verb == "flush":
                table.sets[name].elem.clear()
                return
            if verb == "delete":
                ref = json.dumps(f"@{name}")
                if any(ref in json.dumps(r.get("expr", [])) for r in table.rules):
                    raise nft_error("set in use", error=_EBUSY)
                del table.sets[name]
                return
        elif kind == "element":
            if name not in table.sets:
                raise nft_error("no such set", error=_ENOENT)
            if verb in ("add", "create"):
                st = table.sets[name]
                st.elem = st.elem + list(obj.get("elem", []))
                return
        elif kind == "rule":
            chain = table.chains.get(obj.get("chain", ""))
            if chain is None:
                raise nft_error("no such chain", error="Error: Could not process rule: No such file or directory")
            if verb in ("add", "insert"):
                if self.share:
                    r = obj
                else:
                    r = {k: v for k, v in obj.items() if k not in ("index", "handle", "position")}
                    r["handle"] = self._handle()
                    # a counter starts at zero, whatever the command said
                    r["expr"] = [({"counter": {"packets": 0, "bytes": 0}} if "counter" in e else copy.deepcopy(e))
                                 for e in obj.get("expr", [])]
                if verb == "insert":
                    chain.rules.insert(0, r)
                else:
                    chain.rules.append(r)
                return
        raise nft_error("unmodelled", error=f"Error: the model does not know {verb} {kind}")


# --- nft syntax for the expressions the compiler and the lab emit -------------------------------

_OPS = {"==": "", "in": "", "!=": "!= ", "<": "< ", ">": "> ", "<=": "<= ", ">=": ">= "}
_BINOPS = ("&", "|", "^", "<<", ">>")
_WIDE = 100  # a brace group longer than this is written one item per line


def _braces(items: list[str]) -> str:
    """``{ a, b }``, or one item per line when that would be long (a reviewer sees which
    element changed in a diff). The items keep their order: the compiler's is deterministic."""
    flat = "{ " + ", ".join(items) + " }"
    if len(flat) <= _WIDE:
        return flat
    return "{\n\t" + ",\n\t".join(items) + "\n}"
_VERDICTS = ("accept", "drop", "continue", "return")


def _type_text(t: Any) -> str:
    if isinstance(t, list):
        return " . ".join(t)
    return str(t)


def _value_text(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        if v.startswith("@"):
            return v
        return v if v.replace(".", "").replace(":", "").replace("-", "").replace("_", "").replace("/", "").isalnum() \
            else json.dumps(v)
    if isinstance(v, list):
        return _braces([_value_text(x) for x in v])
    if isinstance(v, dict):
        (k, body), = v.items()
        if k == "set":
            items = body if isinstance(body, list) else [body]
            return _braces([_elem_text(x, isinstance(x, list) and len(x) == 2) for x in items])
        if k in _BINOPS:
            return f" {k} ".join(_hex(x) if isinstance(x, int) else _key_text(x) for x in body)
        if k == "prefix":
            return f"{body['addr']}/{body['len']}"
        if k == "range":
            return f"{_value_text(body[0])}-{_value_text(body[1])}"
        if k == "concat":
            return " . ".join(_value_text(x) for x in body)
        if k in ("payload", "meta", "ct", "fib", "rt", "exthdr", "tcp option"):
            return _key_text(v)
        if k == "elem":
            return _value_text(body["val"])
    return json.dumps(v, sort_keys=True)


def _hex(n: int) -> str:
    return f"0x{n:08x}"


def _key_text(k: Any) -> str:
    if isinstance(k, dict):
        (kind, body), = k.items()
        if kind == "payload":
            if "protocol" in body:
                return f"{body['protocol']} {body['field']}"
            return f"@{body.get('base')},{body.get('offset')},{body.get('len')}"
        if kind == "meta":
            return f"meta {body['key']}"
        if kind == "ct":
            return f"ct {body['key']}" + (f" {body['dir']}" if body.get("dir") else "")
        if kind == "concat":
            return " . ".join(_key_text(x) for x in body)
    return _value_text(k)


def _elem_text(e: Any, is_map: bool) -> str:
    if is_map and isinstance(e, list) and len(e) == 2:
        return f"{_value_text(e[0])} : {_stmt_text(e[1]) if isinstance(e[1], dict) else _value_text(e[1])}"
    return _value_text(e)


def _stmt_text(e: Any) -> str:
    if not isinstance(e, dict):
        return json.dumps(e)
    (k, body), = e.items()
    if k == "match":
        return f"{_key_text(body['left'])} {_OPS.get(body.get('op', '=='), body.get('op', '') + ' ')}" \
               f"{_value_text(body['right'])}"
    if k in _VERDICTS:
        return k
    if k in ("jump", "goto"):
        return f"{k} {body['target']}"
    if k == "counter":
        return "counter" if not body or not (body.get("packets") or body.get("bytes")) else \
            f"counter packets {body.get('packets', 0)} bytes {body.get('bytes', 0)}"
    if k == "vmap":
        return f"{_key_text(body['key'])} vmap {_value_text(body['data'])}"
    if k == "log":
        parts = ["log"]
        if body and body.get("prefix") is not None:
            parts.append(f"prefix {json.dumps(body['prefix'])}")
        if body and body.get("group") is not None:
            parts.append(f"group {body['group']}")
        return " ".join(parts)
    if k == "limit":
        return f"limit rate {'over ' if body.get('inv') else ''}{body['rate']}/{body.get('per', 'second')}" + \
            (f" burst {body['burst']} packets" if body.get("burst") else "")
    if k == "mangle":
        return f"{_key_text(body['key'])} set {_value_text(body['value'])}"
    if k == "reject":
        return "reject" + (f" with {body['type']} {body.get('expr', '')}".rstrip() if body else "")
    return json.dumps(e, sort_keys=True)
