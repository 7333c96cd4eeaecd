"""Will this policy lock me out? Checks made before the kernel changes (pure, plus one
netlink read in ``interface_addresses``).

Host mode enforces each NIC of the file on the interface it names. A typo there (a wrong
address, a wrong interface) applies cleanly, and then the rules that name the NIC's
addresses (ASGs, VirtualNetwork, literal prefixes) miss the packets that really arrive: every
connection times out, the management session's included. So before ``apply`` (and in
``plan``) the agent checks:

- every NIC mapped to an interface: the interface exists and carries the NIC's addresses
  (else: which interface does carry them, if any);
- interfaces that carry an address of a file NIC but are not mapped to it (left unfiltered,
  or filtered as another NIC);
- the management sessions (``SSH_CONNECTION`` of this process, and established TCP to port
  22 in conntrack): a new connection of the same class (same local address and port, same
  client) that the current policy allows (or nothing is enforced) and the new one denies is a
  lock-out. ``plan`` warns; ``apply`` refuses without ``--force``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Iterable

from nsg_agent.desired.vocabulary import Direction
from nsg_agent.netaddr import IPAddress
from nsg_agent.semantics.policy import Flow, NicPolicy, Policy
from nsg_agent.semantics.resolver import evaluate

MANAGEMENT_PORTS = (22,)


@dataclass(frozen=True)
class Session:
    """A management connection seen from this host: the client and our end."""

    client: IPAddress
    client_port: int
    local: IPAddress
    local_port: int
    source: str  # "SSH_CONNECTION" or "conntrack"

    def text(self) -> str:
        return f"{self.client}:{self.client_port} -> {self.local}:{self.local_port} ({self.source})"


@dataclass(frozen=True)
class Finding:
    kind: str  # "missing-interface", "address-mismatch", "unmapped-address", "lockout"
    message: str
    nic: str | None = None
    interface: str | None = None

    def as_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "nic": self.nic, "interface": self.interface}


@dataclass
class Coverage:
    findings: list[Finding] = field(default_factory=list)

    @property
    def lockouts(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "lockout"]

    def as_dict(self) -> dict:
        return {"findings": [f.as_dict() for f in self.findings], "lockout": bool(self.lockouts)}


def ssh_session(environ: dict[str, str] | None = None) -> Session | None:
    """The SSH session this command runs in: SSH_CONNECTION is
    "<client ip> <client port> <server ip> <server port>"."""
    text = (environ if environ is not None else os.environ).get("SSH_CONNECTION", "")
    parts = text.split()
    if len(parts) != 4:
        return None
    try:
        return Session(ipaddress.ip_address(parts[0].split("%")[0]), int(parts[1]),
                       ipaddress.ip_address(parts[2].split("%")[0]), int(parts[3]), "SSH_CONNECTION")
    except ValueError:
        return None


def conntrack_sessions(entries: Iterable, local: set[IPAddress]) -> list[Session]:
    """Established TCP connections to a management port of this host (conntrack's original
    tuple: client -> us)."""
    out = []
    for e in entries:
        if e.protocol == 6 and e.destination in local and e.dport in MANAGEMENT_PORTS and e.sport is not None:
            out.append(Session(e.source, e.sport, e.destination, e.dport, "conntrack"))
    return out


def _owner(interfaces: dict[str, str], links: dict[str, list[IPAddress]],
           address: IPAddress) -> tuple[str | None, str | None]:
    """(interface carrying ``address``, NIC mapped to that interface)."""
    by_if = {ifname: nic for nic, ifname in interfaces.items()}
    for ifname, addrs in sorted(links.items()):
        if address in addrs:
            return ifname, by_if.get(ifname)
    return None, None


def check(new: Policy, interfaces: dict[str, str], links: dict[str, list[IPAddress]],
          sessions: Iterable[Session] = (), old: Policy | None = None,
          old_interfaces: dict[str, str] | None = None) -> Coverage:
    """Coverage of ``new`` placed by ``interfaces`` (NIC -> ifname) on a host whose links
    carry ``links`` (ifname -> addresses); ``old`` is what is enforced now (None: nothing)."""
    cov = Coverage()
    mapped_addrs: set[IPAddress] = set()
    for nic_name, ifname in sorted(interfaces.items()):
        nic = new.nics[nic_name]
        mapped_addrs.update(nic.addresses)
        if ifname not in links:
            cov.findings.append(Finding("missing-interface", (
                f"NIC {nic_name}: interface {ifname} does not exist on this host; its rules "
                "will apply when it appears"), nic_name, ifname))
            continue
        for addr in nic.addresses:
            if addr in links[ifname]:
                continue
            carrier, _ = _owner(interfaces, links, addr)
            where = f"{carrier} carries it" if carrier else "no interface carries it"
            have = ", ".join(str(a) for a in links[ifname]) or "no address"
            cov.findings.append(Finding("address-mismatch", (
                f"NIC {nic_name}: {addr} is not on {ifname} ({have}); {where}. Rules naming "
                f"the NIC's addresses will miss the traffic {ifname} really gets"), nic_name, ifname))
    file_addrs = {a: n.nic for n in new.nics.values() for a in n.addresses}
    for ifname, addrs in sorted(links.items()):
        for addr in addrs:
            owner = file_addrs.get(addr)
            if owner is not None and interfaces.get(owner) != ifname:
                mapped = interfaces.get(owner)
                cov.findings.append(Finding("unmapped-address", (
                    f"{ifname} carries {addr} of NIC {owner}, but NIC {owner} is "
                    + (f"mapped to {mapped}" if mapped
                       else "not mapped to any interface (its traffic is not filtered)")),
                    owner, ifname))
    for s in sessions:
        verdict_new = _session_verdict(new, interfaces, links, s)
        if verdict_new is None or verdict_new[0]:
            continue
        verdict_old = _session_verdict(old, old_interfaces or interfaces, links, s) if old is not None else None
        if verdict_old is not None and not verdict_old[0]:
            continue  # already denied now: the new policy takes nothing away
        cov.findings.append(Finding("lockout", (
            f"management session {s.text()}: a new connection like it would be denied by "
            f"{verdict_new[1]} on NIC {verdict_new[2]}" + ("" if old is None else
                                                            " (the current policy allows it)")),
            verdict_new[2], None))
    return cov


def _session_verdict(policy: Policy | None, interfaces: dict[str, str], links: dict[str, list[IPAddress]],
                     s: Session) -> tuple[bool, str, str] | None:
    """(allowed, deciding rule, NIC) for a new connection of the session's class, or None
    when no NIC of ``policy`` filters the interface it arrives on."""
    if policy is None:
        return None
    _, nic_name = _owner(interfaces, links, s.local)
    if nic_name is None:
        return None
    nic: NicPolicy = policy.nics[nic_name]
    v = evaluate(nic, Flow(Direction.INBOUND, 6, s.local, s.client, s.local_port, s.client_port))
    d = v.deciding
    rule = f"{d.nsg or 'platform'}: {d.rule.log_name}" if d is not None and d.rule is not None else "no rule"
    return v.allowed, rule, nic_name


# --- the one netlink read -------------------------------------------------------------------


def interface_addresses(runner) -> dict[str, list[IPAddress]]:
    """ifname -> addresses of every link in the runner's namespace (pyroute2)."""
    return runner.call(_read_links)


def _read_links() -> dict[str, list[IPAddress]]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        out: dict[str, list[IPAddress]] = {name: [] for name in names.values()}
        for a in ipr.get_addr():
            name = names.get(a["index"])
            addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")  # IFA_LOCAL: ours on p2p links
            if name is not None and addr:
                out[name].append(ipaddress.ip_address(addr.split("%")[0]))
    return out
