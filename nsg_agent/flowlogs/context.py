"""The collector's view of what is enforced: the commit's rule index and summary, plus the
NICs' interfaces (host mode) or addresses and MACs (lab fabric). Built by the CLI from the
status store; this module holds the pure mapping and the interface read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nsg_agent.flowlogs.collector import FlowContext, NicInfo
from nsg_agent.flowlogs.format import NO_MAC, normalize_mac

if TYPE_CHECKING:
    from nsg_agent.compiler.results import RuleIndex, Summary


def context_from(rule_index: "RuleIndex", summary: "Summary", interfaces: dict[str, dict] | None = None,
                 macs: dict[str, str] | None = None) -> FlowContext:
    """``summary.nics`` names each NIC's interface (host) or addresses (fabric);
    ``interfaces``: ifname -> {"index", "mac", "addresses"} as :func:`read_interfaces` gives."""
    nics = {}
    interfaces = interfaces or {}
    macs = {k.lower(): v for k, v in (macs or {}).items()}
    for name, info in summary.nics.items():
        addresses = set(info.addresses or ())
        ifindexes: set[int] = set()
        mac = macs.get(name.lower(), NO_MAC)
        link = interfaces.get(info.interface or "")
        if link:
            addresses |= set(link.get("addresses") or ())
            ifindexes.add(int(link["index"]))
            mac = link.get("mac") or mac
        nics[name] = NicInfo(name, frozenset(addresses), normalize_mac(mac), frozenset(ifindexes))
    return FlowContext(rule_index, nics)


def read_interfaces() -> dict[str, dict[str, Any]]:
    """ifname -> {"index", "mac", "addresses"} of the calling thread's namespace (pyroute2)."""
    from pyroute2 import IPRoute

    out: dict[str, dict[str, Any]] = {}
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            out[name] = {"index": link["index"], "mac": link.get_attr("IFLA_ADDRESS") or "", "addresses": []}
        by_index = {v["index"]: v for v in out.values()}
        for addr in ipr.get_addr():
            link = by_index.get(addr["index"])
            if link is not None and addr.get_attr("IFA_ADDRESS"):
                link["addresses"].append(addr.get_attr("IFA_ADDRESS"))
    return out
