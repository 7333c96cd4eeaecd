"""Checks that need the whole desired state: references, uniqueness, overlaps, limits.

Each check yields (field path, message) pairs; the loader adds file and line. All problems
are collected, so a user fixes a file in one pass.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from typing import Iterator

from nsg_agent.desired import networks
from nsg_agent.desired.model import (
    MAX_ASGS_PER_NIC,
    MAX_ASGS_PER_NSG,
    MAX_IPCONFIGS_PER_ASG,
    MAX_RULES_PER_NSG,
    DesiredState,
    canonical_builtin_tag,
    looks_like_address,
    parse_prefix,
)
from nsg_agent.desired.servicetags import ServiceTagIndex

Issue = tuple[tuple, str]


def check(state: DesiredState, tags: ServiceTagIndex) -> list[Issue]:
    issues: list[Issue] = []
    for fn in (_names, _vnets, _nics, _nsgs, _asgs):
        issues += list(fn(state, tags))
    return issues


def warnings(state: DesiredState, tags: ServiceTagIndex) -> list[Issue]:
    """Not errors, but worth telling: an NSG used nowhere, an ASG with no members."""
    used_nsgs = {s.networkSecurityGroup.lower() for v in state.virtualNetworks for s in v.subnets
                 if s.networkSecurityGroup}
    used_nsgs |= {n.networkSecurityGroup.lower() for n in state.networkInterfaces if n.networkSecurityGroup}
    out: list[Issue] = []
    if state.virtualNetworks or state.networkInterfaces:
        for i, nsg in enumerate(state.networkSecurityGroups):
            if nsg.name.lower() not in used_nsgs:
                out.append((("networkSecurityGroups", i), f"NSG {nsg.name!r} is not associated with any subnet or NIC"))
    for vi, vnet in enumerate(state.virtualNetworks):
        for pi, peer in enumerate(vnet.peerings):
            remote = state.vnet(peer.remote)
            if remote is None or remote is vnet or networks.connected(state, vnet.name, remote.name):
                continue
            held = f"its peeringState is {peer.peeringState}" if peer.peeringState not in (None, "Connected") \
                else f"VNet {remote.name!r} has no peering back to {vnet.name!r}"
            out.append((("virtualNetworks", vi, "peerings", pi), (
                f"peering {peer.name!r} to {remote.name!r} connects nothing: {held} (Azure state "
                f"{networks.peering_state(state, vnet.name, remote.name)}; write both sides, or "
                f"'peerings: [{remote.name}]' for a connected pair)")))
    members = {a.lower() for n in state.networkInterfaces for a in n.applicationSecurityGroups}
    if state.networkInterfaces:
        for i, asg in enumerate(state.applicationSecurityGroups):
            if asg.name.lower() not in members:
                out.append((("applicationSecurityGroups", i), f"ASG {asg.name!r} has no member NICs"))
    return out


def _dupes(names: list[str]) -> set[str]:
    c = Counter(n.lower() for n in names)
    return {n for n, k in c.items() if k > 1}


def _names(state: DesiredState, tags: ServiceTagIndex) -> Iterator[Issue]:
    for coll, label in (("virtualNetworks", "VNet"), ("networkInterfaces", "NIC"),
                        ("applicationSecurityGroups", "ASG"), ("networkSecurityGroups", "NSG"),
                        ("routeTables", "route table")):
        items = getattr(state, coll)
        dup = _dupes([x.name for x in items])
        seen: set[str] = set()
        for i, x in enumerate(items):
            key = x.name.lower()
            if key in dup and key in seen:
                yield (coll, i, "name"), f"{label} name {x.name!r} is used more than once"
            seen.add(key)


def _vnets(state: DesiredState, tags: ServiceTagIndex) -> Iterator[Issue]:
    all_subnets: list[tuple[tuple, ipaddress._BaseNetwork, str]] = []
    spaces: list[tuple[int, ipaddress._BaseNetwork, str]] = []
    for vi, vnet in enumerate(state.virtualNetworks):
        nets = [parse_prefix(p) for p in vnet.addressSpace]
        if not nets:
            yield ("virtualNetworks", vi, "addressSpace"), "a VNet needs at least one address prefix"
        for n in nets:
            spaces.append((vi, n, vnet.name))
        dup = _dupes([s.name for s in vnet.subnets])
        seen: set[str] = set()
        for si, sub in enumerate(vnet.subnets):
            loc = ("virtualNetworks", vi, "subnets", si)
            if sub.name.lower() in dup and sub.name.lower() in seen:
                yield loc + ("name",), f"subnet name {sub.name!r} is used more than once in VNet {vnet.name!r}"
            seen.add(sub.name.lower())
            net = sub.network
            if not any(net.version == n.version and net.subnet_of(n) for n in nets):
                yield loc + ("addressPrefix",), (
                    f"subnet {sub.addressPrefix} is not inside the address space of VNet "
                    f"{vnet.name!r} ({', '.join(vnet.addressSpace)})")
            for other_loc, other, other_name in all_subnets:
                if other.version == net.version and other.overlaps(net):
                    yield loc + ("addressPrefix",), (
                        f"subnet {sub.addressPrefix} overlaps subnet {other_name} ({other})")
            all_subnets.append((loc, net, f"{vnet.name}/{sub.name}"))
            if sub.networkSecurityGroup and state.nsg(sub.networkSecurityGroup) is None:
                yield loc + ("networkSecurityGroup",), f"unknown NSG {sub.networkSecurityGroup!r}"
            if sub.routeTable and state.route_table(sub.routeTable) is None:
                yield loc + ("routeTable",), f"unknown route table {sub.routeTable!r}"
        for pi, peer in enumerate(vnet.peerings):
            ploc = ("virtualNetworks", vi, "peerings", pi)
            if state.vnet(peer.remote) is None:
                yield ploc, f"unknown VNet {peer.remote!r} in peerings"
            elif peer.remote.lower() == vnet.name.lower():
                yield ploc, "a VNet cannot peer with itself"
    # Peered VNets must not overlap (Azure refuses such peerings).
    for vi, vnet in enumerate(state.virtualNetworks):
        for pi, peer in enumerate(vnet.peerings):
            remote = state.vnet(peer.remote)
            if remote is None or remote is vnet:
                continue
            for a in vnet.addressSpace:
                for b in remote.addressSpace:
                    na, nb = parse_prefix(a), parse_prefix(b)
                    if na.version == nb.version and na.overlaps(nb):
                        yield ("virtualNetworks", vi, "peerings", pi), (
                            f"peered VNets {vnet.name!r} and {remote.name!r} overlap ({na} and {nb})")
    for ti, table in enumerate(state.routeTables):
        dup = _dupes([r.name for r in table.routes])
        seen = set()
        for ri, route in enumerate(table.routes):
            if route.name.lower() in dup and route.name.lower() in seen:
                yield ("routeTables", ti, "routes", ri, "name"), (
                    f"route name {route.name!r} is used more than once in route table {table.name!r}")
            seen.add(route.name.lower())


def _nics(state: DesiredState, tags: ServiceTagIndex) -> Iterator[Issue]:
    owner: dict[ipaddress._BaseAddress, str] = {}
    ifaces: dict[tuple[str, str], str] = {}
    for ni, nic in enumerate(state.networkInterfaces):
        loc = ("networkInterfaces", ni)
        found = state.subnet(nic.subnet)
        if found is None:
            yield loc + ("subnet",), f"unknown subnet {nic.subnet!r} (write it as 'vnet/subnet')"
        else:
            _, sub = found
            net = sub.network
            for ai, addr in enumerate(nic.addresses):
                if addr not in net:
                    yield loc + ("ipAddresses", ai), f"{addr} is not inside subnet {nic.subnet} ({net})"
                elif addr.version == 4 and net.prefixlen <= 29 and (
                        int(addr) - int(net.network_address) < 4 or addr == net.broadcast_address):
                    yield loc + ("ipAddresses", ai), (
                        f"{addr} is reserved by Azure in subnet {net} (network address, gateway, "
                        "two DNS addresses and broadcast cannot be assigned)")
        for ai, addr in enumerate(nic.addresses):
            if addr in owner:
                yield loc + ("ipAddresses", ai), f"{addr} is already used by NIC {owner[addr]!r}"
            owner.setdefault(addr, nic.name)
        if nic.networkSecurityGroup and state.nsg(nic.networkSecurityGroup) is None:
            yield loc + ("networkSecurityGroup",), f"unknown NSG {nic.networkSecurityGroup!r}"
        known = {a.name.lower() for a in state.applicationSecurityGroups}
        for gi, g in enumerate(nic.applicationSecurityGroups):
            if g.lower() not in known:
                yield loc + ("applicationSecurityGroups", gi), f"unknown application security group {g!r}"
        if len(nic.applicationSecurityGroups) > MAX_ASGS_PER_NIC:
            yield loc + ("applicationSecurityGroups",), (
                f"{len(nic.applicationSecurityGroups)} ASGs; Azure allows at most {MAX_ASGS_PER_NIC} "
                "per IP configuration")
        if nic.interface:
            # per host: in a fleet (docs/fleet.md) every host has its own eth0
            key = ((nic.host or "").lower(), nic.interface)
            if key in ifaces:
                yield loc + ("interface",), (f"interface {nic.interface!r} is already NIC {ifaces[key]!r}"
                                             + (f" on host {nic.host!r}" if nic.host else ""))
            ifaces.setdefault(key, nic.name)


def _asg_vnets(state: DesiredState) -> dict[str, set[str]]:
    vnets: dict[str, set[str]] = defaultdict(set)
    for nic in state.networkInterfaces:
        vname = nic.subnet.partition("/")[0].lower()
        for g in nic.applicationSecurityGroups:
            vnets[g.lower()].add(vname)
    return vnets


def _asgs(state: DesiredState, tags: ServiceTagIndex) -> Iterator[Issue]:
    vnets = _asg_vnets(state)
    first: dict[str, str] = {}
    for ni, nic in enumerate(state.networkInterfaces):
        vname = nic.subnet.partition("/")[0]
        for gi, g in enumerate(nic.applicationSecurityGroups):
            key = g.lower()
            if key in first and first[key].lower() != vname.lower():
                yield ("networkInterfaces", ni, "applicationSecurityGroups", gi), (
                    f"all NICs of ASG {g!r} must be in one VNet: this NIC is in {vname!r}, "
                    f"its first member is in {first[key]!r}")
            first.setdefault(key, vname)
    counts = Counter(g.lower() for nic in state.networkInterfaces
                     for g in nic.applicationSecurityGroups for _ in nic.ipAddresses)
    for i, asg in enumerate(state.applicationSecurityGroups):
        if counts[asg.name.lower()] > MAX_IPCONFIGS_PER_ASG:
            yield ("applicationSecurityGroups", i), (
                f"{counts[asg.name.lower()]} IP configurations; Azure allows at most {MAX_IPCONFIGS_PER_ASG}")
    del vnets


def _nsgs(state: DesiredState, tags: ServiceTagIndex) -> Iterator[Issue]:
    known_asgs = {a.name.lower() for a in state.applicationSecurityGroups}
    asg_vnet = {k: next(iter(v)) for k, v in _asg_vnets(state).items() if len(v) == 1}
    for gi, nsg in enumerate(state.networkSecurityGroups):
        loc = ("networkSecurityGroups", gi)
        if len(nsg.securityRules) > MAX_RULES_PER_NSG:
            yield loc + ("securityRules",), (
                f"{len(nsg.securityRules)} rules; Azure allows at most {MAX_RULES_PER_NSG} per NSG")
        dup = _dupes([r.name for r in nsg.securityRules])
        seen: set[str] = set()
        prio: dict[tuple[str, int], str] = {}
        nsg_asgs: set[str] = set()
        for ri, rule in enumerate(nsg.securityRules):
            rloc = loc + ("securityRules", ri)
            if rule.name.lower() in dup and rule.name.lower() in seen:
                yield rloc + ("name",), f"rule name {rule.name!r} is used more than once in NSG {nsg.name!r}"
            seen.add(rule.name.lower())
            key = (rule.direction.value, rule.priority)
            if key in prio:
                yield rloc + ("priority",), (
                    f"priority {rule.priority} is already used by {rule.direction.value} rule "
                    f"{prio[key]!r} of NSG {nsg.name!r}")
            prio.setdefault(key, rule.name)
            for side in ("source", "destination"):
                single = getattr(rule, f"{side}AddressPrefix")
                if single and single.strip() != "*" and not looks_like_address(single):
                    if canonical_builtin_tag(single) is None and tags.get(single) is None:
                        hint = " (add the service-tag file under serviceTags.files)" if not tags.tags else ""
                        yield rloc + (f"{side}AddressPrefix",), f"unknown service tag {single!r}{hint}"
                groups = getattr(rule, f"{side}ApplicationSecurityGroups")
                for ai, g in enumerate(groups):
                    nsg_asgs.add(g.lower())
                    if state.applicationSecurityGroups or state.networkInterfaces:
                        if g.lower() not in known_asgs:
                            yield rloc + (f"{side}ApplicationSecurityGroups", ai), (
                                f"unknown application security group {g!r}")
            src = {asg_vnet[g.lower()] for g in rule.sourceApplicationSecurityGroups if g.lower() in asg_vnet}
            dst = {asg_vnet[g.lower()] for g in rule.destinationApplicationSecurityGroups if g.lower() in asg_vnet}
            if src and dst and (len(src | dst) > 1):
                yield rloc, (
                    "source and destination application security groups must be in the same "
                    f"VNet (found {', '.join(sorted(src | dst))})")
        if len(nsg_asgs) > MAX_ASGS_PER_NSG:
            yield loc, f"{len(nsg_asgs)} ASGs referenced; Azure allows at most {MAX_ASGS_PER_NSG} per NSG"
