"""The service tags that are not in Microsoft's published file: Internet, AzureLoadBalancer
and the platform tags. Their prefixes, as Azure returns them.

- **Internet** is a fixed list of public prefixes, not "everything outside VirtualNetwork".
  IPv4: Azure's own expansion (``data/internet-ipv4.txt``: the ``tagMap.Internet`` of a
  recorded effective-NSG response, 273 prefixes; it leaves out 10/8, 172.16/12, 192.168/16,
  100.64/10, 198.18/15, 0/8, 127/8, 169.254/16, 192.0.2/24, 224/3 and some Microsoft blocks,
  and keeps 168.0.0.0/8 although 168.63.129.16 is VirtualNetwork). Nothing is subtracted:
  where Internet and VirtualNetwork overlap, an address is both.
  IPv6: Azure's recording has no IPv6 Internet prefix, so we define it: IANA's global unicast
  space 2000::/3 minus 2001::/23 (IANA's "IETF Protocol Assignments": Teredo, benchmarking,
  ORCHID, not globally routed as a whole). The documentation prefix 2001:db8::/32 stays in, as
  Azure's IPv4 list keeps TEST-NET-2 and -3 (198.51.100.0/24, 203.0.113.0/24). ULA (fc00::/7),
  link-local (fe80::/10) and multicast (ff00::/8) are outside 2000::/3, so not Internet.
  ``serviceTags.internet`` points at a newer expansion (see ``parse_internet_file``).
- **AzureLoadBalancer**: 168.63.129.16/32 and fe80::1234:5678:9abc/128 (recorded tagMap).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from nsg_agent.netaddr import PrefixSet, parse_cidr

INTERNET_V6_DEFINITION = ("2000::/3",)
INTERNET_V6_EXCLUDED = ("2001::/23",)
AZURE_LOAD_BALANCER = ("168.63.129.16/32", "fe80::1234:5678:9abc/128")


def _prefix_lines(text: str) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in text.splitlines()
            if line.split("#", 1)[0].strip()]


@lru_cache(maxsize=1)
def internet_v4_prefixes() -> tuple[str, ...]:
    """Azure's IPv4 Internet expansion as shipped, in Azure's order."""
    text = resources.files("nsg_agent.desired").joinpath("data/internet-ipv4.txt").read_text("utf-8")
    return tuple(_prefix_lines(text))


def internet_v6_set() -> PrefixSet:
    return (PrefixSet.parse(INTERNET_V6_DEFINITION)
            - PrefixSet.parse(INTERNET_V6_EXCLUDED))


@lru_cache(maxsize=1)
def builtin_internet() -> PrefixSet:
    return PrefixSet.parse(internet_v4_prefixes()) | internet_v6_set()


def internet_with(override: PrefixSet | None) -> PrefixSet:
    """The Internet tag given a user's expansion: its IPv4 part replaces ours; its IPv6 part
    replaces ours when it has one (Azure's own answers list no IPv6 Internet prefix)."""
    if override is None:
        return builtin_internet()
    v6 = override.v6 or internet_v6_set().v6
    return PrefixSet(override.v4, v6)


def parse_internet_document(doc: Any, text: str | None = None) -> tuple[list[str], str | None]:
    """The prefixes of an Internet-tag file: (prefixes, problem or None).

    Accepted: a plain text list (one prefix a line, ``#`` comments; pass ``text``), a JSON
    list of prefixes, ``{"Internet": [...]}`` / ``{"tagMap": {"Internet": [...]}}``, or a whole
    effective-NSG response (``az network nic list-effective-nsg`` output or the REST body:
    ``value[].tagMap.Internet`` / ``effectiveNetworkSecurityGroups[].tagMap.Internet``)."""
    if isinstance(doc, list) and all(isinstance(p, str) for p in doc):
        return list(doc), None
    if isinstance(doc, dict):
        if "body" in doc and isinstance(doc["body"], dict):  # a recorded response file
            doc = doc["body"]
        for key in ("tagMap", "Internet"):
            if key in doc:
                found = doc[key]
                if key == "tagMap" and isinstance(found, dict):
                    found = found.get("Internet")
                if isinstance(found, list):
                    return [str(p) for p in found], None
        for key in ("value", "effectiveNetworkSecurityGroups"):
            groups = doc.get(key)
            if isinstance(groups, list):
                for g in groups:
                    if isinstance(g, dict) and isinstance(g.get("tagMap"), dict) \
                            and isinstance(g["tagMap"].get("Internet"), list):
                        return [str(p) for p in g["tagMap"]["Internet"]], None
        return [], "no Internet prefixes found (expected a list, or an effective-NSG response with tagMap.Internet)"
    if text is not None and not isinstance(doc, (dict, list)):
        return _prefix_lines(text), None
    return [], "expected a list of prefixes or an effective-NSG response"


def parse_internet_file(raw: bytes, filename: str) -> tuple[PrefixSet | None, list[tuple[str, str]]]:
    """An Internet-tag file's prefixes as a PrefixSet, and (field path, problem) pairs."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return None, [("", f"not UTF-8 text ({e.reason} at byte {e.start})")]
    doc: Any = None
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            return None, [("", f"invalid JSON: {e.msg} (line {e.lineno})")]
    prefixes, problem = parse_internet_document(doc, text)
    if problem:
        return None, [("", problem)]
    cidrs, problems = [], []
    for i, p in enumerate(prefixes):
        try:
            cidrs.append(parse_cidr(p.strip(), strict=False))
        except ValueError:
            problems.append((f"[{i}]", f"{p!r} is not an IP prefix"))
    if not cidrs and not problems:
        problems.append(("", "the file lists no prefix"))
    return (None if problems else PrefixSet.from_cidrs(cidrs)), problems
