"""The resolved policy: what the semantics engine produces and the compiler consumes.

Everything here is plain, immutable data with no reference back to the desired-state file:
service tags, ASGs and VirtualNetwork are already expanded into address prefixes, default
rules are appended, and each NIC's levels are listed in Azure's evaluation order.

    inbound  to a NIC:   subnet NSG, then NIC NSG   (both must allow)
    outbound from a NIC: NIC NSG, then subnet NSG   (both must allow)

A level that has no NSG is simply absent (it allows everything).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PORT_MIN, PORT_MAX = 0, 65535


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

PROTOCOL_NUMBERS_BY_NAME = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "esp": 50, "ah": 51}


class LevelKind(str, enum.Enum):
    SUBNET = "subnet"
    NIC = "nic"


@dataclass(frozen=True)
class AddressTerm:
    """One side (source or destination) of a rule after resolution.

    ``label`` keeps what the user wrote ("Internet", "10.0.0.0/24", "asg:WebServers",
    "VirtualNetwork") for effective-rules output and nft comments. ``any`` is "*"; otherwise
    ``prefixes`` are collapsed networks (may be empty: an ASG with no members matches nothing).
    """

    label: str
    any: bool = False
    prefixes: tuple[IPNetwork, ...] = ()

    def contains(self, address: IPAddress) -> bool:
        if self.any:
            return True
        return any(address in p for p in self.prefixes if p.version == address.version)

    @staticmethod
    def of(label: str, prefixes: Iterable[IPNetwork]) -> "AddressTerm":
        return AddressTerm(label=label, any=False, prefixes=collapse(prefixes))


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
class NicPolicy:
    """Everything needed to enforce one NIC.

    Outbound evaluation order (mirrored exactly by the compiler):
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
    v4 = [p for p in prefixes if p.version == 4]
    v6 = [p for p in prefixes if p.version == 6]
    out: list[IPNetwork] = []
    out += ipaddress.collapse_addresses(v4) if v4 else []
    out += ipaddress.collapse_addresses(v6) if v6 else []
    return tuple(out)


def exclude(base: Iterable[IPNetwork], remove: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """``base`` minus ``remove``, as collapsed prefixes (used for the Internet tag)."""
    result = list(collapse(base))
    for r in collapse(remove):
        nxt: list[IPNetwork] = []
        for b in result:
            if b.version != r.version:
                nxt.append(b)
            elif r.subnet_of(b):  # type: ignore[arg-type]
                nxt.extend(b.address_exclude(r))  # type: ignore[arg-type]
            elif b.subnet_of(r):  # type: ignore[arg-type]
                continue
            else:
                nxt.append(b)
        result = nxt
    return collapse(result)
