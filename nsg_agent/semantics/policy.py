"""The resolved policy: what the semantics engine produces and the compiler consumes.

Everything here is plain, immutable data with no reference back to the desired-state file:
service tags, ASGs and VirtualNetwork are already expanded into address prefixes, default
rules are appended, and each NIC's levels are listed in Azure's evaluation order.

    inbound  to a NIC:   subnet NSG, then NIC NSG   (both must allow)
    outbound from a NIC: NIC NSG, then subnet NSG   (both must allow)

A level that has no NSG is simply absent (it allows everything).
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass, field
from typing import Iterable

from nsg_agent.desired.vocabulary import PORT_MAX, PORT_MIN, PORT_PROTOCOLS, Access, Direction, LevelKind, Protocol
from nsg_agent.netaddr import EMPTY_PREFIXES, IPAddress, IPNetwork, PrefixSet


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
    # The slots' types (bare annotations: no class attribute, so no clash with __slots__).
    label: str
    any: bool
    prefix_set: PrefixSet
    _given: tuple[IPNetwork, ...] | None

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
        return (self.label == other.label and self.any == other.any
                and self.prefix_set == other.prefix_set)

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
    # ICMPv6 neighbour discovery and MLD pass before any NSG (see nsg_agent.semantics.resolver)
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
