"""Where the compiled table is enforced: on the NICs' own host, or in the lab's fabric."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class HostPlacement:
    """Host mode: NIC name -> local Linux interface name.

    Inbound is filtered in the ``input`` hook by ``iifname``, outbound in ``output`` by
    ``oifname``. NICs without an interface here are not enforced.
    """

    interfaces: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FabricPlacement:
    """Lab mode: one ``forward`` hook in the fabric namespace sees every NIC's traffic
    (bridged with br_netfilter, or routed); NICs are identified by their IP addresses.

    ``nics`` = None enforces every NIC of the policy, else only those named.
    """

    nics: tuple[str, ...] | None = None
