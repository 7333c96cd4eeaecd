"""The resolved policy: what the semantics engine produces and the compiler consumes.

Everything here is plain, immutable data with no reference back to the desired-state file:
service tags, ASGs and VirtualNetwork are already expanded into address prefixes, default
rules are appended, and each NIC's levels are listed in Azure's evaluation order.

    inbound  to a NIC:   subnet NSG, then NIC NSG   (both must allow)
    outbound from a NIC: NIC NSG, then subnet NSG   (both must allow)

A level that has no NSG is simply absent (it allows everything).
"""

from __future__ import annotations

import bisect
import enum
import ipaddress
import re
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Iterable, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PORT_MIN, PORT_MAX = 0, 65535


# --- address sets as integer ranges --------------------------------------------------------
#
# The semantics engine and the compiler work on up to hundreds of thousands of prefixes (1,000
# rules x 4,000 prefixes, service-tag files of 100k prefixes). ipaddress objects cost a few
# microseconds and ~200 bytes each, so sets of addresses are kept as sorted integer ranges and
# turned into ipaddress objects only when someone asks for them.

FAMILY_BITS = {4: 32, 6: 128}

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255, no leading zeros
_V4_RE = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?:/([0-9]{{1,2}}))?\Z")
_V6_RE = re.compile(r"([0-9A-Fa-f:]*:[0-9A-Fa-f:]*)(?:/([0-9]{1,3}))?\Z")


def _fast_cidr(text: str, strict: bool) -> tuple[int, int, int] | None:
    """(family, network as int, prefix length) for the common spellings ("a.b.c.d[/n]",
    "hex:hex::[/n]"), or None when ``text`` needs ipaddress itself (other spellings, errors,
    host bits set with ``strict``). Whatever it accepts, ipaddress.ip_network accepts alike."""
    m = _V4_RE.match(text)
    if m is not None:
        a, b, c, d, plen_text = m.groups()
        value = (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)
        plen = 32 if plen_text is None else int(plen_text)
        if plen > 32:
            return None
        host = (1 << (32 - plen)) - 1
        if value & host:
            if strict:
                return None
            value &= ~host
        return 4, value, plen
    m = _V6_RE.match(text)
    if m is not None:
        addr, plen_text = m.groups()
        value = _v6_value(addr)
        if value is None:
            return None
        plen = 128 if plen_text is None else int(plen_text)
        if plen > 128:
            return None
        host = (1 << (128 - plen)) - 1
        if value & host:
            if strict:
                return None
            value &= ~host
        return 6, value, plen
    return None


def _v6_value(addr: str) -> int | None:
    """An IPv6 address of hex groups and at most one "::" as an int; None if ipaddress would
    refuse it (or for anything unusual: the caller then asks ipaddress)."""
    head, sep, tail = addr.partition("::")
    if sep:
        if "::" in tail:
            return None
        left = head.split(":") if head else []
        right = tail.split(":") if tail else []
        if len(left) + len(right) > 7:  # "::" must stand for at least one group
            return None
        groups = left + ["0"] * (8 - len(left) - len(right)) + right
    else:
        groups = addr.split(":")
        if len(groups) != 8:
            return None
    for g in groups:
        if not 0 < len(g) <= 4:
            return None
    return int("".join([g.zfill(4) for g in groups]), 16)


def parse_cidr(text: str, strict: bool = True) -> tuple[int, int, int]:
    """An address or CIDR prefix as (family, network as int, prefix length), accepting and
    refusing exactly what ``ipaddress.ip_network(text, strict)`` does (its ValueError)."""
    fast = _fast_cidr(text, strict)
    if fast is not None:
        return fast
    net = ipaddress.ip_network(text, strict=strict)
    return net.version, int(net.network_address), net.prefixlen


def cidr_range(family: int, network: int, prefixlen: int) -> tuple[int, int]:
    """Inclusive (first, last) address of a prefix."""
    return network, network | ((1 << (FAMILY_BITS[family] - prefixlen)) - 1)


def range_cidrs(first: int, last: int, bits: int) -> list[tuple[int, int]]:
    """The fewest prefixes (network as int, prefix length) covering first..last exactly,
    in address order (what ipaddress.summarize_address_range yields)."""
    out = []
    while first <= last:
        size = 1 << ((last - first + 1).bit_length() - 1)
        if first:
            size = min(size, first & -first)
        out.append((first, bits - size.bit_length() + 1))
        first += size
    return out


def format_address(family: int, value: int) -> str:
    """An address as ipaddress prints it ("10.0.0.1", "2001:db8::1")."""
    if family == 4:
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    return str(ipaddress.IPv6Address(value))


def _merge(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    last = -2
    for lo, hi in sorted(ranges):
        if lo <= last + 1:
            if hi > last:
                out[-1] = (out[-1][0], hi)
                last = hi
        else:
            out.append((lo, hi))
            last = hi
    return tuple(out)


def _subtract(base: tuple[tuple[int, int], ...], remove: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """Merged ranges minus merged ranges, as merged ranges (one linear sweep)."""
    out: list[tuple[int, int]] = []
    j, n = 0, len(remove)
    for lo, hi in base:
        while j < n and remove[j][1] < lo:
            j += 1
        k = j
        while k < n and remove[k][0] <= hi:
            rlo, rhi = remove[k]
            if rlo > lo:
                out.append((lo, rlo - 1))
            lo = rhi + 1
            if lo > hi:
                break
            k += 1
        if lo <= hi:
            out.append((lo, hi))
    return tuple(out)


class PrefixSet:
    """An immutable set of IP addresses: per family, sorted, disjoint and merged inclusive
    integer ranges. Equal sets have equal ranges, so equality and hashing are by value."""

    __slots__ = ("v4", "v6", "_hash")

    def __init__(self, v4: Iterable[tuple[int, int]] = (), v6: Iterable[tuple[int, int]] = ()):
        object.__setattr__(self, "v4", _merge(v4))
        object.__setattr__(self, "v6", _merge(v6))
        object.__setattr__(self, "_hash", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __reduce__(self):
        return (PrefixSet, (self.v4, self.v6))

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[tuple[int, int, int]]) -> "PrefixSet":
        """From (family, network as int, prefix length) triples."""
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for family, net, plen in cidrs:
            if family == 4:
                v4.append((net, net | ((1 << (32 - plen)) - 1)))
            else:
                v6.append((net, net | ((1 << (128 - plen)) - 1)))
        return cls(v4, v6)

    @classmethod
    def from_networks(cls, networks: Iterable[IPNetwork]) -> "PrefixSet":
        return cls.from_cidrs((n.version, int(n.network_address), n.prefixlen) for n in networks)

    @classmethod
    def parse(cls, texts: Iterable[str], strict: bool = True) -> "PrefixSet":
        """From address/CIDR strings (see parse_cidr; raises its ValueError)."""
        return cls.from_cidrs(parse_cidr(t, strict) for t in texts)

    def ranges(self, family: int) -> tuple[tuple[int, int], ...]:
        return self.v4 if family == 4 else self.v6

    def cidrs(self, family: int) -> tuple[tuple[int, int], ...]:
        """The collapsed prefixes of one family as (network as int, prefix length), in
        address order: exactly ipaddress.collapse_addresses of the same networks."""
        bits = FAMILY_BITS[family]
        out: list[tuple[int, int]] = []
        for lo, hi in self.ranges(family):
            out += range_cidrs(lo, hi, bits)
        return tuple(out)

    def networks(self) -> tuple[IPNetwork, ...]:
        """The collapsed prefixes as ipaddress networks, IPv4 first."""
        return (tuple(ipaddress.IPv4Network(c) for c in self.cidrs(4))
                + tuple(ipaddress.IPv6Network(c) for c in self.cidrs(6)))

    def network_reprs(self) -> list[str]:
        """repr() of each of ``networks()``, without building them."""
        out = [f"IPv4Network('{format_address(4, n)}/{p}')" for n, p in self.cidrs(4)]
        out += [f"IPv6Network('{format_address(6, n)}/{p}')" for n, p in self.cidrs(6)]
        return out

    def contains(self, family: int, address: int) -> bool:
        ranges = self.ranges(family)
        i = bisect.bisect_right(ranges, (address, 1 << 129)) - 1
        return i >= 0 and ranges[i][1] >= address

    def union(self, *others: "PrefixSet") -> "PrefixSet":
        if not others:
            return self
        return PrefixSet(self.v4 + tuple(r for o in others for r in o.v4),
                         self.v6 + tuple(r for o in others for r in o.v6))

    def difference(self, other: "PrefixSet") -> "PrefixSet":
        out = PrefixSet.__new__(PrefixSet)
        object.__setattr__(out, "v4", _subtract(self.v4, other.v4))
        object.__setattr__(out, "v6", _subtract(self.v6, other.v6))
        object.__setattr__(out, "_hash", None)
        return out

    __or__ = union
    __sub__ = difference

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not PrefixSet:
            return NotImplemented
        return self is other or (self.v4 == other.v4 and self.v6 == other.v6)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash((self.v4, self.v6))
            object.__setattr__(self, "_hash", h)
        return h

    def __repr__(self) -> str:
        nets = [f"{format_address(4, n)}/{p}" for n, p in self.cidrs(4)]
        nets += [f"{format_address(6, n)}/{p}" for n, p in self.cidrs(6)]
        return f"PrefixSet({', '.join(nets)})"


EMPTY_PREFIXES = PrefixSet()


class Direction(str, enum.Enum):
    INBOUND = "Inbound"
    OUTBOUND = "Outbound"


class Access(str, enum.Enum):
    ALLOW = "Allow"
    DENY = "Deny"


class Protocol(str, enum.Enum):
    """A rule's protocol. ``ANY`` ("*") matches every IP protocol (documented choice)."""

    TCP = "Tcp"
    UDP = "Udp"
    ICMP = "Icmp"
    ESP = "Esp"
    AH = "Ah"
    ANY = "*"

    @property
    def numbers(self) -> frozenset[int] | None:
        """IANA protocol numbers this value matches; None means all of them."""
        return _PROTO_NUMBERS[self]


# Icmp covers ICMP for IPv4 (1) and ICMPv6 (58).
_PROTO_NUMBERS = {
    Protocol.TCP: frozenset({6}),
    Protocol.UDP: frozenset({17}),
    Protocol.ICMP: frozenset({1, 58}),
    Protocol.ESP: frozenset({50}),
    Protocol.AH: frozenset({51}),
    Protocol.ANY: None,
}

# Protocols that carry ports. A rule whose port term is not "*" only matches these: a
# packet without ports has no port that could lie in the range (documented choice).
PORT_PROTOCOLS = frozenset({6, 17})

# ICMPv6 types the platform answers itself, whatever the NSGs say: MLD query/report/done (130,
# 131, 132), router solicitation/advertisement (133, 134), neighbour solicitation/advertisement
# (135, 136), redirect (137), MLDv2 report (143). NSGs end in DenyAll*, and a Linux host whose
# neighbour discovery is dropped loses IPv6 altogether (measured: the peer's neighbour entry
# stays INCOMPLETE and every connection times out). Azure's virtual switch handles these for
# its VMs (neighbour discovery proxy); so do we, as a platform rule before any NSG.
NEIGHBOR_DISCOVERY_TYPES = frozenset({130, 131, 132, 133, 134, 135, 136, 137, 143})

PROTOCOL_NUMBERS_BY_NAME = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "esp": 50, "ah": 51}


class LevelKind(str, enum.Enum):
    SUBNET = "subnet"
    NIC = "nic"


class AddressTerm:
    """One side (source or destination) of a rule after resolution.

    ``label`` keeps what the user wrote ("Internet", "10.0.0.0/24", "asg:WebServers",
    "VirtualNetwork") for effective-rules output and nft comments. ``any`` is "*"; otherwise
    the term matches the addresses of ``prefix_set`` (may be empty: an ASG with no members
    matches nothing).

    The addresses are held as integer ranges (see PrefixSet), not as ipaddress objects:
    ``prefixes`` (the collapsed networks, IPv4 first) is computed when asked for. Code that
    handles many prefixes should read ``cidrs(family)`` or ``ranges(family)`` instead.
    Immutable, hashable, and equal when label, any and the address set are equal.
    """

    __slots__ = ("label", "any", "prefix_set", "_given")

    def __init__(self, label: str, any: bool = False, prefixes: Iterable[IPNetwork] = (),
                 prefix_set: "PrefixSet | None" = None):
        given = tuple(prefixes)
        if prefix_set is None:
            prefix_set = PrefixSet.from_networks(given) if given else EMPTY_PREFIXES
        elif given:
            raise TypeError("give prefixes or prefix_set, not both")
        _set = object.__setattr__
        _set(self, "label", label)
        _set(self, "any", any)
        _set(self, "prefix_set", prefix_set)
        _set(self, "_given", given or None)  # networks exactly as a caller gave them

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self):
        return (_address_term, (self.label, self.any, self.prefix_set, self._given))

    @property
    def prefixes(self) -> tuple[IPNetwork, ...]:
        """The term's networks as ipaddress objects (collapsed, IPv4 first). Built on each
        access and not kept (a maximum-size policy would hold ~50 MB of them)."""
        if self._given is not None:
            return self._given
        return self.prefix_set.networks()

    def cidrs(self, family: int) -> tuple[tuple[int, int], ...]:
        """(network address as int, prefix length) of one family, in ``prefixes`` order.
        Empty for ``any`` (check ``any`` first)."""
        if self._given is not None:
            return tuple((int(p.network_address), p.prefixlen) for p in self._given if p.version == family)
        return self.prefix_set.cidrs(family)

    def ranges(self, family: int) -> tuple[tuple[int, int], ...]:
        """Inclusive (first, last) address ranges of one family, sorted, disjoint and merged
        (adjacent ranges joined). Empty for ``any`` (check ``any`` first)."""
        return self.prefix_set.ranges(family)

    def contains(self, address: IPAddress) -> bool:
        if self.any:
            return True
        return self.prefix_set.contains(address.version, int(address))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not AddressTerm:
            return NotImplemented
        return (self.label == other.label and self.any == other.any  # type: ignore[attr-defined]
                and self.prefix_set == other.prefix_set)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.label, self.any, self.prefix_set))

    def __repr__(self) -> str:
        # Exactly the repr of the former dataclass (rule digests in status files use it).
        if self._given is not None:
            nets = repr(self._given)
        else:
            items = self.prefix_set.network_reprs()
            nets = "()" if not items else "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        return f"AddressTerm(label={self.label!r}, any={self.any!r}, prefixes={nets})"

    @staticmethod
    def of(label: str, prefixes: "Iterable[IPNetwork] | PrefixSet") -> "AddressTerm":
        """A term over the union of ``prefixes`` (networks or a PrefixSet)."""
        if isinstance(prefixes, PrefixSet):
            return AddressTerm(label=label, prefix_set=prefixes)
        return AddressTerm(label=label, prefix_set=PrefixSet.from_networks(prefixes))


def _address_term(label: str, any: bool, prefix_set: "PrefixSet", given: tuple | None) -> AddressTerm:
    if given:
        return AddressTerm(label, any, given)
    return AddressTerm(label, any, prefix_set=prefix_set)


ANY_ADDRESS = AddressTerm(label="*", any=True)


@dataclass(frozen=True)
class PortTerm:
    """Inclusive port ranges; ``any`` is "*" (which also matches port-less protocols)."""

    ranges: tuple[tuple[int, int], ...] = ((PORT_MIN, PORT_MAX),)

    @property
    def any(self) -> bool:
        return self.ranges == ((PORT_MIN, PORT_MAX),)

    def contains(self, port: int | None) -> bool:
        if self.any:
            return True
        if port is None:
            return False
        return any(lo <= port <= hi for lo, hi in self.ranges)

    def __str__(self) -> str:
        if self.any:
            return "*"
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)


ANY_PORT = PortTerm()


@dataclass(frozen=True)
class ResolvedRule:
    nsg: str
    name: str
    priority: int
    direction: Direction
    access: Access
    protocol: Protocol
    source: AddressTerm
    source_ports: PortTerm
    destination: AddressTerm
    destination_ports: PortTerm
    default: bool = False  # one of Azure's default rules (priority 65000+)
    platform: bool = False  # an emulated platform rule (exemption, SMTP), not in any NSG

    @property
    def log_name(self) -> str:
        """Azure's flow-log vocabulary: UserRule_<name> / DefaultRule_<name>."""
        if self.platform:
            return f"PlatformRule_{self.name}"
        return f"{'DefaultRule' if self.default else 'UserRule'}_{self.name}"

    def matches(self, flow: "Flow") -> bool:
        """Does this rule match the flow (addresses/ports already oriented src/dst)?"""
        nums = self.protocol.numbers
        if nums is not None and flow.protocol not in nums:
            return False
        if not (self.source_ports.any and self.destination_ports.any):
            if flow.protocol not in PORT_PROTOCOLS:
                return False
        src, sport, dst, dport = flow.oriented()
        return (
            self.source.contains(src)
            and self.destination.contains(dst)
            and self.source_ports.contains(sport)
            and self.destination_ports.contains(dport)
        )


@dataclass(frozen=True)
class Level:
    """One NSG applied at one level (subnet or NIC) for one NIC and one direction.

    ``rules`` are that direction's rules in ascending priority, defaults last. For the
    platform levels (see NicPolicy.outbound_platform) ``rules`` has no defaults and a flow
    that matches none of them continues to the next level.
    """

    kind: LevelKind
    nsg: str
    rules: tuple[ResolvedRule, ...]

    def first_match(self, flow: "Flow") -> ResolvedRule | None:
        for rule in self.rules:
            if rule.matches(flow):
                return rule
        return None


@dataclass(frozen=True)
class PlatformDrop:
    """A packet the platform drops inside a VNet whatever the NSGs say (GRE, IP-in-IP,
    multicast, broadcast). ``rule`` names it for verify, effective rules and the kernel's
    comments (``PlatformRule_<name>``); the fields below say what it matches."""

    rule: ResolvedRule
    protocols: frozenset[int] | None = None  # IP protocol numbers; None: any protocol
    destination: AddressTerm | None = None  # destination addresses; None: any
    except_protocols: frozenset[int] = frozenset()  # protocols never dropped by this

    def matches(self, flow: "Flow") -> bool:
        if self.protocols is not None and flow.protocol not in self.protocols:
            return False
        if flow.protocol in self.except_protocols:
            return False
        if self.destination is not None:
            _, _, dst, _ = flow.oriented()
            return self.destination.contains(dst)
        return True


@dataclass(frozen=True)
class NicPolicy:
    """Everything needed to enforce one NIC.

    Evaluation order (mirrored exactly by the compiler):
      0. ``neighbor_discovery`` (both directions): ICMPv6 ND and MLD messages are allowed;
         then ``platform_drops``: GRE, IP-in-IP, multicast, broadcast are denied.
    Outbound:
      1. ``smtp_block``: if set, outbound TCP to port 25 whose remote address is in it is
         denied by the platform (emulates subscription types).
      2. ``platform_exempt``: outbound flows to these addresses (168.63.129.16,
         169.254.169.254) skip the NSGs, except that ``outbound_platform`` levels (rules
         using AzurePlatformDNS/IMDS/LKM) are evaluated first, in level order; a Deny there
         denies, an Allow there moves to the next level.
      3. otherwise ``outbound`` levels; then inbound likewise with ``inbound`` levels.
    """

    nic: str
    vnet: str
    subnet: str
    addresses: tuple[IPAddress, ...]
    interface: str | None
    inbound: tuple[Level, ...]
    outbound: tuple[Level, ...]
    outbound_platform: tuple[Level, ...] = ()
    platform_exempt: AddressTerm | None = None
    smtp_block: AddressTerm | None = None
    flush_connection: bool = False  # any NSG applied to this NIC has flushConnection
    platform_drops: tuple[PlatformDrop, ...] = ()
    # ICMPv6 neighbour discovery and MLD pass before any NSG (see agent.semantics)
    neighbor_discovery: bool = False

    def levels(self, direction: Direction) -> tuple[Level, ...]:
        return self.inbound if direction is Direction.INBOUND else self.outbound


@dataclass(frozen=True)
class Policy:
    nics: dict[str, NicPolicy] = field(default_factory=dict)


@dataclass(frozen=True)
class Flow:
    """A flow seen from a NIC, in Network Watcher's IP-flow-verify terms.

    ``protocol`` is an IANA number. For inbound, source = remote and destination = local;
    for outbound, source = local and destination = remote.
    """

    direction: Direction
    protocol: int
    local: IPAddress
    remote: IPAddress
    local_port: int | None = None
    remote_port: int | None = None
    icmp_type: int | None = None  # ICMP/ICMPv6 type, when it matters (None: not given)

    def oriented(self) -> tuple[IPAddress, int | None, IPAddress, int | None]:
        """(source, source port, destination, destination port)."""
        if self.direction is Direction.INBOUND:
            return self.remote, self.remote_port, self.local, self.local_port
        return self.local, self.local_port, self.remote, self.remote_port


@dataclass(frozen=True)
class LevelDecision:
    kind: LevelKind | None  # None for platform decisions
    nsg: str | None
    rule: ResolvedRule | None  # None: no NSG at this level (allows)
    access: Access


@dataclass(frozen=True)
class Verdict:
    access: Access
    path: tuple[LevelDecision, ...]

    @property
    def allowed(self) -> bool:
        return self.access is Access.ALLOW

    @property
    def deciding(self) -> LevelDecision | None:
        """The decision that settled the verdict: the first deny; else the last allow taken
        by a rule (a level without an NSG decides nothing); else the last decision."""
        for d in self.path:
            if d.access is Access.DENY:
                return d
        for d in reversed(self.path):
            if d.rule is not None:
                return d
        return self.path[-1] if self.path else None


# --- prefix helpers shared by the semantics engine and the compiler -----------------------


def collapse(prefixes: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """The union of ``prefixes`` as the fewest networks, IPv4 first (what
    ipaddress.collapse_addresses gives per family)."""
    return PrefixSet.from_networks(prefixes).networks()


def exclude(base: Iterable[IPNetwork], remove: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """``base`` minus ``remove``, as collapsed prefixes (used for the Internet tag)."""
    return (PrefixSet.from_networks(base) - PrefixSet.from_networks(remove)).networks()
