"""Addresses as integers: CIDR parsing, ranges and :class:`PrefixSet` (sets of prefixes kept as
sorted integer ranges). No Azure vocabulary here: the desired state, the semantics engine and
the compiler all build on it."""

from __future__ import annotations

import bisect
import ipaddress
import re
from dataclasses import FrozenInstanceError
from typing import Iterable, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


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
        parsed = _v6_value(addr)
        if parsed is None:
            return None
        value = parsed
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
    # The slots' types (bare annotations: no class attribute, so no clash with __slots__).
    v4: tuple[tuple[int, int], ...]
    v6: tuple[tuple[int, int], ...]
    _hash: int | None

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
        return self is other or (self.v4 == other.v4 and self.v6 == other.v6)

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


# --- prefix helpers shared by the semantics engine and the compiler -----------------------


def collapse(prefixes: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """The union of ``prefixes`` as the fewest networks, IPv4 first (what
    ipaddress.collapse_addresses gives per family)."""
    return PrefixSet.from_networks(prefixes).networks()


def exclude(base: Iterable[IPNetwork], remove: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """``base`` minus ``remove``, as collapsed prefixes (used for the Internet tag)."""
    return (PrefixSet.from_networks(base) - PrefixSet.from_networks(remove)).networks()
