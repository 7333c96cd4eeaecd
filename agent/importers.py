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
    # Things the user should know about the import (shown by ``validate``), as
    # (location in the document as written, message).
    warnings: list[tuple[Loc, str]] = field(default_factory=list)


def _is_nsg(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    if str(obj.get("type", "")).lower() == NSG_TYPE:
        return True
    props = obj.get("properties")
    return "securityRules" in obj or (isinstance(props, dict) and "securityRules" in props)


def _is_rule(obj: Any) -> bool:
    """A single security rule (flat or nested), as the rule-level REST calls return it."""
    if not isinstance(obj, dict):
        return False
    props = obj.get("properties") if isinstance(obj.get("properties"), dict) else obj
    return "direction" in props and "access" in props and "priority" in props


def _is_default_rule(obj: dict) -> bool:
    return "/defaultsecurityrules/" in str(obj.get("id", "")).lower()


def _translator(origin: dict[Loc, Loc]) -> Callable[[Loc], Loc]:
    """Map a path in the imported (desired-state) document back to the document as written:
    the longest prefix of ``loc`` found in ``origin`` is replaced by its original location."""

    def translate(loc: Loc) -> Loc:
        loc = tuple(loc)
        for n in range(len(loc), 0, -1):
            if loc[:n] in origin:
                return tuple(origin[loc[:n]]) + loc[n:]
        return loc

    return translate


def _wrap_nsgs(kind: str, nsgs: list[tuple[Loc, Any]], extra_origin: dict[Loc, Loc] | None = None,
               warnings: list[tuple[Loc, str]] | None = None) -> Imported:
    """Put NSGs found at the given locations under networkSecurityGroups[i]."""
    origin: dict[Loc, Loc] = {("networkSecurityGroups", i): loc for i, (loc, _) in enumerate(nsgs)}
    origin.update(extra_origin or {})
    return Imported(kind, {"networkSecurityGroups": [n for _, n in nsgs]}, _translator(origin),
                    warnings=list(warnings or []))


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
    if isinstance(doc.get("value"), list) and doc["value"] and all(_is_nsg(v) for v in doc["value"]):
        return _wrap_nsgs("nsg-list", [(("value", i), v) for i, v in enumerate(doc["value"])])
    if isinstance(doc.get("resources"), list):
        nsgs = [(("resources", i), r) for i, r in enumerate(doc["resources"]) if _is_nsg(r)]
        warn = [] if nsgs else [((), "ARM template without Microsoft.Network/networkSecurityGroups resources: nothing to import")]
        return _wrap_nsgs("arm-template", nsgs, warnings=warn)
    if "responses" in doc and "parameters" in doc:
        return _rest_example(doc)
    if isinstance(doc.get("value"), list) and doc["value"] and all(
            isinstance(v, dict) and "effectiveSecurityRules" in v for v in doc["value"]):
        # A NetworkInterfaceEffectiveNSGList body (Azure's, or ``nsg-agent effective-rules --json``).
        found: list[tuple[Loc, Any]] = []
        origin: dict[Loc, Loc] = {}
        warnings: list[tuple[Loc, str]] = []
        _effective_nsgs([((), doc)], found, origin, warnings)
        return _wrap_nsgs("effective-rules", found, origin, warnings)
    if _is_arm_parameters(doc):
        return _arm_parameters(doc)
    return Imported("unknown", doc, problems=[(
        (), "not a desired-state file, an NSG export, an ARM template or a service-tag file: "
            "expected keys such as networkSecurityGroups or virtualNetworks")])


# --- ARM deployment parameters files ------------------------------------------------------


def _is_arm_parameters(doc: dict) -> bool:
    schema = str(doc.get("$schema", "")).lower()
    return "deploymentparameters" in schema and isinstance(doc.get("parameters"), dict)


def _arm_parameters(doc: dict) -> Imported:
    """An ARM parameters file (``deploymentParameters.json``). A parameter whose value is a
    list of security rules (Azure's docs sample ``multiplesecurityrules.parameters.json``) is
    imported as one NSG named after the parameter; the template that consumes it cannot be
    evaluated, so this is the closest literal reading of the file."""
    nsgs: list[tuple[Loc, Any]] = []
    origin: dict[Loc, Loc] = {}
    warnings: list[tuple[Loc, str]] = []
    for pname, param in doc["parameters"].items():
        value = param.get("value") if isinstance(param, dict) else None
        if isinstance(value, list) and value and all(_is_rule(r) for r in value):
            i = len(nsgs)
            loc = ("parameters", pname, "value")
            nsgs.append((("parameters", pname), {"name": pname, "securityRules": value}))
            origin[("networkSecurityGroups", i, "securityRules")] = loc
            origin[("networkSecurityGroups", i, "name")] = ("parameters", pname)
            warnings.append((("parameters", pname), (
                f"ARM parameters file: the rules of parameter {pname!r} are imported as an NSG "
                f"named {pname!r} (the template that uses them is not evaluated)")))
    if not nsgs:
        return Imported("arm-parameters", doc, problems=[((), (
            "ARM parameters file without a parameter holding a list of security rules: "
            "nothing to import (template expressions are not evaluated)"))])
    return _wrap_nsgs("arm-parameters", nsgs, origin, warnings)


# --- azure-rest-api-specs examples -------------------------------------------------------


def _rest_example(doc: dict) -> Imported:
    """An azure-rest-api-specs example: NSGs in the request body and in response bodies.

    Also understood: rule-level examples (a rule in the request or the responses, with the
    NSG named by the ``networkSecurityGroupName`` URL parameter) and effective-rules responses
    (``NetworkInterfaceEffectiveNSGList``: each entry's user rules become an NSG named after
    ``networkSecurityGroup.id``). The same NSG often appears in the request and in several
    responses: the first of each name is kept, so the result is one coherent state.
    """
    found: list[tuple[Loc, Any]] = []
    origin: dict[Loc, Loc] = {}
    warnings: list[tuple[Loc, str]] = []
    params = doc.get("parameters") or {}
    nsg_param = params.get("networkSecurityGroupName")
    nsg_param = nsg_param if isinstance(nsg_param, str) else None

    def add(loc: Loc, nsg: Any, name_from_param: bool = False) -> None:
        if name_from_param and isinstance(nsg, dict) and "name" not in nsg and nsg_param:
            nsg = {"name": nsg_param, **nsg}
            origin[("networkSecurityGroups", len(found), "name")] = ("parameters", "networkSecurityGroupName")
        found.append((loc, nsg))

    for key, value in params.items():
        if _is_nsg(value):
            add(("parameters", key), value, name_from_param=True)
    bodies: list[tuple[Loc, Any]] = []
    for status, response in (doc.get("responses") or {}).items():
        body = response.get("body") if isinstance(response, dict) else None
        if body is not None:
            bodies.append((("responses", status, "body"), body))
    for loc, body in bodies:
        if _is_nsg(body):
            add(loc, body)
        elif isinstance(body, dict) and isinstance(body.get("value"), list):
            for i, v in enumerate(body["value"]):
                if _is_nsg(v):
                    add(loc + ("value", i), v)

    if not found:
        _effective_nsgs(bodies, found, origin, warnings)
    if not found and nsg_param:
        _rule_examples(params, bodies, nsg_param, found, origin, warnings)

    seen: set[str] = set()
    unique: list[tuple[Loc, Any]] = []
    new_origin: dict[Loc, Loc] = {}
    for i, (loc, nsg) in enumerate(found):
        name = str(nsg.get("name", "")).lower() if isinstance(nsg, dict) else ""
        if name in seen:
            continue
        seen.add(name)
        j = len(unique)
        unique.append((loc, nsg))
        for k, v in origin.items():
            if k[:2] == ("networkSecurityGroups", i):
                new_origin[("networkSecurityGroups", j) + k[2:]] = v
    if not unique:
        warnings.append(((), "no network security group or security rule in this example: nothing to enforce"))
    return _wrap_nsgs("rest-example", unique, new_origin, warnings)


def _effective_nsgs(bodies, found, origin, warnings) -> None:
    """NetworkInterfaceEffectiveNSGList: user rules (``securityRules/<name>``) of each entry
    become an NSG; ``defaultSecurityRules/...`` are Azure's defaults, which every NSG has."""
    for loc, body in bodies:
        entries = body.get("value") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            if not (isinstance(entry, dict) and isinstance(entry.get("effectiveSecurityRules"), list)):
                continue
            ref = entry.get("networkSecurityGroup") or {}
            name = str(ref.get("id", "") if isinstance(ref, dict) else ref).rstrip("/").rsplit("/", 1)[-1]
            rules = []
            n = len(found)
            for j, rule in enumerate(entry["effectiveSecurityRules"]):
                if not isinstance(rule, dict):
                    continue
                rname = str(rule.get("name", ""))
                if rname.lower().startswith("defaultsecurityrules/"):
                    continue
                flat = {k: v for k, v in rule.items() if not k.startswith("expanded")}
                flat["name"] = rname.split("/", 1)[1] if rname.lower().startswith("securityrules/") else rname
                origin[("networkSecurityGroups", n, "securityRules", len(rules))] = (
                    loc + ("value", i, "effectiveSecurityRules", j))
                rules.append(flat)
            origin[("networkSecurityGroups", n, "name")] = loc + ("value", i, "networkSecurityGroup")
            found.append((loc + ("value", i), {"name": name or f"effective-{i}", "securityRules": rules}))
            warnings.append((loc + ("value", i), (
                f"effective rules imported as NSG {name!r} (user rules only; default rules are built in)")))


def _rule_examples(params, bodies, nsg_name, found, origin, warnings) -> None:
    """Rule-level examples: collect the rules of the request and responses into one NSG named
    by the URL parameter. Default rules are built in and skipped."""
    rules: list[tuple[Loc, Any]] = []
    body = params.get("securityRuleParameters")
    if _is_rule(body):
        rule = dict(body)
        if "name" not in rule and isinstance(params.get("securityRuleName"), str):
            rule["name"] = params["securityRuleName"]
        rules.append((("parameters", "securityRuleParameters"), rule))
    for loc, body in bodies:
        items = [(loc, body)] if _is_rule(body) else []
        if isinstance(body, dict) and isinstance(body.get("value"), list):
            items += [(loc + ("value", i), v) for i, v in enumerate(body["value"]) if _is_rule(v)]
        for iloc, item in items:
            if _is_default_rule(item) or "defaultSecurityRuleName" in params:
                warnings.append((iloc, "default security rule: built into every NSG, not imported"))
                continue
            rules.append((iloc, item))
    seen: set[str] = set()
    kept = []
    for loc, rule in rules:
        key = str(rule.get("name", "")).lower()
        if key in seen:
            continue
        seen.add(key)
        origin[("networkSecurityGroups", len(found), "securityRules", len(kept))] = loc
        kept.append(rule)
    if kept:
        origin[("networkSecurityGroups", len(found), "name")] = ("parameters", "networkSecurityGroupName")
        found.append((("parameters", "networkSecurityGroupName"),
                      {"name": nsg_name, "securityRules": kept}))
