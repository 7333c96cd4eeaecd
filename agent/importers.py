"""Recognising what kind of document a file is, and bringing Azure exports into the
desired-state shape.

Supported: the desired-state file itself; a service-tag file; a single NSG as
``az network nsg show`` or an ARM resource prints it; a list response (``{"value": [...]}``);
an ARM template (its Microsoft.Network resources); Azure REST API examples
(``{"parameters": ..., "responses": ...}``). Every import records how its field paths map
back to the document as written, so errors still point at the right line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

Loc = tuple

DESIRED_STATE_KEYS = {"virtualNetworks", "networkInterfaces", "networkSecurityGroups",
                      "applicationSecurityGroups", "serviceTags", "platform", "lab"}
NSG_TYPE = "microsoft.network/networksecuritygroups"


@dataclass
class Imported:
    kind: str
    doc: Any
    translate: Callable[[Loc], Loc] = lambda loc: loc
    problems: list[tuple[Loc, str]] = field(default_factory=list)


def _is_nsg(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    if str(obj.get("type", "")).lower() == NSG_TYPE:
        return True
    props = obj.get("properties")
    return "securityRules" in obj or (isinstance(props, dict) and "securityRules" in props)


def _wrap_nsgs(kind: str, nsgs: list[tuple[Loc, Any]]) -> Imported:
    """Put NSGs found at the given locations under networkSecurityGroups[i]."""
    origin = {i: loc for i, (loc, _) in enumerate(nsgs)}

    def translate(loc: Loc) -> Loc:
        if len(loc) >= 2 and loc[0] == "networkSecurityGroups" and loc[1] in origin:
            return origin[loc[1]] + tuple(loc[2:])
        return loc

    return Imported(kind, {"networkSecurityGroups": [n for _, n in nsgs]}, translate)


def detect(doc: Any, filename: str) -> Imported:
    if doc is None:
        return Imported("desired-state", {})
    if not isinstance(doc, dict):
        return Imported("unknown", doc, problems=[((), "expected a mapping (object) at the top level")])
    if isinstance(doc.get("values"), list) and ("changeNumber" in doc or "cloud" in doc):
        return Imported("service-tags", doc)
    if DESIRED_STATE_KEYS & doc.keys() and not _is_nsg(doc):
        return Imported("desired-state", doc)
    if _is_nsg(doc):
        return _wrap_nsgs("nsg", [((), doc)])
    if isinstance(doc.get("value"), list) and all(_is_nsg(v) for v in doc["value"]):
        return _wrap_nsgs("nsg-list", [(("value", i), v) for i, v in enumerate(doc["value"])])
    if isinstance(doc.get("resources"), list):
        nsgs = [(("resources", i), r) for i, r in enumerate(doc["resources"]) if _is_nsg(r)]
        return _wrap_nsgs("arm-template", nsgs)
    if "responses" in doc and "parameters" in doc:
        return _rest_example(doc)
    return Imported("unknown", doc, problems=[(
        (), "not a desired-state file, an NSG export, an ARM template or a service-tag file: "
            "expected keys such as networkSecurityGroups or virtualNetworks")])


def _rest_example(doc: dict) -> Imported:
    """An azure-rest-api-specs example: NSGs in the request body and in response bodies."""
    found: list[tuple[Loc, Any]] = []
    params = doc.get("parameters") or {}
    for key, value in params.items():
        if _is_nsg(value):
            found.append((("parameters", key), value))
    for status, response in (doc.get("responses") or {}).items():
        body = response.get("body") if isinstance(response, dict) else None
        if _is_nsg(body):
            found.append((("responses", status, "body"), body))
        elif isinstance(body, dict) and isinstance(body.get("value"), list):
            found += [(("responses", status, "body", "value", i), v)
                      for i, v in enumerate(body["value"]) if _is_nsg(v)]
    # The same NSG often appears in the request and in several responses: keep the first of
    # each name, so the result is one coherent state.
    seen: set[str] = set()
    unique = []
    for loc, nsg in found:
        name = str(nsg.get("name", "")).lower()
        if name not in seen:
            seen.add(name)
            unique.append((loc, nsg))
    return _wrap_nsgs("rest-example", unique)
