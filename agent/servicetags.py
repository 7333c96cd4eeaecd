"""Microsoft's published service-tag files (ServiceTags_Public_*.json) as a lookup table.

Format: {"changeNumber": N, "cloud": "Public", "values": [{"name": "Storage.EastUS",
"id": ..., "properties": {"addressPrefixes": [...], "region": ..., "systemService": ...,
"networkFeatures": [...] | null}}]}. IPv4 and IPv6 prefixes are mixed. Names are matched
case-insensitively, as Azure does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from agent.policy import IPNetwork, collapse


@dataclass(frozen=True)
class ServiceTag:
    name: str
    prefixes: tuple[IPNetwork, ...]
    region: str = ""
    system_service: str = ""
    source: str = ""


@dataclass(frozen=True)
class ServiceTagIndex:
    tags: dict[str, ServiceTag] = field(default_factory=dict)  # key: lower-case name
    change_numbers: dict[str, int] = field(default_factory=dict)  # file -> changeNumber

    def get(self, name: str) -> ServiceTag | None:
        return self.tags.get(name.lower())

    def merged(self, other: "ServiceTagIndex") -> "ServiceTagIndex":
        return ServiceTagIndex({**self.tags, **other.tags}, {**self.change_numbers, **other.change_numbers})


def parse_service_tags(doc: object, source: str) -> tuple[ServiceTagIndex, list[tuple[str, str]]]:
    """Parse a loaded service-tag document. Returns the index and (field path, problem) pairs."""
    problems: list[tuple[str, str]] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), list):
        return ServiceTagIndex(), [("", "not a service-tag file: expected an object with a 'values' list")]
    tags: dict[str, ServiceTag] = {}
    for i, value in enumerate(doc["values"]):
        where = f"values[{i}]"
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            problems.append((where, "each value needs a 'name'"))
            continue
        props = value.get("properties") or {}
        raw = props.get("addressPrefixes") or []
        if not isinstance(raw, list):
            problems.append((f"{where}.properties.addressPrefixes", "must be a list"))
            continue
        nets = []
        for j, p in enumerate(raw):
            try:
                nets.append(ipaddress.ip_network(str(p), strict=False))
            except ValueError:
                problems.append((f"{where}.properties.addressPrefixes[{j}]", f"{p!r} is not a CIDR prefix"))
        tags[value["name"].lower()] = ServiceTag(
            name=value["name"],
            prefixes=collapse(nets),
            region=props.get("region") or "",
            system_service=props.get("systemService") or "",
            source=source,
        )
    change = doc.get("changeNumber")
    return ServiceTagIndex(tags, {source: change if isinstance(change, int) else 0}), problems
