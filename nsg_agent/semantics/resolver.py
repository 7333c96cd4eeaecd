"""Azure NSG semantics as pure functions: resolve a desired state into a Policy, and
evaluate a flow against it (Network Watcher's "IP flow verify").

How Azure computes it (evidence in docs/semantics.md; recorded Azure answers win over docs):
- Internet is a fixed list of public prefixes (nsg_agent.desired.builtin_tags), not "everything outside
  VirtualNetwork"; nothing is subtracted, so an address can be both or neither.
- VirtualNetwork = the VNet's address space + its on-premises prefixes + the address space of
  every VNet with a peering in force whose local side allows access (nsg_agent.desired.networks) + the
  prefixes of user-defined routes on the NIC's subnet + 168.63.129.16/32.
- AzureLoadBalancer = 168.63.129.16/32 and fe80::1234:5678:9abc/128.
- Platform drops (on by default): GRE (47), IP-in-IP (4), multicast and broadcast are dropped
  inside the VNet whatever the NSGs say.
- Platform exemption (on by default): outbound flows to 168.63.129.16 and 169.254.169.254 are
  not subject to NSGs, except rules using AzurePlatformDNS / AzurePlatformIMDS /
  AzurePlatformLKM, which are evaluated for them in Azure's level order.
- Outbound SMTP (TCP 25) to Internet is blocked by the platform when
  ``platform.outboundSmtp`` is ``blocked`` (the default, as for pay-as-you-go subscriptions);
  the block sits at Azure's Internet edge, so addresses in the NIC's VirtualNetwork (the host
  VIP, peers, on-premises) are not subject to it.
Choices where neither Azure's answers nor its docs settle it (documented and tested):
- Protocol ``*`` matches every IP protocol (TCP, UDP, ICMP, ESP, AH and any other).
- A rule whose port term is not ``*`` matches only TCP and UDP packets.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from nsg_agent.desired import networks
from nsg_agent.desired.builtin_tags import AZURE_LOAD_BALANCER, internet_with
from nsg_agent.desired.model import (
    DesiredState,
    NetworkSecurityGroup,
    SecurityRule,
    canonical_builtin_tag,
    looks_like_address,
    parse_port_range,
    prefix_cidr,
)
from nsg_agent.desired.servicetags import ServiceTagIndex
from nsg_agent.desired.vocabulary import NEIGHBOR_DISCOVERY_TYPES, Access, Direction, LevelKind, Protocol
from nsg_agent.netaddr import IPNetwork, PrefixSet, parse_cidr
from nsg_agent.semantics.policy import (
    ANY_ADDRESS,
    ANY_PORT,
    AddressTerm,
    Flow,
    Level,
    LevelDecision,
    NicPolicy,
    PlatformDrop,
    Policy,
    PortTerm,
    ResolvedRule,
    Verdict,
)

HOST_VIP = ipaddress.ip_network("168.63.129.16/32")
IMDS = ipaddress.ip_network("169.254.169.254/32")
# Azure's KMS endpoints (azkms.core.windows.net, kms.core.windows.net) for AzurePlatformLKM.
LKM = tuple(ipaddress.ip_network(p) for p in ("20.118.99.224/32", "40.83.235.53/32", "23.102.135.246/32"))
PLATFORM_TAGS = {"AzurePlatformDNS": (HOST_VIP,), "AzurePlatformIMDS": (IMDS,), "AzurePlatformLKM": LKM}
ALL_V4 = ipaddress.ip_network("0.0.0.0/0")
ALL_V6 = ipaddress.ip_network("::/0")

_HOST_VIP_SET = PrefixSet.from_networks((HOST_VIP,))
# Terms that do not depend on the desired state, shared by every NIC and every resolve.
_CONSTANT_TERMS = {
    "AzureLoadBalancer": AddressTerm.of("AzureLoadBalancer", PrefixSet.parse(AZURE_LOAD_BALANCER)),
    **{name: AddressTerm.of(name, nets) for name, nets in PLATFORM_TAGS.items()},
}
_PLATFORM_EXEMPT = AddressTerm.of("AzurePlatform", (HOST_VIP, IMDS))


# Azure's default rules of every NSG: (name, priority, direction, source, destination, access).
DEFAULT_RULES: tuple[tuple[str, int, Direction, str, str, Access], ...] = (
    ("AllowVnetInBound", 65000, Direction.INBOUND, "VirtualNetwork", "VirtualNetwork", Access.ALLOW),
    ("AllowAzureLoadBalancerInBound", 65001, Direction.INBOUND, "AzureLoadBalancer", "*", Access.ALLOW),
    ("DenyAllInBound", 65500, Direction.INBOUND, "*", "*", Access.DENY),
    ("AllowVnetOutBound", 65000, Direction.OUTBOUND, "VirtualNetwork", "VirtualNetwork", Access.ALLOW),
    ("AllowInternetOutBound", 65001, Direction.OUTBOUND, "*", "Internet", Access.ALLOW),
    ("DenyAllOutBound", 65500, Direction.OUTBOUND, "*", "*", Access.DENY),
)


class TermMemo:
    """Address terms of literal prefix lists from the previous resolve, by their text.

    Resolving is a pure function of the file; re-parsing thousands of unchanged prefixes on
    every reload is not. A Resolver reads terms from the memo it was given and records those
    it used in a fresh one, so the memo holds exactly the last resolve's terms (no growth)
    and a reload re-parses only the prefix lists that changed."""

    __slots__ = ("terms",)

    def __init__(self, terms: dict[tuple[str, ...], AddressTerm] | None = None):
        self.terms = terms if terms is not None else {}


_last_terms = TermMemo()  # swapped whole at the end of each resolve()

# Azure's default rule names as its API spells them; any spelling is accepted on input.
DEFAULT_RULE_NAMES = {name.lower(): name for name, *_ in DEFAULT_RULES}


def canonical_default_rule(name: str) -> str | None:
    """'AllowVnetInBound' / 'DenyAllInbound' / 'defaultSecurityRules/denyallinbound' ->
    Azure's API spelling; None if it is not a default rule's name."""
    return DEFAULT_RULE_NAMES.get(name.rsplit("/", 1)[-1].strip().lower())


# What the platform drops inside a VNet whatever the NSGs say (Azure's VNet FAQ: multicast,
# broadcast, IP-in-IP and GRE). IPv6 multicast carried by ICMPv6 (neighbour discovery, MLD)
# is the platform's own signalling and is not dropped: without it IPv6 itself stops.
MULTICAST = ("224.0.0.0/4", "ff00::/8")
LIMITED_BROADCAST = "255.255.255.255/32"


def _platform_rule(name: str, destination: AddressTerm, protocol_label: str = "*") -> ResolvedRule:
    return ResolvedRule(
        nsg="", name=name, priority=0, direction=Direction.OUTBOUND, access=Access.DENY,
        protocol=Protocol.ANY, source=ANY_ADDRESS, source_ports=ANY_PORT,
        destination=destination, destination_ports=ANY_PORT, platform=True)


_DROP_GRE = PlatformDrop(_platform_rule("BlockGre", ANY_ADDRESS), protocols=frozenset({47}))
_DROP_IPIP = PlatformDrop(_platform_rule("BlockIpInIp", ANY_ADDRESS), protocols=frozenset({4}))
_MULTICAST_TERM = AddressTerm.of("Multicast", PrefixSet.parse(MULTICAST))
_DROP_MULTICAST = PlatformDrop(_platform_rule("BlockMulticast", _MULTICAST_TERM),
                               destination=_MULTICAST_TERM, except_protocols=frozenset({58}))


ND_RULE = ResolvedRule(
    nsg="", name="AllowNeighborDiscovery", priority=0, direction=Direction.INBOUND,
    access=Access.ALLOW, protocol=Protocol.ICMP, source=ANY_ADDRESS, source_ports=ANY_PORT,
    destination=ANY_ADDRESS, destination_ports=ANY_PORT, platform=True)


def platform_drops(subnet_prefix: str | None) -> tuple[PlatformDrop, ...]:
    """The platform's drops for a NIC in a subnet (its broadcast address is the subnet's)."""
    broadcast = [LIMITED_BROADCAST]
    if subnet_prefix:
        net = ipaddress.ip_network(subnet_prefix)
        if net.version == 4 and net.prefixlen < 31:
            broadcast.append(f"{net.broadcast_address}/32")
    term = AddressTerm.of("Broadcast", PrefixSet.parse(broadcast))
    drop_broadcast = PlatformDrop(_platform_rule("BlockBroadcast", term), destination=term)
    return (_DROP_GRE, _DROP_IPIP, _DROP_MULTICAST, drop_broadcast)


class Resolver:
    """Expands tags and ASGs for one desired state. Cheap to build; caches per VNet."""

    def __init__(self, state: DesiredState, tags: ServiceTagIndex | None = None,
                 memo: TermMemo | None = None):
        self.state = state
        self.tags = tags or ServiceTagIndex()
        self._asg_members: dict[str, list[tuple[int, int, int]]] = {}
        for nic in state.networkInterfaces:
            for g in nic.applicationSecurityGroups:
                self._asg_members.setdefault(g.lower(), []).extend(
                    parse_cidr(a) for a in nic.ipAddresses)
        self._vnet_cache: dict[tuple[str, str], PrefixSet] = {}
        self._term_cache: dict[tuple[str, str, str], AddressTerm] = {}
        self._rule_cache: dict[tuple[str, str, str], tuple[ResolvedRule, ...]] = {}
        self._internet = AddressTerm.of("Internet", internet_with(self.tags.internet))
        self._memo_in = memo if memo is not None else TermMemo()
        self.memo = TermMemo()  # the literal terms this resolver used

    # tags ---------------------------------------------------------------------------------
    def _route_table(self, subnet_ref: str | None) -> str:
        found = self.state.subnet(subnet_ref) if subnet_ref else None
        return (found[1].routeTable or "").lower() if found else ""

    def virtual_network_prefixes(self, vnet_name: str, subnet_ref: str | None = None) -> list[str]:
        """The VirtualNetwork tag's prefixes as Azure lists them (tagMap): the VNet's address
        space, the peers' (in force, access allowed), on-premises prefixes, the subnet's
        user-defined route prefixes, then 168.63.129.16/32; not collapsed."""
        vnet = self.state.vnet(vnet_name)
        out: list[str] = []
        if vnet is not None:
            out += vnet.addressSpace
            for peer in networks.peers_in_virtual_network(self.state, vnet.name):
                out += self.state.vnet(peer).addressSpace  # type: ignore[union-attr]
            out += vnet.onPremisesPrefixes
        table_name = self._route_table(subnet_ref)
        table = self.state.route_table(table_name) if table_name else None
        out += [r.addressPrefix for r in (table.routes if table else [])]
        out.append(str(HOST_VIP))
        seen: set[str] = set()
        return [p for p in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]

    def virtual_network_set(self, vnet_name: str, subnet_ref: str | None = None) -> PrefixSet:
        """The VirtualNetwork tag of a NIC in ``vnet_name`` (in subnet ``subnet_ref``, whose
        user-defined routes join it)."""
        key = (vnet_name.lower(), self._route_table(subnet_ref))
        found = self._vnet_cache.get(key)
        if found is None:
            found = PrefixSet.from_cidrs(
                prefix_cidr(p) for p in self.virtual_network_prefixes(vnet_name, subnet_ref))
            self._vnet_cache[key] = found
        return found

    def virtual_network(self, vnet_name: str, subnet_ref: str | None = None) -> tuple[IPNetwork, ...]:
        return self.virtual_network_set(vnet_name, subnet_ref).networks()

    def internet_set(self, vnet_name: str = "") -> PrefixSet:
        return self._internet.prefix_set

    def internet(self, vnet_name: str = "") -> tuple[IPNetwork, ...]:
        return self.internet_set().networks()

    def smtp_block_term(self, vnet_name: str, subnet_ref: str | None = None) -> AddressTerm:
        """Where the platform blocks outbound TCP 25: Internet addresses the NIC reaches
        through Azure's Internet edge, i.e. outside its VirtualNetwork (the block is at the
        edge: SMTP to the host VIP 168.63.129.16, a peer or a public on-premises prefix, all
        inside 168.0.0.0/8 or the like, never leaves that way)."""
        key = ("smtp", vnet_name.lower(), self._route_table(subnet_ref))
        term = self._term_cache.get(key)
        if term is None:
            term = AddressTerm.of("Internet", self._internet.prefix_set
                                  - self.virtual_network_set(vnet_name, subnet_ref))
            self._term_cache[key] = term
        return term

    def address_term(self, rule: SecurityRule, side: str, vnet_name: str,
                     subnet_ref: str | None = None) -> AddressTerm:
        groups = getattr(rule, f"{side}ApplicationSecurityGroups")
        if groups:
            members = [m for g in groups for m in self._asg_members.get(g.lower(), [])]
            return AddressTerm.of(",".join(f"asg:{g}" for g in groups), PrefixSet.from_cidrs(members))
        items = rule.address_items(side)
        if items == ["*"] or not items:
            return ANY_ADDRESS
        if len(items) == 1 and not looks_like_address(items[0]):
            return self.tag_term(items[0], vnet_name, subnet_ref)
        return self.literal_term(items)

    def literal_term(self, items: list[str]) -> AddressTerm:
        """The term of a list of literal prefixes (reused from the memo when unchanged)."""
        key = tuple(items)
        term = self.memo.terms.get(key) or self._memo_in.terms.get(key)
        if term is None:
            term = AddressTerm.of(",".join(items), PrefixSet.from_cidrs(prefix_cidr(i) for i in items))
        self.memo.terms[key] = term
        return term

    def tag_term(self, tag: str, vnet_name: str, subnet_ref: str | None = None) -> AddressTerm:
        canon = canonical_builtin_tag(tag)
        if canon in _CONSTANT_TERMS:
            return _CONSTANT_TERMS[canon]
        if canon == "Internet":
            return self._internet
        if canon == "VirtualNetwork":
            key = (canon, vnet_name.lower(), self._route_table(subnet_ref))
            term = self._term_cache.get(key)
            if term is None:
                term = AddressTerm.of(canon, self.virtual_network_set(vnet_name, subnet_ref))
                self._term_cache[key] = term
            return term
        found = self.tags.get(tag)
        if found is None:  # validate.check refuses these; be safe for direct API users
            raise KeyError(f"unknown service tag {tag!r}")
        return AddressTerm.of(found.name, found.prefix_set)

    # rules --------------------------------------------------------------------------------
    def rules(self, nsg: NetworkSecurityGroup, vnet_name: str,
              subnet_ref: str | None = None) -> tuple[ResolvedRule, ...]:
        """All rules of ``nsg`` (both directions, defaults included) resolved for a NIC in
        ``vnet_name`` (and subnet ``subnet_ref``), sorted by direction then priority."""
        key = (nsg.name.lower(), vnet_name.lower(), self._route_table(subnet_ref))
        if key not in self._rule_cache:
            out = [self._resolve_rule(nsg.name, r, vnet_name, subnet_ref) for r in nsg.securityRules]
            for name, prio, direction, src, dst, access in DEFAULT_RULES:
                out.append(ResolvedRule(
                    nsg=nsg.name, name=name, priority=prio, direction=direction, access=access,
                    protocol=Protocol.ANY,
                    source=ANY_ADDRESS if src == "*" else self.tag_term(src, vnet_name, subnet_ref),
                    source_ports=ANY_PORT,
                    destination=ANY_ADDRESS if dst == "*" else self.tag_term(dst, vnet_name, subnet_ref),
                    destination_ports=ANY_PORT, default=True))
            out.sort(key=lambda r: (r.direction.value, r.priority))
            self._rule_cache[key] = tuple(out)
        return self._rule_cache[key]

    def _resolve_rule(self, nsg_name: str, rule: SecurityRule, vnet_name: str,
                      subnet_ref: str | None = None) -> ResolvedRule:
        return ResolvedRule(
            nsg=nsg_name, name=rule.name, priority=rule.priority, direction=rule.direction,
            access=rule.access, protocol=rule.protocol,
            source=self.address_term(rule, "source", vnet_name, subnet_ref),
            source_ports=port_term(rule.port_items("source")),
            destination=self.address_term(rule, "destination", vnet_name, subnet_ref),
            destination_ports=port_term(rule.port_items("destination")),
        )

    def level(self, kind: LevelKind, nsg_name: str | None, direction: Direction,
              vnet_name: str, subnet_ref: str | None = None) -> Level | None:
        if not nsg_name:
            return None
        nsg = self.state.nsg(nsg_name)
        if nsg is None:
            return None
        rules = tuple(r for r in self.rules(nsg, vnet_name, subnet_ref) if r.direction is direction)
        return Level(kind=kind, nsg=nsg.name, rules=rules)


def port_term(items: list[str]) -> PortTerm:
    ranges = sorted(parse_port_range(i) for i in items)
    merged: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return PortTerm(tuple(merged))


def _platform_tag_rule(rule: ResolvedRule) -> bool:
    return rule.destination.label in PLATFORM_TAGS


def resolve(state: DesiredState, tags: ServiceTagIndex | None = None) -> Policy:
    """The whole desired state as a Policy: one NicPolicy per NIC.

    Pure: the result depends only on the arguments. Literal prefix lists unchanged since the
    previous call are not parsed again (see TermMemo); a Level or a term shared by many
    NICs (same NSG, same VNet) is one object."""
    global _last_terms
    r = Resolver(state, tags, _last_terms)
    nics: dict[str, NicPolicy] = {}
    smtp_blocked = state.platform.outboundSmtp == "blocked"
    levels: dict[tuple, Level | None] = {}

    def level(kind: LevelKind, nsg_name: str | None, direction: Direction, vnet_name: str,
              subnet_ref: str) -> Level | None:
        key = (kind, (nsg_name or "").lower(), direction, vnet_name.lower(), r._route_table(subnet_ref))
        if key not in levels:
            levels[key] = r.level(kind, nsg_name, direction, vnet_name, subnet_ref)
        return levels[key]

    platform_cache: dict[tuple[int, ...], tuple[Level, ...]] = {}
    for nic in state.networkInterfaces:
        vnet_name, _, _ = nic.subnet.partition("/")
        found = state.subnet(nic.subnet)
        subnet_nsg = found[1].networkSecurityGroup if found else None
        inbound = tuple(lv for lv in (
            level(LevelKind.SUBNET, subnet_nsg, Direction.INBOUND, vnet_name, nic.subnet),
            level(LevelKind.NIC, nic.networkSecurityGroup, Direction.INBOUND, vnet_name, nic.subnet)) if lv)
        outbound = tuple(lv for lv in (
            level(LevelKind.NIC, nic.networkSecurityGroup, Direction.OUTBOUND, vnet_name, nic.subnet),
            level(LevelKind.SUBNET, subnet_nsg, Direction.OUTBOUND, vnet_name, nic.subnet)) if lv)
        out_key = tuple(id(lv) for lv in outbound)  # the levels stay alive in ``levels``
        if out_key not in platform_cache:
            platform_levels = tuple(
                Level(lv.kind, lv.nsg, tuple(x for x in lv.rules if _platform_tag_rule(x)))
                for lv in outbound)
            platform_cache[out_key] = tuple(lv for lv in platform_levels if lv.rules)
        flush = any(g.flushConnection for g in (state.nsg(n) for n in (subnet_nsg, nic.networkSecurityGroup) if n)
                    if g is not None)
        vnet = state.vnet(vnet_name)
        nics[nic.name] = NicPolicy(
            nic=nic.name, vnet=(vnet.name if vnet else vnet_name),
            subnet=nic.subnet, addresses=nic.addresses, interface=nic.interface,
            inbound=inbound, outbound=outbound,
            outbound_platform=platform_cache[out_key],
            platform_exempt=_PLATFORM_EXEMPT if state.platform.platformExemption else None,
            smtp_block=r.smtp_block_term(vnet_name, nic.subnet) if smtp_blocked else None,
            flush_connection=flush,
            platform_drops=(platform_drops(found[1].addressPrefix if found else None)
                            if state.platform.platformDrops else ()),
            neighbor_discovery=True,
        )
    _last_terms = r.memo
    return Policy(nics=nics)


SMTP_RULE = ResolvedRule(
    nsg="", name="BlockOutboundSmtp", priority=0, direction=Direction.OUTBOUND,
    access=Access.DENY, protocol=Protocol.TCP, source=ANY_ADDRESS, source_ports=ANY_PORT,
    destination=AddressTerm(label="Internet", any=True), destination_ports=PortTerm(((25, 25),)),
    platform=True)
EXEMPTION_RULE = ResolvedRule(
    nsg="", name="PlatformExemption", priority=0, direction=Direction.OUTBOUND,
    access=Access.ALLOW, protocol=Protocol.ANY, source=ANY_ADDRESS, source_ports=ANY_PORT,
    destination=AddressTerm(label="AzurePlatform", any=True), destination_ports=ANY_PORT,
    platform=True)


def evaluate(nic: NicPolicy, flow: Flow) -> Verdict:
    """IP flow verify: Allow or Deny, with the decision taken at each level, in order."""
    path: list[LevelDecision] = []
    if (nic.neighbor_discovery and flow.protocol == 58
            and flow.icmp_type in NEIGHBOR_DISCOVERY_TYPES):
        return Verdict(Access.ALLOW, (LevelDecision(None, None, ND_RULE, Access.ALLOW),))
    for drop in nic.platform_drops:
        if drop.matches(flow):
            return Verdict(Access.DENY, (LevelDecision(None, None, drop.rule, Access.DENY),))
    if flow.direction is Direction.OUTBOUND:
        if (nic.smtp_block is not None and flow.protocol == 6 and flow.remote_port == 25
                and nic.smtp_block.contains(flow.remote)):
            return Verdict(Access.DENY, (LevelDecision(None, None, SMTP_RULE, Access.DENY),))
        if nic.platform_exempt is not None and nic.platform_exempt.contains(flow.remote):
            for lv in nic.outbound_platform:
                rule = lv.first_match(flow)
                if rule is not None:
                    path.append(LevelDecision(lv.kind, lv.nsg, rule, rule.access))
                    if rule.access is Access.DENY:
                        return Verdict(Access.DENY, tuple(path))
            path.append(LevelDecision(None, None, EXEMPTION_RULE, Access.ALLOW))
            return Verdict(Access.ALLOW, tuple(path))
    levels = nic.levels(flow.direction)
    present = {lv.kind for lv in levels}
    order = ((LevelKind.SUBNET, LevelKind.NIC) if flow.direction is Direction.INBOUND
             else (LevelKind.NIC, LevelKind.SUBNET))
    by_kind = {lv.kind: lv for lv in levels}
    for kind in order:
        if kind not in present:
            path.append(LevelDecision(kind, None, None, Access.ALLOW))
            continue
        lv = by_kind[kind]
        rule = lv.first_match(flow)
        # Every NSG ends in DenyAll*, so a rule always matches; stay safe for hand-built levels.
        access = rule.access if rule is not None else Access.DENY
        path.append(LevelDecision(kind, lv.nsg, rule, access))
        if access is Access.DENY:
            return Verdict(Access.DENY, tuple(path))
    return Verdict(Access.ALLOW, tuple(path))


def verify(policy: Policy, nic_name: str, flow: Flow) -> Verdict:
    nic = find_nic(policy, nic_name)
    return evaluate(nic, flow)


def find_nic(policy: Policy, name: str) -> NicPolicy:
    if name in policy.nics:
        return policy.nics[name]
    for key, nic in policy.nics.items():
        if key.lower() == name.lower():
            return nic
    raise KeyError(f"no NIC named {name!r} (known: {', '.join(sorted(policy.nics)) or 'none'})")


def effective_rules(nic: NicPolicy, direction: Direction) -> list[tuple[Level, ResolvedRule]]:
    """The aggregate rule list of a NIC for one direction, level by level in Azure's order."""
    return [(lv, rule) for lv in nic.levels(direction) for rule in lv.rules]


@lru_cache(maxsize=None)
def protocol_number(name: str) -> int:
    """'tcp' / 'TCP' / '6' -> 6."""
    from nsg_agent.desired.vocabulary import PROTOCOL_NUMBERS_BY_NAME
    s = name.strip().lower()
    if s.isascii() and s.isdigit() and 0 <= int(s) <= 255:
        return int(s)
    if s in PROTOCOL_NUMBERS_BY_NAME:
        return PROTOCOL_NUMBERS_BY_NAME[s]
    raise ValueError(f"unknown protocol {name!r} (use tcp, udp, icmp, esp, ah or a number 0-255)")
