"""How VNets connect, as Azure computes it: peerings (one resource on each side), user-defined
routes and the default system routes. Pure functions of the desired state.

- A peering is a resource on each VNet. Traffic flows only when both sides exist (Azure then
  reports ``peeringState: Connected`` on both); one side alone is ``Initiated`` and connects
  nothing. A side written with an explicit ``peeringState`` of Initiated or Disconnected
  connects nothing either (that is Azure's own word on it). The desired-state shorthand
  ``peerings: [name]`` stands for a connected pair: both sides at once.
- ``allowVirtualNetworkAccess: false`` on A's side keeps B's address space out of the
  VirtualNetwork tag of A's NICs (Azure: "the VirtualNetwork service tag no longer includes
  the peered virtual network").
- Routes: longest prefix wins; for the same prefix a user-defined route wins over a system
  route. System routes: each VNet address space (VnetLocal), connected peers (VNetPeering),
  on-premises prefixes (VirtualNetworkGateway), 0.0.0.0/0 and ::/0 (Internet), and the
  next-hop-None routes Azure returned in a recorded effective route table (below).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from nsg_agent.desired.model import DesiredState, VirtualNetworkPeering, parse_prefix

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The default routes with next hop None in a real effective route table
# (az network nic show-effective-route-table, westus, 2022-05-12; docs/evidence/
# azure-cli__test_network_nic_convenience_commands__effective-routes.json). Azure's
# documentation also lists 172.16.0.0/12; the recorded table has no such route (172.16/12
# goes to the 0.0.0.0/0 Internet route there), and a recorded answer wins over the docs.
SYSTEM_NONE_ROUTES: tuple[str, ...] = (
    "10.0.0.0/8", "100.64.0.0/10", "25.48.0.0/12", "25.4.0.0/14", "198.18.0.0/15",
    "157.59.0.0/16", "192.168.0.0/16", "25.33.0.0/16", "40.109.0.0/16", "104.147.0.0/16",
    "104.146.0.0/17", "40.108.0.0/17", "23.103.0.0/18", "25.41.0.0/20", "20.35.252.0/22",
)
_NONE_NETS = tuple(ipaddress.ip_network(p) for p in SYSTEM_NONE_ROUTES)
_DEFAULTS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


# --- peerings ------------------------------------------------------------------------------


def _side(state: DesiredState, local: str, remote: str) -> VirtualNetworkPeering | None:
    """``local``'s peering to ``remote``: written on ``local``, or a shorthand pair on
    ``remote`` (which stands for both sides)."""
    vl, vr = state.vnet(local), state.vnet(remote)
    own = next((p for p in (vl.peerings if vl else []) if p.remote.lower() == remote.lower()), None)
    if own is not None:
        return own
    return next((p for p in (vr.peerings if vr else [])
                 if p.pair and p.remote.lower() == local.lower()), None)


def connected(state: DesiredState, a: str, b: str) -> bool:
    """Do VNets ``a`` and ``b`` have a peering in force (both sides, none held back)?"""
    if a.lower() == b.lower():
        return False
    sides = (_side(state, a, b), _side(state, b, a))
    return all(s is not None and s.peeringState in (None, "Connected") for s in sides)


def peering_state(state: DesiredState, local: str, remote: str) -> str:
    """What Azure would report on ``local``'s side: Connected, Initiated or Disconnected."""
    own = _side(state, local, remote)
    if own is None:
        return "Disconnected"
    if connected(state, local, remote):
        return "Connected"
    return own.peeringState if own.peeringState not in (None, "Connected") else "Initiated"


def peers_in_virtual_network(state: DesiredState, vnet_name: str) -> list[str]:
    """VNets whose address space joins ``vnet_name``'s VirtualNetwork tag (sorted names)."""
    out = []
    for other in state.virtualNetworks:
        if connected(state, vnet_name, other.name):
            side = _side(state, vnet_name, other.name)
            if side is not None and side.allowVirtualNetworkAccess:
                out.append(other.name)
    return sorted(out, key=str.lower)


def connected_peers(state: DesiredState, vnet_name: str) -> list[str]:
    """VNets with a peering in force to ``vnet_name`` (traffic can be routed between them)."""
    return sorted((v.name for v in state.virtualNetworks if connected(state, vnet_name, v.name)),
                  key=str.lower)


# --- routes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EffectiveRoute:
    prefix: IPNetwork
    next_hop_type: str  # VnetLocal, VNetPeering, VirtualNetworkGateway, Internet, None, ...
    source: str  # "Default" (system route) or "User"
    name: str = ""  # the user route's name
    next_hop_ip: str | None = None

    def describe(self) -> str:
        what = f"user route {self.name!r}" if self.source == "User" else "system route"
        return f"{what} {self.prefix} next hop {self.next_hop_type}"


def user_routes(state: DesiredState, subnet_ref: str) -> list[EffectiveRoute]:
    """The routes of the route table associated with the subnet ``vnet/subnet``."""
    found = state.subnet(subnet_ref)
    if found is None or not found[1].routeTable:
        return []
    table = state.route_table(found[1].routeTable)
    if table is None:
        return []
    return [EffectiveRoute(r.network, r.nextHopType, "User", r.name, r.nextHopIpAddress)
            for r in table.routes]


def system_routes(state: DesiredState, vnet_name: str) -> list[EffectiveRoute]:
    out: list[EffectiveRoute] = []
    vnet = state.vnet(vnet_name)
    if vnet is not None:
        out += [EffectiveRoute(parse_prefix(p), "VnetLocal", "Default") for p in vnet.addressSpace]
        out += [EffectiveRoute(parse_prefix(p), "VirtualNetworkGateway", "Default")
                for p in vnet.onPremisesPrefixes]
    for peer in connected_peers(state, vnet_name):
        out += [EffectiveRoute(parse_prefix(p), "VNetPeering", "Default")
                for p in state.vnet(peer).addressSpace]  # type: ignore[union-attr]
    out += [EffectiveRoute(n, "Internet", "Default") for n in _DEFAULTS]
    out += [EffectiveRoute(n, "None", "Default") for n in _NONE_NETS]
    return out


def route_for(state: DesiredState, subnet_ref: str,
              address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> EffectiveRoute | None:
    """The route a packet from a NIC in ``subnet_ref`` to ``address`` takes: the longest
    matching prefix; on equal prefixes a user route wins over a system route, and among
    system routes the more specific meaning (VnetLocal before None) wins."""
    vnet_name = subnet_ref.partition("/")[0]
    rank = {"User": 0, "Default": 1}
    best: tuple | None = None
    chosen = None
    system = system_routes(state, vnet_name)
    for order, route in enumerate(user_routes(state, subnet_ref) + system):
        if route.prefix.version != address.version or address not in route.prefix:
            continue
        key = (-route.prefix.prefixlen, rank[route.source], order)
        if best is None or key < best:
            best, chosen = key, route
    return chosen
