"""Azure's words as Python values: directions, access, protocols and the protocol facts the
semantics depend on. Shared by the desired-state model (what a user may write) and the
semantics engine (what it means)."""

from __future__ import annotations

import enum

PORT_MIN, PORT_MAX = 0, 65535


class Direction(str, enum.Enum):
    INBOUND = "Inbound"
    OUTBOUND = "Outbound"


class Access(str, enum.Enum):
    ALLOW = "Allow"
    DENY = "Deny"


class Protocol(str, enum.Enum):
    """A rule's protocol. ``ANY`` ("*") matches every IP protocol (documented choice)."""

    TCP = "Tcp"
    UDP = "Udp"
    ICMP = "Icmp"
    ESP = "Esp"
    AH = "Ah"
    ANY = "*"

    @property
    def numbers(self) -> frozenset[int] | None:
        """IANA protocol numbers this value matches; None means all of them."""
        return _PROTO_NUMBERS[self]


# Icmp covers ICMP for IPv4 (1) and ICMPv6 (58).
_PROTO_NUMBERS = {
    Protocol.TCP: frozenset({6}),
    Protocol.UDP: frozenset({17}),
    Protocol.ICMP: frozenset({1, 58}),
    Protocol.ESP: frozenset({50}),
    Protocol.AH: frozenset({51}),
    Protocol.ANY: None,
}

# Protocols that carry ports. A rule whose port term is not "*" only matches these: a
# packet without ports has no port that could lie in the range (documented choice).
PORT_PROTOCOLS = frozenset({6, 17})

# ICMPv6 types the platform answers itself, whatever the NSGs say: MLD query/report/done (130,
# 131, 132), router solicitation/advertisement (133, 134), neighbour solicitation/advertisement
# (135, 136), redirect (137), MLDv2 report (143). NSGs end in DenyAll*, and a Linux host whose
# neighbour discovery is dropped loses IPv6 altogether (measured: the peer's neighbour entry
# stays INCOMPLETE and every connection times out). Azure's virtual switch handles these for
# its VMs (neighbour discovery proxy); so do we, as a platform rule before any NSG.
NEIGHBOR_DISCOVERY_TYPES = frozenset({130, 131, 132, 133, 134, 135, 136, 137, 143})

PROTOCOL_NUMBERS_BY_NAME = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "esp": 50, "ah": 51}


class LevelKind(str, enum.Enum):
    SUBNET = "subnet"
    NIC = "nic"

