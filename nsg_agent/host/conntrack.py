"""flushConnection: cut live flows that a new policy denies (conntrack over netlink).

nftables only judges the first packet of a connection (``ct state established,related
accept`` comes first), so a rule change leaves existing flows alive: that is Azure's default.
When an NSG of a NIC sets ``flushConnection: true``, after each apply the agent lists the
conntrack table of the target namespace (pyroute2 ``Conntrack``, ctnetlink), maps each entry
to the NIC it belongs to, re-evaluates it with the semantics engine and deletes the entries
the NEW policy denies. The next packet of such a flow is then a "new" packet again, meets
the rules and is dropped.

Mapping an entry (host mode): the entry's *original* tuple is the direction the flow was
opened in. If its source is one of the NIC's IP addresses, the flow is outbound from that
NIC (local = source); if its destination is, it is inbound (local = destination). A flow
between two local NICs is checked for both and cut if either side denies it.

The pure part (:func:`denied_entries`) works on plain :class:`CtFlow` values and is unit
tested; :func:`flush_denied` does the netlink I/O inside the namespace worker thread.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Iterable

from nsg_agent.desired.vocabulary import Direction
from nsg_agent.host.netns import NetnsRunner
from nsg_agent.netaddr import IPAddress
from nsg_agent.semantics.policy import Flow, NicPolicy, Policy
from nsg_agent.semantics.resolver import evaluate

PORT_PROTOCOLS = (6, 17, 132, 33)


@dataclass(frozen=True)
class CtFlow:
    """The original tuple of one conntrack entry."""

    family: int
    protocol: int
    source: IPAddress
    destination: IPAddress
    sport: int | None = None
    dport: int | None = None
    handle: Any = None  # the library's entry object, passed back to delete


@dataclass(frozen=True)
class Cut:
    flow: CtFlow
    nic: str
    direction: Direction
    deciding: str  # "<nsg>: <rule log name>"

    def as_log(self) -> dict:
        return {"nic": self.nic, "direction": self.direction.value, "protocol": self.flow.protocol,
                "source": str(self.flow.source), "sport": self.flow.sport,
                "destination": str(self.flow.destination), "dport": self.flow.dport,
                "rule": self.deciding}


def flows_for(nic: NicPolicy, ct: CtFlow) -> list[Flow]:
    """The NIC-relative flows an entry represents for ``nic`` (none if not its traffic)."""
    out = []
    if ct.source in nic.addresses:
        out.append(Flow(Direction.OUTBOUND, ct.protocol, ct.source, ct.destination, ct.sport, ct.dport))
    if ct.destination in nic.addresses:
        out.append(Flow(Direction.INBOUND, ct.protocol, ct.destination, ct.source, ct.dport, ct.sport))
    return out


def denied_entries(policy: Policy, entries: Iterable[CtFlow], only_flush: bool = True) -> list[Cut]:
    """Entries that the policy denies, considering only NICs with flushConnection (or every
    NIC, with ``only_flush=False``: what a plan reports as revoked)."""
    nics = [n for n in policy.nics.values() if n.flush_connection or not only_flush]
    cuts: list[Cut] = []
    if not nics:
        return cuts
    for ct in entries:
        for nic in nics:
            decided = None
            for flow in flows_for(nic, ct):
                verdict = evaluate(nic, flow)
                if not verdict.allowed:
                    d = verdict.deciding
                    rule = d.rule.log_name if d and d.rule else "?"
                    decided = Cut(ct, nic.nic, flow.direction, f"{(d.nsg if d else None) or 'platform'}: {rule}")
                    break
            if decided:
                cuts.append(decided)
                break
    return cuts


# --- netlink ------------------------------------------------------------------------------


def _to_ctflow(entry: Any) -> CtFlow | None:
    t = entry.tuple_orig
    try:
        src = ipaddress.ip_address(t.saddr)
        dst = ipaddress.ip_address(t.daddr)
    except (TypeError, ValueError):
        return None
    ports = t.proto in PORT_PROTOCOLS
    return CtFlow(t.family, int(t.proto), src, dst,
                  int(t.sport) if ports and t.sport is not None else None,
                  int(t.dport) if ports and t.dport is not None else None, handle=entry)


CONNTRACK_COUNT = "/proc/sys/net/netfilter/nf_conntrack_count"


def _count() -> int | None:
    """The calling thread's namespace's conntrack entries (a per-namespace sysctl), or None."""
    try:
        with open(CONNTRACK_COUNT) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _list_entries(proto: int | None = None, dport: int | None = None) -> list[CtFlow]:
    # A dump walks the kernel's whole conntrack table, every namespace's entries (~10 ms of
    # CPU per family, measured with the table empty): a namespace that tracks no flow at all
    # is answered without one.
    if _count() == 0:
        return []
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    out: list[CtFlow] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        ct = Conntrack(nfgen_family=family)
        # proto/dport: filtered in the kernel (CTA_FILTER, Linux 5.8+), so a busy table of
        # tens of thousands of flows costs nothing when only SSH sessions are wanted
        match = (NFCTAttrTuple(family=family, proto=proto, dport=dport)
                 if proto is not None else None)
        try:
            for entry in ct.dump_entries(tuple_orig=match):
                flow = _to_ctflow(entry)
                if flow is not None:
                    out.append(flow)
        finally:
            ct.close()
    return out


def _delete(flows: list[CtFlow]) -> int:
    from pyroute2 import Conntrack
    from pyroute2.netlink.exceptions import NetlinkError

    deleted = 0
    by_family: dict[int, list[CtFlow]] = {}
    for f in flows:
        by_family.setdefault(f.family, []).append(f)
    for family, items in by_family.items():
        ct = Conntrack(nfgen_family=family)
        try:
            for f in items:
                try:
                    ct.delete(f.handle)
                    deleted += 1
                except NetlinkError as e:
                    if e.code != 2:  # ENOENT: the flow ended meanwhile
                        raise
        finally:
            ct.close()
    return deleted


def list_entries(runner: NetnsRunner, proto: int | None = None, dport: int | None = None) -> list[CtFlow]:
    """The conntrack entries (IPv4 and IPv6) of the runner's namespace: every one, or those
    of one protocol and destination port (filtered by the kernel)."""
    return runner.call(_list_entries, proto, dport)


def flush_denied(runner: NetnsRunner, policy: Policy) -> list[Cut]:
    """Delete the conntrack entries of live flows that ``policy`` denies (flushConnection
    NICs only) and return what was cut."""
    if not any(n.flush_connection for n in policy.nics.values()):
        return []
    cuts = denied_entries(policy, list_entries(runner))
    if cuts:
        runner.call(_delete, [c.flow for c in cuts])
    return cuts
