"""A packet tracer over libnftables JSON commands (pure; for tests and `explain`-style tools).

It interprets the JSON generically, the way the kernel would run it: base chains of the
packet's hook in priority order, rules in order, ``match`` expressions (payload, meta, ct;
values, prefixes, ranges, anonymous and named sets, interval sets, concatenations), verdict
maps, ``counter``, ``limit`` (assumed under its rate), ``log`` (the prefixes are recorded) and
``ct mark set`` (``&``/``|`` of the mark; the final mark is recorded) statements, and the
verdicts accept / drop / continue / return / jump / goto. It knows nothing about NSGs: the
compiler's output is checked against the semantics engine through it.

Only the expressions the compiler may emit are supported; anything else raises
``UnsupportedExpression`` instead of guessing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from nsg_agent.kernel.state import NftRuleset

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTO_NAMES = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
               "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132, "udplite": 136}
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
FAMILIES_FOR_INET = ("inet", "ip", "ip6")
MAX_DEPTH = 32  # the kernel's jump stack limit is 16 levels; be generous, but bounded


class UnsupportedExpression(ValueError):
    """The tracer met JSON it does not interpret."""


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection (or a later one, by ``ct_state``).

    ``sport``/``dport`` are what ``th sport``/``th dport`` read: the ports for TCP/UDP, and
    for other protocols whatever bytes sit there (None: the header is too short to read).
    """

    hook: str  # "input" | "output" | "forward"
    saddr: str | IPAddress
    daddr: str | IPAddress
    protocol: int
    sport: int | None = None
    dport: int | None = None
    iifname: str = ""
    oifname: str = ""
    ct_state: str = "new"

    @property
    def src(self) -> IPAddress:
        return ipaddress.ip_address(self.saddr)

    @property
    def dst(self) -> IPAddress:
        return ipaddress.ip_address(self.daddr)


@dataclass
class TraceResult:
    verdict: str  # "accept" | "drop"
    comments: list[str] = field(default_factory=list)  # comments of the rules that fired
    counters: list[tuple[str, str | None]] = field(default_factory=list)  # (chain, comment)
    chains: list[str] = field(default_factory=list)  # chains entered, in order
    logs: list[str] = field(default_factory=list)  # prefixes of the log statements met
    ct_mark: int = 0  # the connection's mark after the packet (ct mark set)

    @property
    def accepted(self) -> bool:
        return self.verdict == "accept"


@dataclass
class _Chain:
    family: str
    table: str
    name: str
    hook: str | None = None
    prio: int = 0
    policy: str = "accept"
    rules: list[dict] = field(default_factory=list)


@dataclass
class _Set:
    elements: list = field(default_factory=list)  # keys, or [key, data] pairs for maps
    is_map: bool = False


class Ruleset:
    """The tables the tracer walks: a view of an :class:`~nsg_agent.kernel.state.NftRuleset`
    (the one table model), built from commands or given as the model itself (the fake after a
    delta, a kernel listing), so all of them are traced by the same code."""

    def __init__(self, commands: "list[dict] | NftRuleset"):
        model = commands if isinstance(commands, NftRuleset) else NftRuleset.from_commands(commands)
        self.model = model
        self.chains: dict[tuple[str, str, str], _Chain] = {}
        self.sets: dict[tuple[str, str, str], _Set] = {}
        for t in model:
            for c in t.chains.values():
                self.chains[(t.family, t.name, c.name)] = _Chain(
                    t.family, t.name, c.name, c.obj.get("hook"), int(c.obj.get("prio", 0)),
                    c.obj.get("policy", "accept"), c.rules)
            for st in t.sets.values():
                self.sets[(t.family, t.name, st.name)] = _Set(st.elem, st.kind == "map")


class _Verdict(Exception):
    pass


def trace(commands: "list[dict] | Ruleset", packet: Packet) -> TraceResult:
    """Walk ``packet`` through the ruleset built by ``commands``; the final verdict and the
    comments of the rules it passed. Pass a prebuilt ``Ruleset(commands)`` to trace many
    packets through the same commands cheaply."""
    rs = commands if isinstance(commands, Ruleset) else Ruleset(commands)
    return _Tracer(rs, packet).run()


class _Tracer:
    def __init__(self, rs: Ruleset, packet: Packet):
        self.rs = rs
        self.p = packet
        self.src, self.dst = packet.src, packet.dst
        self.result = TraceResult(verdict="accept")

    def run(self) -> TraceResult:
        family = "ip" if self.src.version == 4 else "ip6"
        bases = sorted((c for c in self.rs.chains.values()
                        if c.hook == self.p.hook and c.family in ("inet", family)),
                       key=lambda c: (c.prio, c.family, c.table, c.name))
        for chain in bases:
            verdict = self._chain(chain, 0)
            if verdict is None or verdict == "return":
                verdict = chain.policy
            if verdict == "drop":
                self.result.verdict = "drop"
                return self.result
        self.result.verdict = "accept"
        return self.result

    # chains ---------------------------------------------------------------------------
    def _chain(self, chain: _Chain, depth: int) -> str | None:
        """Run a chain; returns "accept"/"drop" (final), or None (fell off / returned)."""
        if depth > MAX_DEPTH:
            raise UnsupportedExpression("jump depth exceeded (a loop?)")
        self.result.chains.append(chain.name)
        for rule in chain.rules:
            outcome = self._rule(chain, rule, depth)
            if outcome == "next":
                continue
            return outcome
        return None

    def _rule(self, chain: _Chain, rule: dict, depth: int) -> str | None:
        """"next" to go on with the next rule, None for return, else a final verdict."""
        fired = False
        for stmt in rule["expr"]:
            (kind, body), = stmt.items()
            if kind == "match":
                if not self._match(chain, body):
                    return "next"
                continue
            if not fired:
                fired = True
                if rule.get("comment"):
                    self.result.comments.append(rule["comment"])
            if kind == "counter":
                self.result.counters.append((chain.name, rule.get("comment")))
            elif kind == "limit":
                continue  # a match over the packet rate: a single packet is under it
            elif kind == "log":
                self.result.logs.append(body.get("prefix", ""))
            elif kind == "mangle":
                if body["key"] != {"ct": {"key": "mark"}}:
                    raise UnsupportedExpression(f"mangle {body['key']!r}")
                self.result.ct_mark = self._mark_value(body["value"]) & 0xFFFFFFFF
            elif kind == "vmap":
                data = self._lookup(chain, body["key"], body["data"])
                if data is None:
                    return "next"
                outcome = self._verdict(chain, data, depth)
                if outcome != "next":
                    return outcome
            elif kind in ("accept", "drop", "return", "continue", "jump", "goto"):
                outcome = self._verdict(chain, stmt, depth)
                if outcome != "next":
                    return outcome
            else:
                raise UnsupportedExpression(f"statement {kind}")
        return "next"

    def _verdict(self, chain: _Chain, v: dict, depth: int) -> str | None:
        (kind, body), = v.items()
        if kind in ("accept", "drop"):
            return kind
        if kind == "return":
            return None
        if kind == "continue":
            return "next"
        target = self.rs.chains[(chain.family, chain.table, body["target"])]
        outcome = self._chain(target, depth + 1)
        if kind == "jump":
            return "next" if outcome is None else outcome
        if kind == "goto":
            return outcome  # falling off a goto'd chain returns from the current chain
        raise UnsupportedExpression(f"verdict {kind}")

    def _mark_value(self, e: Any) -> int:
        if isinstance(e, int):
            return e
        if e == {"ct": {"key": "mark"}}:
            return self.result.ct_mark
        if isinstance(e, dict) and len(e) == 1:
            (op, args), = e.items()
            if op in ("&", "|", "^") and isinstance(args, list) and len(args) == 2:
                a, b = (self._mark_value(x) for x in args)
                return a & b if op == "&" else a | b if op == "|" else a ^ b
        raise UnsupportedExpression(f"mark value {e!r}")

    # expressions ----------------------------------------------------------------------
    def _value(self, e: Any) -> Any:
        """The packet's value for a left-hand expression; None when it cannot be read
        (then the expression, and so the rule, does not match)."""
        if isinstance(e, dict) and "payload" in e:
            proto, fld = e["payload"]["protocol"], e["payload"]["field"]
            if proto in ("ip", "ip6"):
                if (self.src.version == 4) != (proto == "ip"):
                    return None
                return {"saddr": self.src, "daddr": self.dst}[fld]
            if proto == "th" or proto in ("tcp", "udp") and PROTO_NAMES[proto] == self.p.protocol:
                return {"sport": self.p.sport, "dport": self.p.dport}[fld]
            if proto in ("tcp", "udp"):
                return None
            if proto in ("icmp", "icmpv6") and fld == "type":
                # the type is the transport header's first byte: the high byte of what
                # th sport reads
                if self.p.protocol != (1 if proto == "icmp" else 58) or self.p.sport is None:
                    return None
                return self.p.sport >> 8
            raise UnsupportedExpression(f"payload {proto} {fld}")
        if isinstance(e, dict) and "meta" in e:
            key = e["meta"]["key"]
            if key == "l4proto":
                return self.p.protocol
            if key == "iifname":
                return self.p.iifname
            if key == "oifname":
                return self.p.oifname
            if key == "nfproto":
                return "ipv4" if self.src.version == 4 else "ipv6"
            raise UnsupportedExpression(f"meta {key}")
        if isinstance(e, dict) and "ct" in e:
            if e["ct"]["key"] == "state":
                return self.p.ct_state
            raise UnsupportedExpression(f"ct {e['ct']['key']}")
        if isinstance(e, dict) and "concat" in e:
            values = tuple(self._value(x) for x in e["concat"])
            return None if any(v is None for v in values) else values
        raise UnsupportedExpression(f"expression {e!r}")

    def _match(self, chain: _Chain, m: dict) -> bool:
        value = self._value(m["left"])
        if value is None:
            return False
        op, right = m["op"], m["right"]
        if isinstance(right, str) and right.startswith("@"):
            found = self.rs.sets.get((chain.family, chain.table, right[1:]))
            if found is None or found.is_map:
                raise UnsupportedExpression(f"no set {right}")
            right = {"set": found.elements}
        if op in ("==", "in"):
            return _contains(right, value)
        if op == "!=":
            return not _contains(right, value)
        raise UnsupportedExpression(f"op {op}")

    def _lookup(self, chain: _Chain, key: Any, data: Any) -> dict | None:
        value = self._value(key)
        if value is None:
            return None
        if isinstance(data, str) and data.startswith("@"):
            found = self.rs.sets.get((chain.family, chain.table, data[1:]))
            if found is None:
                raise UnsupportedExpression(f"no map {data}")
            pairs = found.elements
        elif isinstance(data, dict) and "set" in data:
            pairs = data["set"]
        else:
            raise UnsupportedExpression(f"vmap data {data!r}")
        for elem, verdict in pairs:
            if _element(elem, value):
                return verdict
        return None


def _contains(right: Any, value: Any) -> bool:
    """Does the right-hand side (value, set, list of flags, prefix, range) hold ``value``?"""
    if isinstance(right, dict) and "set" in right:
        return any(_element(e, value) for e in right["set"])
    if isinstance(right, list):  # flags, e.g. ct state {established, related}
        return any(_element(e, value) for e in right)
    return _element(right, value)


def _element(elem: Any, value: Any) -> bool:
    if isinstance(elem, dict) and "elem" in elem:  # {"elem": {"val": ..., "comment": ...}}
        elem = elem["elem"]["val"]
    if isinstance(value, tuple):
        if not (isinstance(elem, dict) and "concat" in elem) or len(elem["concat"]) != len(value):
            return False
        return all(_element(e, v) for e, v in zip(elem["concat"], value))
    if isinstance(elem, dict) and "prefix" in elem:
        net = ipaddress.ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
        return isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and \
            value.version == net.version and value in net
    if isinstance(elem, dict) and "range" in elem:
        lo, hi = (_scalar(x, value) for x in elem["range"])
        return lo is not None and hi is not None and lo <= value <= hi
    return _scalar(elem, value) == value


def _scalar(x: Any, like: Any) -> Any:
    """A literal converted to the type of the packet value it is compared with."""
    if isinstance(like, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        try:
            a = ipaddress.ip_address(x)
        except ValueError:
            return None
        return a if a.version == like.version else None
    if isinstance(like, int):
        if isinstance(x, str):
            return PROTO_NAMES.get(x.lower(), int(x) if x.isascii() and x.isdigit() else None)
        return x
    return x
