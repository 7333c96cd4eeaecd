"""The lab's own nftables tables in the fabric (pure: libnftables JSON commands).

These emulate Azure's network, not NSGs, and are owned by the lab, never by the agent (whose
table is ``inet nsg_agent``):

``bridge nsg_lab`` (prerouting, priority -300): anti-spoofing. Azure drops packets whose
  source address is not the sending NIC's IP; here a frame entering the fabric from NIC port
  ``nsgp<i>`` carrying IPv4 from any other source is dropped. ARP passes. No ``ct`` in this
  family (no bridge conntrack on this kernel, see design.md), only stateless matches.

``inet nsg_lab``:
  - chain ``isolate`` (forward, priority -10): drops traffic between VNets that are not
    peered (Azure has no route between them), one rule per ordered pair; traffic between a
    NIC and an external host whose effective route has next hop None (nsg_agent.desired.networks: the
    default None routes such as 10.0.0.0/8, or a user route), both ways; and IPv6 (the lab
    is IPv4 only).
  - chain ``antispoof`` (prerouting, priority -300): a routed external/platform host may only
    send from its own address.

Both are replaced atomically as a whole (add, delete, re-add in one transaction), as the
agent's table is.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from nsg_agent.lab.topology import LabPlan

TABLE = "nsg_lab"
# What the fabric backend that writes these tables may touch (nsg_agent.kernel.backend owns=).
LAB_TABLES = (("bridge", TABLE), ("inet", TABLE))


def _prefix(p: str) -> Any:
    net = ipaddress.ip_network(p)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _set(prefixes: list[str]) -> Any:
    return {"set": [_prefix(p) for p in prefixes]}


def _match(left: Any, right: Any, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _payload(proto: str, fld: str) -> dict:
    return {"payload": {"protocol": proto, "field": fld}}


def _replace_table(family: str) -> list[dict]:
    t = {"family": family, "name": TABLE}
    return [{"add": {"table": dict(t)}}, {"delete": {"table": dict(t)}}, {"add": {"table": dict(t)}}]


def _chain(family: str, name: str, hook: str, prio: int) -> dict:
    return {"add": {"chain": {"family": family, "table": TABLE, "name": name, "type": "filter",
                              "hook": hook, "prio": prio, "policy": "accept"}}}


def _rule(family: str, chain: str, expr: list, comment: str) -> dict:
    return {"add": {"rule": {"family": family, "table": TABLE, "chain": chain,
                             "expr": expr, "comment": comment[:120]}}}


def lab_commands(plan: LabPlan) -> list[dict]:
    """The commands that (re)create both lab tables for ``plan``, deterministic."""
    cmds: list[dict] = []
    # bridge family: anti-spoofing on NIC ports
    cmds += _replace_table("bridge")
    cmds.append(_chain("bridge", "antispoof", "prerouting", -300))
    for nic in sorted(plan.nics, key=lambda n: n.index):
        cmds.append(_rule("bridge", "antispoof", [
            _match(_meta("iifname"), nic.port),
            _match(_payload("ether", "type"), "ip"),
            _match(_payload("ip", "saddr"), _set(list(nic.addresses)), "!="),
            {"counter": None}, {"drop": None}],
            f"antispoof NIC {nic.name}"))
        cmds.append(_rule("bridge", "antispoof", [
            _match(_meta("iifname"), nic.port),
            _match(_payload("ether", "type"), "ip6"),
            {"counter": None}, {"drop": None}],
            f"ipv6 from NIC {nic.name}: the lab is IPv4 only"))
    # inet family: routed hosts' anti-spoofing, VNet isolation
    cmds += _replace_table("inet")
    cmds.append(_chain("inet", "antispoof", "prerouting", -300))
    for host in plan.hosts:
        cmds.append(_rule("inet", "antispoof", [
            _match(_meta("iifname"), host.port),
            _match(_payload("ip", "saddr"), host.address, "!="),
            {"counter": None}, {"drop": None}],
            f"antispoof host {host.name}"))
    cmds.append(_chain("inet", "isolate", "forward", -10))
    cmds.append(_rule("inet", "isolate", [
        _match(_meta("nfproto"), "ipv6"), {"counter": None}, {"drop": None}],
        "the lab is IPv4 only"))
    for a, b in plan.isolation:
        sa = [p for p in plan.vnets.get(a, ()) if ipaddress.ip_network(p).version == 4]
        sb = [p for p in plan.vnets.get(b, ()) if ipaddress.ip_network(p).version == 4]
        if not sa or not sb:
            continue
        cmds.append(_rule("inet", "isolate", [
            _match(_payload("ip", "saddr"), _set(sa)),
            _match(_payload("ip", "daddr"), _set(sb)),
            {"counter": None}, {"drop": None}],
            f"no route: VNet {a} is not peered with {b}"))
    for nic_name, host_name, why in plan.unrouted:
        nic, host = plan.nic(nic_name), plan.host(host_name)
        if nic is None or host is None:
            continue
        for src, dst in ((_set(list(nic.addresses)), host.address), (host.address, _set(list(nic.addresses)))):
            cmds.append(_rule("inet", "isolate", [
                _match(_payload("ip", "saddr"), src), _match(_payload("ip", "daddr"), dst),
                {"counter": None}, {"drop": None}], f"{nic_name} <-> {host_name}: {why}"))
    return cmds


def delete_commands() -> list[dict]:
    """Remove both lab tables (idempotent: add first so delete cannot fail)."""
    out = []
    for fam in ("bridge", "inet"):
        t = {"family": fam, "name": TABLE}
        out += [{"add": {"table": dict(t)}}, {"delete": {"table": dict(t)}}]
    return out
