"""Helpers shared by the compiler and tracer tests: policies, flows as packets, namespaces."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import random
import subprocess
from pathlib import Path
from typing import Iterator

from nsg_agent.compiler import HostPlacement
from nsg_agent.desired.model import DesiredState
from nsg_agent.desired.vocabulary import Access, Direction, LevelKind, Protocol
from nsg_agent.kernel.tracer import Packet
from nsg_agent.semantics.policy import (
    ANY_ADDRESS,
    ANY_PORT,
    AddressTerm,
    Flow,
    Level,
    NicPolicy,
    Policy,
    PortTerm,
    ResolvedRule,
)
from nsg_agent.semantics.resolver import evaluate, resolve

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
IS_ROOT = os.geteuid() == 0

# What th sport/dport read for protocols without ports: arbitrary bytes. The tracer is fed
# these so a compiled ruleset that depended on them would be caught.
JUNK_PORTS = (0, 7, 25, 80, 65535)


def policy_from_dict(doc: dict) -> Policy:
    return resolve(DesiredState.model_validate(doc))


def host_placement(policy: Policy) -> HostPlacement:
    """Each NIC on its own interface: the file's ``interface``, else eth<i>."""
    return HostPlacement({name: nic.interface or f"eth{i}"
                          for i, (name, nic) in enumerate(sorted(policy.nics.items()))})


def host_packet(nic: NicPolicy, ifname: str, flow: Flow, junk: int = 7) -> Packet:
    """The packet a host-mode NIC sends or receives for ``flow`` (first packet, ct new)."""
    if flow.icmp_type is not None:  # the type is the first byte of the transport header
        junk = flow.icmp_type << 8
    sport_local = flow.local_port if flow.local_port is not None else junk
    sport_remote = flow.remote_port if flow.remote_port is not None else junk
    if flow.direction is Direction.INBOUND:
        return Packet("input", str(flow.remote), str(flow.local), flow.protocol,
                      sport_remote, sport_local, iifname=ifname)
    return Packet("output", str(flow.local), str(flow.remote), flow.protocol,
                  sport_local, sport_remote, oifname=ifname)


def expected_fabric(policy: Policy, enforced: set[str], saddr: str, daddr: str, protocol: int,
                    sport: int | None, dport: int | None) -> bool:
    """Fabric verdict by the semantics engine: the sender's outbound (if the source is an
    enforced NIC) and then the receiver's inbound (if the destination is one) must allow."""
    src, dst = ipaddress.ip_address(saddr), ipaddress.ip_address(daddr)
    ports = protocol in (6, 17)
    # for ICMP the bytes th sport reads start with the type
    icmp_type = sport >> 8 if protocol in (1, 58) and sport is not None else None
    for nic in policy.nics.values():
        if nic.nic in enforced and src in nic.addresses:
            flow = Flow(Direction.OUTBOUND, protocol, src, dst,
                        sport if ports else None, dport if ports else None, icmp_type)
            if not evaluate(nic, flow).allowed:
                return False
    for nic in policy.nics.values():
        if nic.nic in enforced and dst in nic.addresses:
            flow = Flow(Direction.INBOUND, protocol, dst, src,
                        dport if ports else None, sport if ports else None, icmp_type)
            if not evaluate(nic, flow).allowed:
                return False
    return True


# --- a large synthetic policy (for load tests and measurements) --------------------------


def big_policy(rules: int = 1000, prefixes: int = 20, seed: int = 1, nics: int = 1) -> Policy:
    """A NIC NSG with ``rules`` inbound rules, each with ``prefixes`` random /24, /28 or /32
    sources anywhere in IPv4, alternating Allow/Deny, TCP/UDP/* in turn, one destination port
    or a short range; then AllowVnetInBound and DenyAllInBound. Deterministic from ``seed``."""
    rng = random.Random(seed)
    out: list[ResolvedRule] = []
    vnet = AddressTerm.of("VirtualNetwork", [ipaddress.ip_network("10.1.0.0/16"),
                                             ipaddress.ip_network("168.63.129.16/32")])
    for i in range(rules):
        nets = []
        for _ in range(prefixes):
            base = rng.randrange(0, 1 << 24) << 8
            plen = rng.choice((24, 28, 32))
            net = ipaddress.ip_network((base | (rng.randrange(256) if plen == 32 else 0), plen), strict=False)
            nets.append(net)
        lo = rng.randrange(1, 60000)
        ports = PortTerm(((lo, lo),)) if i % 3 else PortTerm(((lo, lo + rng.randrange(1, 50)),))
        out.append(ResolvedRule(
            nsg="big-nsg", name=f"rule{i:04d}", priority=100 + i, direction=Direction.INBOUND,
            access=Access.ALLOW if i % 2 == 0 else Access.DENY,
            protocol=(Protocol.TCP, Protocol.UDP, Protocol.ANY)[i % 3],
            source=AddressTerm.of(f"list{i}", nets), source_ports=ANY_PORT,
            destination=ANY_ADDRESS, destination_ports=ports))
    out += [
        ResolvedRule("big-nsg", "AllowVnetInBound", 65000, Direction.INBOUND, Access.ALLOW,
                     Protocol.ANY, vnet, ANY_PORT, vnet, ANY_PORT, default=True),
        ResolvedRule("big-nsg", "DenyAllInBound", 65500, Direction.INBOUND, Access.DENY,
                     Protocol.ANY, ANY_ADDRESS, ANY_PORT, ANY_ADDRESS, ANY_PORT, default=True),
    ]
    level = Level(LevelKind.NIC, "big-nsg", tuple(out))
    result = {}
    for n in range(nics):
        name = f"nic{n}"
        result[name] = NicPolicy(nic=name, vnet="vnet1", subnet="vnet1/s1",
                                 addresses=(ipaddress.ip_address(f"10.1.1.{4 + n}"),),
                                 interface=f"eth{n}", inbound=(level,), outbound=())
    return Policy(nics=result)


# --- throwaway network namespaces -------------------------------------------------------

_counter = itertools.count()


@contextlib.contextmanager
def throwaway_netns(tag: str = "t") -> Iterator[str]:
    """A fresh network namespace named nsgc-<tag><pid>-<n>, always deleted afterwards."""
    from nsg_agent.testing import Namespaces

    with Namespaces("nsgc") as spaces:
        yield spaces.add(f"nsgc-{tag}{os.getpid()}-{next(_counter)}", lo_up=False)


def nft_in_netns(netns: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


LIBNFT_LOADER = r"""
import json, sys, nftables
nft = nftables.Nftables()
nft.set_json_output(True)
doc = json.load(open(sys.argv[1]))
rc, out, err = nft.json_cmd(doc)
if rc != 0:
    sys.stderr.write(err)
    sys.exit(1)
rc, out, err = nft.cmd("list table inet nsg_agent")
print(out)
"""


def load_with_libnftables(netns: str, json_path: Path) -> subprocess.CompletedProcess:
    """Apply a compiled ruleset in ``netns`` through libnftables' JSON API (a subprocess in
    the namespace) and return the process; stdout is the listed table (JSON)."""
    return subprocess.run(["ip", "netns", "exec", netns, str(VENV_PYTHON), "-c", LIBNFT_LOADER,
                           str(json_path)], capture_output=True, text=True, timeout=300)
