"""What a compile says about the table it made, as typed values (pure): the :class:`Summary`
(counts, the placement, per NIC its chains and levels, per level chain how it was rendered)
and the :class:`RuleIndex` (which NSG rule each counted nft rule stands for).

The daemon keeps both in its commit and writes them to the status file. ``to_json`` gives the
file's shape and ``from_json`` reads it back; a value read equals the value written. A document
that is not one the compiler writes is refused with a :class:`ResultError` naming the field:

    commit.summary.nics.web1.inbound is missing
    commit.rule_index["lvl_1f0e2d3c_r0|web-nsg: UserRule_http"].scope is a string, not an array

Consumers read attributes (``summary.rules``, ``summary.nics[name].interface``,
``index.lookup(chain, comment)``), so a misspelt key is an AttributeError or a TypeError, never
a silent None.

Status-file shapes (unchanged since the first release):

    summary     {"table", "placement", "mode", "modes_used", "chains", "rules", "sets",
                 "set_elements",
                 "nics": {nic: {"interface" (host) | "addresses" (fabric), "inbound", "outbound",
                                "levels": {kind: [{"chain", "nsg", "direction", "mode"}]}}},
                 "levels": {chain: {"nsg", "direction", "platform", "rules", "users",
                                    ["fallback"], ["elements", "classes", ["orders"]], "mode"}}}
    rule_index  {"<chain>|<comment>": {"nsg", "rule", "direction", "chain", "scope": [...]}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, TypeVar

DEFAULT_TABLE = "inet nsg_agent"  # compiler.render's table (render passes it explicitly)


class ResultError(ValueError):
    """A summary or rule index in JSON form that the compiler never writes; the message starts
    with the path of the offending field."""


# --- reading JSON, with the field's path in every error ---------------------------------------

_JSON_KIND = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
              float: "a number", type(None): "null"}


def _kind(value: Any) -> str:
    return _JSON_KIND.get(type(value), type(value).__name__)


def _object(value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    if type(value) is not dict:
        raise ResultError(f"{where} is {_kind(value)}, not an object")
    missing = [k for k in required if k not in value]
    if missing:
        raise ResultError(f"{where}.{missing[0]} is missing")
    extra = sorted(str(k) for k in value if k not in required and k not in optional)
    if extra:
        raise ResultError(f"{where}.{extra[0]} is not a known field")
    return value


_T = TypeVar("_T")


def _exactly(kind: type[_T], noun: str) -> Callable[[Any, str], _T]:
    """A reader of one JSON scalar type, exactly (``type(x) is int``: a bool is no count)."""
    def read(value: Any, where: str) -> _T:
        if type(value) is not kind:
            raise ResultError(f"{where} is {_kind(value)}, not {noun}")
        return value
    return read


_str = _exactly(str, "a string")
_int = _exactly(int, "an integer")
_bool = _exactly(bool, "a boolean")


def _strs(value: Any, where: str) -> tuple[str, ...]:
    if type(value) is not list:
        raise ResultError(f"{where} is {_kind(value)}, not an array")
    for i, item in enumerate(value):
        _str(item, f"{where}[{i}]")
    return tuple(value)


def _frozen(mapping: Mapping) -> Mapping:
    return mapping if isinstance(mapping, MappingProxyType) else MappingProxyType(dict(mapping))


# --- the rule index ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleRef:
    """What one counted nft rule stands for. ``scope`` lists the users as "nic/level-kind"
    (a shared level chain counts for all of them together)."""

    nsg: str
    rule: str  # Azure flow-log name: UserRule_x / DefaultRule_x / PlatformRule_x
    direction: str
    chain: str
    scope: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Any, where: str = "rule") -> "RuleRef":
        """One entry of :meth:`RuleIndex.to_json` (which writes them inline, for speed)."""
        _object(data, where, _REF_FIELDS)
        return cls(_str(data["nsg"], f"{where}.nsg"), _str(data["rule"], f"{where}.rule"),
                   _str(data["direction"], f"{where}.direction"), _str(data["chain"], f"{where}.chain"),
                   _strs(data["scope"], f"{where}.scope"))


_REF_FIELDS = ("nsg", "rule", "direction", "chain", "scope")


@dataclass(frozen=True)
class RuleIndex:
    """(chain, comment) -> RuleRef for every counted rule of the table, immutable.

    ``lookup(chain, comment)`` answers one rule (None for a structural rule: conntrack,
    loopback, dispatch); iteration gives the (chain, comment) keys in the compiler's order,
    ``items()`` the pairs, ``refs()`` the RuleRefs. Keys are (chain, comment) tuples only: the
    status file's "chain|comment" strings exist in :meth:`to_json` and :meth:`from_json` alone.
    """

    entries: Mapping[tuple[str, str], RuleRef] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", _frozen(self.entries))

    def lookup(self, chain: str, comment: str) -> RuleRef | None:
        return self.entries.get((chain, comment))

    def __contains__(self, key: object) -> bool:
        if not (type(key) is tuple and len(key) == 2):
            raise TypeError(f"a RuleIndex key is (chain, comment), not {key!r}")
        return key in self.entries

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def items(self) -> Iterator[tuple[tuple[str, str], RuleRef]]:
        return iter(self.entries.items())

    def refs(self) -> Iterator[RuleRef]:
        return iter(self.entries.values())

    def to_json(self) -> dict[str, dict[str, Any]]:
        """The status file's shape: "<chain>|<comment>" -> {nsg, rule, direction, chain, scope}."""
        return {f"{chain}|{comment}": {"nsg": r.nsg, "rule": r.rule, "direction": r.direction,
                                       "chain": r.chain, "scope": list(r.scope)}
                for (chain, comment), r in self.entries.items()}

    @classmethod
    def from_json(cls, data: Any, where: str = "rule_index") -> "RuleIndex":
        """Read :meth:`to_json`'s shape back (ResultError naming the entry when it is not)."""
        if type(data) is not dict:
            raise ResultError(f"{where} is {_kind(data)}, not an object")
        entries: dict[tuple[str, str], RuleRef] = {}
        scopes: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple per distinct scope
        for key, value in data.items():
            chain, sep, comment = key.partition("|")
            if not sep:
                raise ResultError(f"{where}[{json.dumps(key)}] is not a \"chain|comment\" key")
            # The fast path checks the exact shape (a scope seen before is checked once);
            # anything else gets the detailed error.
            scope = None
            if (type(value) is dict and len(value) == 5 and type(value.get("nsg")) is str
                    and type(value.get("rule")) is str and type(value.get("direction")) is str
                    and type(value.get("chain")) is str and type(value.get("scope")) is list):
                users = tuple(value["scope"])
                try:
                    scope = scopes.get(users)
                except TypeError:  # an unhashable member: not a string
                    users = ()
                if scope is None and all(type(s) is str for s in users) and len(users) == len(value["scope"]):
                    scope = scopes[users] = users
            if scope is None:
                entries[(chain, comment)] = RuleRef.from_json(value, f"{where}[{json.dumps(key)}]")
                continue
            entries[(chain, comment)] = RuleRef(value["nsg"], value["rule"], value["direction"], value["chain"], scope)
        return cls(MappingProxyType(entries))


# --- the summary ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NicLevel:
    """One level a NIC's traffic passes: its chain, NSG, direction and rendering mode."""

    chain: str
    nsg: str
    direction: str
    mode: str

    def to_json(self) -> dict[str, Any]:
        return {"chain": self.chain, "nsg": self.nsg, "direction": self.direction, "mode": self.mode}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "NicLevel":
        _object(data, where, ("chain", "nsg", "direction", "mode"))
        return cls(*(_str(data[k], f"{where}.{k}") for k in ("chain", "nsg", "direction", "mode")))


@dataclass(frozen=True)
class NicSummary:
    """One enforced NIC: its interface (host placement) or addresses (fabric placement), its
    inbound and outbound chains, and per level kind ("subnet", "nic", ...) the levels it uses."""

    inbound: str
    outbound: str
    interface: str | None = None  # host placement
    addresses: tuple[str, ...] | None = None  # fabric placement
    levels: Mapping[str, tuple[NicLevel, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", _frozen({k: tuple(v) for k, v in self.levels.items()}))
        if self.addresses is not None:
            object.__setattr__(self, "addresses", tuple(self.addresses))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.interface is not None:
            out["interface"] = self.interface
        if self.addresses is not None:
            out["addresses"] = list(self.addresses)
        out["inbound"], out["outbound"] = self.inbound, self.outbound
        out["levels"] = {kind: [lv.to_json() for lv in levels] for kind, levels in self.levels.items()}
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> "NicSummary":
        _object(data, where, ("inbound", "outbound", "levels"), ("interface", "addresses"))
        if ("interface" in data) == ("addresses" in data):
            raise ResultError(f"{where} has {'both' if 'interface' in data else 'neither'} of "
                              "interface (host) and addresses (fabric)")
        levels = data["levels"]
        if type(levels) is not dict:
            raise ResultError(f"{where}.levels is {_kind(levels)}, not an object")
        parsed: dict[str, tuple[NicLevel, ...]] = {}
        for kind, items in levels.items():
            if type(items) is not list:
                raise ResultError(f"{where}.levels.{kind} is {_kind(items)}, not an array")
            parsed[kind] = tuple(NicLevel.from_json(item, f"{where}.levels.{kind}[{i}]")
                                 for i, item in enumerate(items))
        return cls(inbound=_str(data["inbound"], f"{where}.inbound"),
                   outbound=_str(data["outbound"], f"{where}.outbound"),
                   interface=_str(data["interface"], f"{where}.interface") if "interface" in data else None,
                   addresses=_strs(data["addresses"], f"{where}.addresses") if "addresses" in data else None,
                   levels=MappingProxyType(parsed))


@dataclass(frozen=True)
class LevelSummary:
    """One level chain as rendered: whose rules, for whom (``users``: "nic/level-kind"), and the
    mode it got. Classified: ``elements`` and ``classes`` (and ``orders``, the dimension order
    per address family: "ipv4" -> order). Fallen back to simple: ``fallback`` says why."""

    nsg: str
    direction: str
    platform: bool
    rules: int
    users: tuple[str, ...]
    mode: str
    fallback: str | None = None
    elements: int | None = None
    classes: int | None = None
    orders: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "users", tuple(self.users))
        if self.orders is not None:
            object.__setattr__(self, "orders", _frozen(self.orders))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"nsg": self.nsg, "direction": self.direction, "platform": self.platform,
                               "rules": self.rules, "users": list(self.users)}
        if self.fallback is not None:
            out["fallback"] = self.fallback
        if self.elements is not None:
            out["elements"] = self.elements
        if self.classes is not None:
            out["classes"] = self.classes
        if self.orders is not None:
            out["orders"] = dict(self.orders)
        out["mode"] = self.mode
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> "LevelSummary":
        # "orders" came after the first classify release: a classified level may lack it
        _object(data, where, ("nsg", "direction", "platform", "rules", "users", "mode"),
                ("fallback", "elements", "classes", "orders"))
        orders = data.get("orders")
        if orders is not None:
            if type(orders) is not dict:
                raise ResultError(f"{where}.orders is {_kind(orders)}, not an object")
            for family, order in orders.items():
                _str(order, f"{where}.orders.{family}")
        return cls(nsg=_str(data["nsg"], f"{where}.nsg"), direction=_str(data["direction"], f"{where}.direction"),
                   platform=_bool(data["platform"], f"{where}.platform"), rules=_int(data["rules"], f"{where}.rules"),
                   users=_strs(data["users"], f"{where}.users"), mode=_str(data["mode"], f"{where}.mode"),
                   fallback=_str(data["fallback"], f"{where}.fallback") if "fallback" in data else None,
                   elements=_int(data["elements"], f"{where}.elements") if "elements" in data else None,
                   classes=_int(data["classes"], f"{where}.classes") if "classes" in data else None,
                   orders=orders)


_COUNTS = ("chains", "rules", "sets", "set_elements")


@dataclass(frozen=True)
class Summary:
    """The compiled table in numbers: ``modes_used`` the modes its levels actually got (a
    classify compile may render a level simply), the enforced NICs by name and the level
    chains by name. The defaults describe an empty table."""

    table: str = DEFAULT_TABLE
    placement: str = "host"  # or "fabric"
    mode: str = "classify"  # asked for
    modes_used: tuple[str, ...] = ()
    chains: int = 0
    rules: int = 0
    sets: int = 0  # named sets and maps
    set_elements: int = 0
    nics: Mapping[str, NicSummary] = field(default_factory=dict)
    levels: Mapping[str, LevelSummary] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes_used", tuple(self.modes_used))
        object.__setattr__(self, "nics", _frozen(self.nics))
        object.__setattr__(self, "levels", _frozen(self.levels))

    def counts(self) -> dict[str, Any]:
        """What ``status`` and ``plan`` print: chains, rules, sets, set_elements, modes_used."""
        return {"chains": self.chains, "rules": self.rules, "sets": self.sets,
                "set_elements": self.set_elements, "modes_used": list(self.modes_used)}

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "placement": self.placement, "mode": self.mode,
                "modes_used": list(self.modes_used), "chains": self.chains, "rules": self.rules,
                "sets": self.sets, "set_elements": self.set_elements,
                "nics": {name: nic.to_json() for name, nic in self.nics.items()},
                "levels": {name: lv.to_json() for name, lv in self.levels.items()}}

    @classmethod
    def from_json(cls, data: Any, where: str = "summary") -> "Summary":
        """Read :meth:`to_json`'s shape back (ResultError naming the field when it is not)."""
        _object(data, where, ("table", "placement", "mode", "modes_used", *_COUNTS, "nics", "levels"))
        for name in ("nics", "levels"):
            if type(data[name]) is not dict:
                raise ResultError(f"{where}.{name} is {_kind(data[name])}, not an object")
        return cls(table=_str(data["table"], f"{where}.table"),
                   placement=_str(data["placement"], f"{where}.placement"),
                   mode=_str(data["mode"], f"{where}.mode"),
                   modes_used=_strs(data["modes_used"], f"{where}.modes_used"),
                   chains=_int(data["chains"], f"{where}.chains"), rules=_int(data["rules"], f"{where}.rules"),
                   sets=_int(data["sets"], f"{where}.sets"),
                   set_elements=_int(data["set_elements"], f"{where}.set_elements"),
                   nics=MappingProxyType({name: NicSummary.from_json(nic, f"{where}.nics.{name}")
                                          for name, nic in data["nics"].items()}),
                   levels=MappingProxyType({name: LevelSummary.from_json(lv, f"{where}.levels.{name}")
                                            for name, lv in data["levels"].items()}))


__all__ = ["DEFAULT_TABLE", "LevelSummary", "NicLevel", "NicSummary", "ResultError", "RuleIndex", "RuleRef",
           "Summary"]
