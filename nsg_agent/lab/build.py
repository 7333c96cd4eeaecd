"""Building, changing and removing the lab's namespaces, bridges and veths (pyroute2).

``converge(plan, previous)`` makes the kernel match ``plan``: from nothing it builds the whole
lab; given the plan the lab was built from it changes only what differs (a NIC added, removed,
moved to another subnet or readdressed; a subnet or host added, removed or readdressed), so
existing namespaces keep their identity. ``destroy(lab)`` removes everything, using the
state file when there is one and otherwise every namespace whose name belongs to the lab.

Nothing here touches the root namespace: every link is created inside the fabric namespace
(the NIC end of a veth is created directly in its NIC namespace), and no namespace is linked
to the root namespace.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns

from nsg_agent.errors import OperationFailed
from nsg_agent.host import netns as host_netns
from nsg_agent.lab import naming
from nsg_agent.lab.topology import BridgePlan, HostPlan, LabPlan, NicPlan

SCOPE_LINK = 253

NS_SYSCTLS = {
    "net/ipv6/conf/all/disable_ipv6": "1",  # the lab is IPv4 only: no RS/DAD noise
    "net/ipv6/conf/default/disable_ipv6": "1",
}
FABRIC_SYSCTLS = {
    **NS_SYSCTLS,
    "net/ipv4/ip_forward": "1",
    # br_netfilter: bridged IPv4 (intra-subnet traffic) traverses the inet hooks, with conntrack
    "net/bridge/bridge-nf-call-iptables": "1",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
}


class LabBuildError(OperationFailed, RuntimeError):
    pass


@dataclass
class TopologyChanges:
    """What one ``converge`` call did (human-readable items, in order)."""

    fabric: str
    built: bool = False  # the fabric was created (a fresh lab)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.built or self.added or self.removed or self.changed)

    def as_dict(self) -> dict[str, Any]:
        return {"fabric": self.fabric, "built": self.built, "added": self.added,
                "removed": self.removed, "changed": self.changed}


# --- state file -------------------------------------------------------------------------------


def read_state(lab: str, state_dir: Path = naming.STATE_DIR) -> dict[str, Any] | None:
    try:
        return json.loads(naming.state_file(lab, state_dir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a torn or foreign file: treated as no state (down falls back to names)


def write_state(lab: str, data: dict[str, Any], state_dir: Path = naming.STATE_DIR) -> None:
    path = naming.state_file(lab, state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def previous_plan(lab: str, state_dir: Path = naming.STATE_DIR) -> LabPlan | None:
    data = read_state(lab, state_dir)
    if not data or "plan" not in data:
        return None
    try:
        return LabPlan.from_dict(data["plan"])
    except (KeyError, TypeError):
        return None


def lab_namespaces(lab: str) -> list[str]:
    """Every existing namespace whose name belongs to lab ``lab``."""
    pat = naming.lab_netns_pattern(lab)
    return [n for n in host_netns.list_netns() if pat.match(n)]


def all_labs(state_dir: Path = naming.STATE_DIR) -> list[str]:
    """Labs known by a state file or by a namespace name."""
    labs = {naming.lab_of_netns(n) for n in host_netns.list_netns()} - {None}
    if state_dir.is_dir():
        labs |= {p.stem for p in state_dir.glob("*.json")}
    return sorted(labs)  # type: ignore[arg-type]


# --- namespaces --------------------------------------------------------------------------------


def _create_netns(name: str, sysctls: dict[str, str]) -> None:
    if host_netns.netns_inode(name) is not None:
        raise LabBuildError(f"network namespace {name} already exists (run 'nsg-agent lab down')")
    netns.create(name)
    host_netns.write_sysctls(name, sysctls)
    with IPRoute(netns=name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def remove_netns(name: str) -> bool:
    """Remove a namespace, first ending the processes still running in it (those hold it
    alive, and with it its veths). Returns whether it existed."""
    pids = host_netns.pids_in(name)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 1.0
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
            if pids:
                time.sleep(0.02)
        if not pids:
            break
    if host_netns.netns_inode(name) is None:
        return False
    try:
        netns.remove(name)
    except FileNotFoundError:
        return False
    return True


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabBuildError(f"interface {ifname} is missing")
    return found[0]


# --- pieces -------------------------------------------------------------------------------------


def _add_bridge(fab: IPRoute, b: BridgePlan) -> None:
    fab.link("add", ifname=b.ifname, kind="bridge", br_stp_state=0, br_forward_delay=0,
             br_nf_call_iptables=1)
    idx = _index(fab, b.ifname)
    fab.addr("add", index=idx, address=b.gateway, prefixlen=b.prefixlen)
    fab.link("set", index=idx, state="up")


def _readdress_bridge(fab: IPRoute, b: BridgePlan) -> None:
    idx = _index(fab, b.ifname)
    fab.flush_addr(index=idx)
    fab.addr("add", index=idx, address=b.gateway, prefixlen=b.prefixlen)


def _add_endpoint(fab: IPRoute, name: str, port: str, transit: str) -> None:
    """A namespace ``name`` with a veth whose inner end is ``eth0`` and outer end ``port``
    in the fabric (created inside the fabric, its peer created straight in ``name``)."""
    _create_netns(name, NS_SYSCTLS)
    fab.link("add", ifname=port, kind="veth", peer={"ifname": transit, "net_ns_fd": name})
    with IPRoute(netns=name) as ipr:
        ipr.link("set", index=_index(ipr, transit), ifname=naming.INNER_IF)


def _address_nic(nic: NicPlan, replace: bool) -> None:
    with IPRoute(netns=nic.netns) as ipr:
        idx = _index(ipr, naming.INNER_IF)
        if replace:
            ipr.flush_routes(oif=idx, family=2, table=254)
            ipr.flush_addr(index=idx)
        for a in nic.addresses:
            ipr.addr("add", index=idx, address=a, prefixlen=nic.prefixlen)
        ipr.link("set", index=idx, state="up")
        ipr.route("replace", dst="0.0.0.0/0", gateway=nic.gateway, oif=idx)


def _add_nic(fab: IPRoute, nic: NicPlan) -> None:
    _add_endpoint(fab, nic.netns, nic.port, naming.transit_ifname(str(nic.index)))
    _address_nic(nic, replace=False)
    idx = _index(fab, nic.port)
    fab.link("set", index=idx, master=_index(fab, nic.bridge))
    fab.link("set", index=idx, state="up")


def _address_host(fab: IPRoute, lab_fabric: str, h: HostPlan, old: HostPlan | None) -> None:
    with IPRoute(netns=h.netns) as ipr:
        idx = _index(ipr, naming.INNER_IF)
        if old is not None:
            ipr.flush_routes(oif=idx, family=2, table=254)
            ipr.flush_addr(index=idx)
        ipr.addr("add", index=idx, address=h.address, prefixlen=32)
        ipr.link("set", index=idx, state="up")
        ipr.route("replace", dst="0.0.0.0/0", oif=idx, scope=SCOPE_LINK)
    pidx = _index(fab, h.port)
    if old is not None:
        try:
            fab.route("del", dst=f"{old.address}/32", oif=pidx)
        except Exception:  # already gone with the address change
            pass
    fab.route("replace", dst=f"{h.address}/32", oif=pidx, scope=SCOPE_LINK)


def _add_host(fab: IPRoute, lab_fabric: str, h: HostPlan) -> None:
    tag = "pl" if h.kind == "platform" else f"h{h.index}"
    _add_endpoint(fab, h.netns, h.port, naming.transit_ifname(tag))
    pidx = _index(fab, h.port)
    fab.link("set", index=pidx, state="up")
    # The host ARPs for every destination on its /32 link; the fabric answers for what it routes.
    host_netns.write_sysctls(lab_fabric, {f"net/ipv4/conf/{h.port}/proxy_arp": "1"})
    _address_host(fab, lab_fabric, h, None)


# --- converge / destroy ---------------------------------------------------------------------------


def converge(plan: LabPlan, previous: LabPlan | None) -> TopologyChanges:
    """Make the lab's namespaces, bridges, veths, addresses and routes match ``plan``.

    ``previous`` is what the lab was built from (None for a fresh lab). Items recorded there
    whose namespace has disappeared are rebuilt. If the fabric itself is missing, every
    leftover namespace of the lab is removed and the lab is built from scratch.
    """
    ch = TopologyChanges(fabric=plan.fabric)
    if previous is not None and host_netns.netns_inode(previous.fabric) is None:
        previous = None
    if previous is None:
        for name in lab_namespaces(plan.lab):  # leftovers of a crash: start clean
            remove_netns(name)
        _create_netns(plan.fabric, FABRIC_SYSCTLS)
        ch.built = True
        prev_b: dict[str, BridgePlan] = {}
        prev_n: dict[str, NicPlan] = {}
        prev_h: dict[str, HostPlan] = {}
    else:
        prev_b = {b.key: b for b in previous.bridges}
        prev_n = {n.name.lower(): n for n in previous.nics if host_netns.netns_inode(n.netns)}
        prev_h = {h.name.lower(): h for h in previous.hosts if host_netns.netns_inode(h.netns)}

    with IPRoute(netns=plan.fabric) as fab:
        have_links = {link.get("ifname") for link in fab.get_links()}
        # bridges first (NICs attach to them)
        for b in plan.bridges:
            old = prev_b.get(b.key)
            if old is None or b.ifname not in have_links:
                if b.ifname in have_links:
                    fab.link("del", index=_index(fab, b.ifname))
                _add_bridge(fab, b)
                ch.added.append(f"subnet {b.vnet}/{b.subnet} ({b.ifname}, gateway {b.gateway})")
            elif (old.prefix, old.gateway) != (b.prefix, b.gateway):
                _readdress_bridge(fab, b)
                ch.changed.append(f"subnet {b.vnet}/{b.subnet}: {old.prefix} -> {b.prefix}")
        # NICs
        want_n = {n.name.lower(): n for n in plan.nics}
        for key, old in prev_n.items():
            if key not in want_n or want_n[key].index != old.index:
                remove_netns(old.netns)
                ch.removed.append(f"NIC {old.name} ({old.netns})")
        for n in plan.nics:
            old = prev_n.get(n.name.lower())
            if old is None or old.index != n.index:
                if n.port in {link.get("ifname") for link in fab.get_links()}:
                    fab.link("del", index=_index(fab, n.port))  # its namespace vanished
                _add_nic(fab, n)
                ch.added.append(f"NIC {n.name} ({n.netns}, {', '.join(n.addresses)} on {n.bridge})")
                continue
            if old.bridge != n.bridge:
                fab.link("set", index=_index(fab, n.port), master=_index(fab, n.bridge))
                ch.changed.append(f"NIC {n.name}: moved {old.subnet} -> {n.subnet}")
            if (old.addresses, old.prefixlen, old.gateway) != (n.addresses, n.prefixlen, n.gateway):
                _address_nic(n, replace=True)
                ch.changed.append(f"NIC {n.name}: addresses {', '.join(old.addresses)} -> "
                                  f"{', '.join(n.addresses)}")
        # hosts
        want_h = {h.name.lower(): h for h in plan.hosts}
        for key, old in prev_h.items():
            if key not in want_h or (want_h[key].index, want_h[key].kind) != (old.index, old.kind):
                remove_netns(old.netns)
                ch.removed.append(f"host {old.name} ({old.netns})")
        for h in plan.hosts:
            old = prev_h.get(h.name.lower())
            if old is None or (old.index, old.kind) != (h.index, h.kind):
                if h.port in {link.get("ifname") for link in fab.get_links()}:
                    fab.link("del", index=_index(fab, h.port))
                _add_host(fab, plan.fabric, h)
                ch.added.append(f"host {h.name} ({h.netns}, {h.address})")
            elif old.address != h.address:
                _address_host(fab, plan.fabric, h, old)
                ch.changed.append(f"host {h.name}: {old.address} -> {h.address}")
        # bridges no longer wanted (their ports are gone or moved by now)
        want_b = {b.key for b in plan.bridges}
        for key, old in prev_b.items():
            if key not in want_b and old.ifname in {link.get("ifname") for link in fab.get_links()}:
                fab.link("del", index=_index(fab, old.ifname))
                ch.removed.append(f"subnet {old.vnet}/{old.subnet} ({old.ifname})")
    return ch


def destroy(lab: str, state_dir: Path = naming.STATE_DIR) -> list[str]:
    """Remove every namespace of the lab (and so every veth and bridge in them) and its
    state file. Idempotent; works without a state file (after a crash). Returns the
    namespaces removed."""
    names: list[str] = []
    plan = previous_plan(lab, state_dir)
    if plan is not None:
        names += [n for n in plan.namespaces()]
    names += [n for n in lab_namespaces(lab) if n not in names]
    # the fabric last: NIC namespaces go first so nothing keeps using a dying fabric
    fabric = naming.fabric_netns(lab)
    names = [n for n in names if n != fabric] + [fabric]
    removed = [n for n in names if remove_netns(n)]
    try:
        naming.state_file(lab, state_dir).unlink()
    except FileNotFoundError:
        pass
    return removed
