"""Azure VNet flow log records (pure): the JSON Azure writes to storage, built from events.

Schema (learn.microsoft.com/azure/network-watcher/vnet-flow-logs-overview, "Log format"; a
sample of it is kept in tests/data/azure-vnet-flow-log-sample.json):

    {"records": [{"time", "flowLogVersion": 4, "flowLogGUID", "macAddress", "category":
      "FlowLogFlowEvent", "flowLogResourceID", "targetResourceID", "operationName":
      "FlowLogFlowEvent", "flowRecords": {"flows": [{"aclID", "flowGroups": [{"rule",
      "flowTuples": ["time,srcIP,dstIP,srcPort,dstPort,protocol,direction,flowState,
      encryption,packetsS2D,bytesS2D,packetsD2S,bytesD2S", ...]}]}]}}]}

Tuple fields as Azure writes them: time in ms since the epoch, protocol as its IANA number,
direction ``I``/``O``, state ``B`` (begin, counts 0), ``C`` (continuing: counts since the
previous tuple of the flow), ``E`` (end: counts since the previous tuple), ``D`` (denied,
counts 0), encryption ``NX`` (not encrypted). Ports of protocols without ports are 0.

What nsg-agent puts in the identifiers (it has no Azure resources): ``targetResourceID`` is
the NIC's resource ID (``.../networkInterfaces/<nic>``: a flow log on a NIC, which Azure
also allows) so a record names its NIC; ``aclID`` is a name-based UUID of the NSG
(uuid5 of ``nsg-agent:nsg:<name>``; platform rules: ``nsg-agent:platform``), and the
directory's ``acls.json`` maps it back to the NSG's name; ``flowLogGUID`` and
``flowLogResourceID`` name this agent (host and namespace).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Iterable

FLOW_LOG_VERSION = 4
CATEGORY = "FlowLogFlowEvent"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "nsg-agent"
STATES = ("B", "C", "E", "D")
TUPLE_FIELDS = ("time", "srcIP", "dstIP", "srcPort", "dstPort", "protocol", "direction", "flowState",
                "encryption", "packetsS2D", "bytesS2D", "packetsD2S", "bytesD2S")
NO_MAC = "000000000000"


@dataclass(frozen=True)
class FlowEvent:
    """One flow tuple and who it belongs to."""

    time_ms: int
    nic: str
    nsg: str  # "" for platform rules
    rule: str  # Azure's rule name: UserRule_x, DefaultRule_x, PlatformRule_x
    src: str
    dst: str
    sport: int | None
    dport: int | None
    protocol: int
    direction: str  # "I" | "O"
    state: str  # B | C | E | D
    packets_s2d: int = 0
    bytes_s2d: int = 0
    packets_d2s: int = 0
    bytes_d2s: int = 0
    mac: str = NO_MAC

    def tuple_text(self) -> str:
        return ",".join(str(x) for x in (
            self.time_ms, self.src, self.dst, self.sport or 0, self.dport or 0, self.protocol, self.direction,
            self.state, "NX", self.packets_s2d, self.bytes_s2d, self.packets_d2s, self.bytes_d2s))


@dataclass(frozen=True)
class Identity:
    """Who writes the log: the flow log "resource" of this agent."""

    name: str  # e.g. "myhost" or "myhost-ns1"

    @property
    def guid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"nsg-agent:flowlog:{self.name}"))

    @property
    def resource_id(self) -> str:
        return (f"/SUBSCRIPTIONS/{SUBSCRIPTION}/RESOURCEGROUPS/{RESOURCE_GROUP.upper()}/PROVIDERS/"
                f"MICROSOFT.NETWORK/NETWORKWATCHERS/NSG-AGENT/FLOWLOGS/{self.name.upper()}")


def acl_id(nsg: str) -> str:
    key = f"nsg-agent:nsg:{nsg.lower()}" if nsg else "nsg-agent:platform"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def nic_resource_id(nic: str) -> str:
    return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
            f"Microsoft.Network/networkInterfaces/{nic}")


def nic_of(target_resource_id: str) -> str:
    return target_resource_id.rstrip("/").rpartition("/")[2]


def azure_time(seconds: float) -> str:
    """``2022-09-14T09:00:52.5625085Z``: UTC with 7 fractional digits, as Azure writes."""
    t = dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    ticks = int(round((seconds % 1) * 10_000_000)) % 10_000_000
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ticks:07d}Z"


def normalize_mac(mac: str | None) -> str:
    text = "".join(c for c in (mac or "") if c.isalnum()).upper()
    return text if len(text) == 12 else NO_MAC


def build_records(events: Iterable[FlowEvent], identity: Identity, now: float) -> list[dict]:
    """One record per NIC, its flows grouped per NSG (aclID) and rule, tuples in time order."""
    by_nic: dict[tuple[str, str], dict[str, dict[str, list[FlowEvent]]]] = {}
    for e in events:
        by_nic.setdefault((e.nic, e.mac), {}).setdefault(e.nsg, {}).setdefault(e.rule, []).append(e)
    records = []
    for (nic, mac), by_nsg in sorted(by_nic.items()):
        flows = []
        for nsg, by_rule in sorted(by_nsg.items()):
            groups = [{"rule": rule, "flowTuples": [e.tuple_text() for e in sorted(evs, key=lambda e: e.time_ms)]}
                      for rule, evs in sorted(by_rule.items())]
            flows.append({"aclID": acl_id(nsg), "flowGroups": groups})
        records.append({
            "time": azure_time(now),
            "flowLogVersion": FLOW_LOG_VERSION,
            "flowLogGUID": identity.guid,
            "macAddress": normalize_mac(mac),
            "category": CATEGORY,
            "flowLogResourceID": identity.resource_id,
            "targetResourceID": nic_resource_id(nic),
            "operationName": CATEGORY,
            "flowRecords": {"flows": flows},
        })
    return records


@dataclass(frozen=True)
class Tuple:
    """A flow tuple read back, with the record's and group's context."""

    time_ms: int
    src: str
    dst: str
    sport: int
    dport: int
    protocol: int
    direction: str
    state: str
    encryption: str
    packets_s2d: int
    bytes_s2d: int
    packets_d2s: int
    bytes_d2s: int
    nic: str = ""
    acl: str = ""
    rule: str = ""
    mac: str = ""


def parse_tuple(text: str) -> Tuple:
    """A flowTuples string; ValueError when it does not follow Azure's grammar. Counts may
    be empty (Azure's docs show ``...,B,NX,,,,``): read as 0."""
    parts = text.split(",")
    if len(parts) != len(TUPLE_FIELDS):
        raise ValueError(f"{len(parts)} fields, not {len(TUPLE_FIELDS)}: {text!r}")
    time_ms, src, dst, sport, dport, proto, direction, state, enc = parts[:9]
    if direction not in ("I", "O") or state not in STATES or not enc.startswith(("X", "NX")):
        raise ValueError(f"bad direction/state/encryption in {text!r}")
    counts = [int(x) if x else 0 for x in parts[9:]]
    return Tuple(int(time_ms), src, dst, int(sport), int(dport), int(proto), direction, state, enc, *counts)


def tuples_of(doc: dict) -> list[Tuple]:
    """Every tuple of a PT1H.json document, with NIC (from targetResourceID), aclID and rule."""
    out = []
    for rec in doc.get("records", []):
        nic = nic_of(rec.get("targetResourceID", ""))
        for flow in rec.get("flowRecords", {}).get("flows", []):
            for group in flow.get("flowGroups", []):
                for text in group.get("flowTuples", []):
                    t = parse_tuple(text)
                    out.append(Tuple(**{**t.__dict__, "nic": nic, "acl": flow.get("aclID", ""),
                                        "rule": group.get("rule", ""), "mac": rec.get("macAddress", "")}))
    return out
