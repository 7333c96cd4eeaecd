"""The lab's address plan: which namespaces, bridges, ports and addresses a desired state
becomes. Pure (no kernel access): ``plan_lab`` turns a DesiredState into a LabPlan, and a
LabPlan round-trips through JSON (it is what the state file records).

The fabric (one namespace for every VNet of the file) holds one Linux bridge per subnet with
the subnet's gateway, as in Azure the first usable address (x.x.x.1 of a /24), so routing
between subnets and between VNets is just connected routes. VNets that are not peered must not
reach each other: ``isolation`` lists every ordered pair of unpeered VNets, which the lab's
own nft table drops in the fabric's forward hook (Azure peering is not transitive, so this is
pairwise, not by connected component).

External hosts and the platform host (168.63.129.16) are attached routed: their namespace has
the address as a /32 on ``eth0`` and a default route out of it; the fabric has a /32 host
route to them over their port, with proxy ARP answering for everything else. No namespace has
a link to the root namespace, so nothing in the lab can reach outside it.

IPv4 only: an IPv6 address in the file is reported as a LabPlanError.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from nsg_agent.desired import networks
from nsg_agent.desired.model import DesiredState
from nsg_agent.errors import InvalidInput
from nsg_agent.lab import naming

PLATFORM_ADDRESS = ipaddress.IPv4Address("168.63.129.16")
# The root namespace of the machines this runs on uses this range: never use it in a lab.
FORBIDDEN = ipaddress.IPv4Network("192.0.2.0/24")


class LabPlanError(InvalidInput, ValueError):
    """The desired state cannot be built as a lab (with every reason at once)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("cannot build the lab:\n" + "\n".join(f"  {p}" for p in self.problems))


@dataclass(frozen=True)
class BridgePlan:
    key: str  # "vnet/subnet", lowercased: the identity used for stable indexes
    vnet: str
    subnet: str
    index: int
    ifname: str
    prefix: str  # "10.1.1.0/24"
    gateway: str  # "10.1.1.1"

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.prefix).prefixlen


@dataclass(frozen=True)
class NicPlan:
    name: str
    index: int
    netns: str
    port: str  # the bridge port in the fabric
    bridge: str  # ifname of its subnet's bridge
    subnet: str  # bridge key "vnet/subnet"
    vnet: str
    addresses: tuple[str, ...]
    prefixlen: int
    gateway: str

    @property
    def address(self) -> str:
        """The primary address: the one probes use."""
        return self.addresses[0]


@dataclass(frozen=True)
class HostPlan:
    name: str
    kind: str  # "external" or "platform"
    index: int  # -1 for the platform host
    netns: str
    port: str  # its routed port in the fabric
    address: str


@dataclass(frozen=True)
class LabPlan:
    lab: str
    fabric: str
    bridges: tuple[BridgePlan, ...]
    nics: tuple[NicPlan, ...]
    hosts: tuple[HostPlan, ...]  # external hosts, then the platform host
    vnets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # vnet -> address space
    isolation: tuple[tuple[str, str], ...] = ()  # ordered pairs of VNets with no route
    # (NIC, host, why): the NIC's effective route to the host's address has next hop None
    # (a system route such as 10.0.0.0/8, or a user route), so routing drops that traffic
    unrouted: tuple[tuple[str, str, str], ...] = ()

    # lookups ---------------------------------------------------------------------------
    def nic(self, name: str) -> NicPlan | None:
        return next((n for n in self.nics if n.name.lower() == name.lower()), None)

    def host(self, name: str) -> HostPlan | None:
        return next((h for h in self.hosts if h.name.lower() == name.lower()), None)

    def bridge(self, key: str) -> BridgePlan | None:
        return next((b for b in self.bridges if b.key == key.lower()), None)

    def namespaces(self) -> list[str]:
        """Every namespace of the lab, fabric first."""
        return [self.fabric] + [n.netns for n in self.nics] + [h.netns for h in self.hosts]

    def netns_of(self, name: str) -> str | None:
        """The namespace of a NIC or host, by its name in the file (case-insensitive)."""
        found = self.nic(name) or self.host(name)
        return found.netns if found else None

    def isolated(self, vnet_a: str, vnet_b: str) -> bool:
        return (vnet_a.lower(), vnet_b.lower()) in {(a.lower(), b.lower()) for a, b in self.isolation}

    # state file ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["isolation"] = [list(p) for p in self.isolation]
        d["unrouted"] = [list(p) for p in self.unrouted]
        d["vnets"] = {k: list(v) for k, v in self.vnets.items()}
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "LabPlan":
        return LabPlan(
            lab=d["lab"], fabric=d["fabric"],
            bridges=tuple(BridgePlan(**b) for b in d["bridges"]),
            nics=tuple(NicPlan(**{**n, "addresses": tuple(n["addresses"])}) for n in d["nics"]),
            hosts=tuple(HostPlan(**h) for h in d["hosts"]),
            vnets={k: tuple(v) for k, v in d.get("vnets", {}).items()},
            isolation=tuple(tuple(p) for p in d.get("isolation", [])),  # type: ignore[misc]
            unrouted=tuple(tuple(p) for p in d.get("unrouted", [])),  # type: ignore[misc]
        )


def _peered(state: DesiredState, a: str, b: str) -> bool:
    """Azure: traffic flows between two VNets only when a peering is in force on both sides
    (nsg_agent.desired.networks; the ``peerings: [name]`` shorthand is both sides). Not transitive."""
    return networks.connected(state, a, b)


def plan_lab(state: DesiredState, lab: str, previous: LabPlan | None = None) -> LabPlan:
    """The lab for ``state``. With ``previous`` (the plan the lab was built from), every
    subnet, NIC and host that still exists keeps its index, hence its namespace and
    interface names."""
    naming.check_lab_name(lab)
    problems: list[str] = []

    def v4net(text: str, what: str) -> ipaddress.IPv4Network | None:
        net = ipaddress.ip_network(text)
        if net.version != 4:
            problems.append(f"{what}: {text} is IPv6; the lab builds IPv4 only")
            return None
        if net.overlaps(FORBIDDEN):
            problems.append(f"{what}: {text} overlaps {FORBIDDEN}, which the lab never uses")
            return None
        return net  # type: ignore[return-value]

    # bridges -----------------------------------------------------------------------------
    subnets: list[tuple[str, str, str, ipaddress.IPv4Network]] = []
    for vnet in state.virtualNetworks:
        for sub in vnet.subnets:
            net = v4net(sub.addressPrefix, f"subnet {vnet.name}/{sub.name}")
            if net is None:
                continue
            if net.num_addresses < 4:
                problems.append(f"subnet {vnet.name}/{sub.name}: {net} is too small for a gateway and a NIC")
                continue
            subnets.append((f"{vnet.name}/{sub.name}".lower(), vnet.name, sub.name, net))
    for i, (ka, _, _, na) in enumerate(subnets):
        for kb, _, _, nb in subnets[i + 1:]:
            if na.overlaps(nb):
                problems.append(f"subnets {ka} ({na}) and {kb} ({nb}) overlap: one fabric routes "
                                "every VNet, so lab subnets must not overlap, even across VNets")
    prev_b = {b.key: b.index for b in previous.bridges} if previous else {}
    b_idx = naming.allocate_indexes([k for k, *_ in subnets], prev_b)
    bridges = tuple(
        BridgePlan(key=k, vnet=v, subnet=s, index=b_idx[k], ifname=naming.bridge_ifname(b_idx[k]),
                   prefix=str(n), gateway=str(n.network_address + 1))
        for k, v, s, n in subnets)
    by_key = {b.key: b for b in bridges}

    # NICs --------------------------------------------------------------------------------
    prev_n = {n.name.lower(): n.index for n in previous.nics} if previous else {}
    n_idx = naming.allocate_indexes([n.name for n in state.networkInterfaces], prev_n)
    nics = []
    seen_addr: dict[str, str] = {}
    for nic in state.networkInterfaces:
        br = by_key.get(nic.subnet.lower())
        if br is None:
            problems.append(f"NIC {nic.name}: subnet {nic.subnet} is not in the lab")
            continue
        net = ipaddress.ip_network(br.prefix)
        addrs = []
        for a in nic.ipAddresses:
            ip = ipaddress.ip_address(a)
            if ip.version != 4:
                problems.append(f"NIC {nic.name}: {a} is IPv6; the lab builds IPv4 only")
                continue
            if ip not in net:
                problems.append(f"NIC {nic.name}: {a} is not in its subnet {net}")
            elif ip in (net.network_address, net.broadcast_address) or str(ip) == br.gateway:
                problems.append(f"NIC {nic.name}: {a} is the network, broadcast or gateway "
                                f"address ({br.gateway}) of {net}; Azure reserves it")
            if str(ip) in seen_addr:
                problems.append(f"NIC {nic.name}: {a} is also used by {seen_addr[str(ip)]}")
            seen_addr[str(ip)] = nic.name
            addrs.append(str(ip))
        if not addrs:
            continue
        i = n_idx[nic.name.lower()]
        nics.append(NicPlan(
            name=nic.name, index=i, netns=naming.nic_netns(lab, i),
            port=naming.nic_port_ifname(i), bridge=br.ifname, subnet=br.key, vnet=br.vnet,
            addresses=tuple(addrs), prefixlen=net.prefixlen, gateway=br.gateway))

    # hosts -------------------------------------------------------------------------------
    vnet_spaces: dict[str, tuple[str, ...]] = {}
    for vnet in state.virtualNetworks:
        vnet_spaces[vnet.name] = tuple(vnet.addressSpace)
    all_nets = [n for *_, n in subnets] + [
        ipaddress.ip_network(p) for sp in vnet_spaces.values() for p in sp
        if ipaddress.ip_network(p).version == 4]
    prev_h = {h.name.lower(): h.index for h in previous.hosts if h.kind == "external"} if previous else {}
    ext = state.lab.externalHosts
    h_idx = naming.allocate_indexes([h.name for h in ext], prev_h)
    hosts = []
    names = {n.name.lower() for n in state.networkInterfaces}
    if "platform" in names:
        problems.append("NIC platform: the lab names its platform host 'platform'; rename the NIC")
    for h in ext:
        ip = ipaddress.ip_address(h.address)
        if h.name.lower() in names:
            problems.append(f"external host {h.name}: a NIC has the same name")
        if ip.version != 4:
            problems.append(f"external host {h.name}: {ip} is IPv6; the lab builds IPv4 only")
            continue
        if ip in FORBIDDEN or ip == PLATFORM_ADDRESS or any(ip in n for n in all_nets):
            problems.append(f"external host {h.name}: {ip} must be outside every VNet, "
                            f"{FORBIDDEN} and {PLATFORM_ADDRESS}")
            continue
        if str(ip) in seen_addr:
            problems.append(f"external host {h.name}: {ip} is also used by {seen_addr[str(ip)]}")
        seen_addr[str(ip)] = h.name
        i = h_idx[h.name.lower()]
        hosts.append(HostPlan(name=h.name, kind="external", index=i,
                              netns=naming.host_netns(lab, i), port=naming.host_port_ifname(i),
                              address=str(ip)))
    hosts.append(HostPlan(name="platform", kind="platform", index=-1,
                          netns=naming.platform_netns(lab), port=naming.PLATFORM_PORT,
                          address=str(PLATFORM_ADDRESS)))

    # isolation between unpeered VNets ------------------------------------------------------
    vnames = [v.name for v in state.virtualNetworks]
    isolation = tuple((a, b) for a in vnames for b in vnames
                      if a.lower() != b.lower() and not _peered(state, a, b))

    # routes with next hop None between a NIC and an external host ---------------------------
    unrouted = []
    for nic_plan in nics:
        for host in hosts:
            if host.kind != "external":
                continue
            route = networks.route_for(state, state.nic(nic_plan.name).subnet,  # type: ignore[union-attr]
                                       ipaddress.ip_address(host.address))
            if route is not None and route.next_hop_type == "None":
                unrouted.append((nic_plan.name, host.name, f"no route: {route.describe()}"))

    if problems:
        raise LabPlanError(problems)
    return LabPlan(lab=lab, fabric=naming.fabric_netns(lab), bridges=bridges, nics=tuple(nics),
                   hosts=tuple(hosts), vnets=vnet_spaces, isolation=isolation,
                   unrouted=tuple(unrouted))
