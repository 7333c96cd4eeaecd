"""Recognising what kind of document a file is, and bringing Azure exports into the
desired-state shape.

Supported: the desired-state file itself; a service-tag file; a single NSG as
``az network nsg show`` or an ARM resource prints it; a list response (``{"value": [...]}``);
an ARM template (its Microsoft.Network resources); Azure REST API examples
(``{"parameters": ..., "responses": ...}``). Every import records how its field paths map
back to the document as written, so errors still point at the right line.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # imported where used (ARM templates only)
    from nsg_agent.desired.arm import Unresolved

Loc = tuple

DESIRED_STATE_KEYS = {"virtualNetworks", "networkInterfaces", "networkSecurityGroups",
                      "applicationSecurityGroups", "routeTables", "serviceTags", "platform", "lab"}
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
    props = obj["properties"] if isinstance(obj.get("properties"), dict) else obj
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


@dataclass(frozen=True)
class Options:
    """How to read exports that do not say everything themselves."""

    nsg: str | None = None  # the NSG of a bare rule list (``az network nsg rule list``)
    parameters: tuple[Any, ...] = ()  # parsed ARM parameters files (``--parameters FILE``)


def detect(doc: Any, filename: str, options: Options | None = None) -> Imported:
    options = options or Options()
    if doc is None:
        return Imported("desired-state", {})
    prefix: Loc = ()
    if isinstance(doc, dict) and "body" in doc and ("request" in doc or "async_result_request" in doc):
        # a recorded HTTP exchange (azure-cli test recordings): the response body is the export
        prefix, doc = ("body",), doc["body"]
        inner = detect(doc, filename, options)
        return _prefixed(inner, prefix)
    if isinstance(doc, list):
        return _resource_list("list", [((i,), v) for i, v in enumerate(doc)], options)
    if not isinstance(doc, dict):
        return Imported("unknown", doc, problems=[((), (
            f"expected a mapping (object) or a list at the top level, not {_type_name(doc)}"))])
    if isinstance(doc.get("values"), list) and ("changeNumber" in doc or "cloud" in doc):
        return Imported("service-tags", doc)
    if DESIRED_STATE_KEYS & doc.keys() and not _is_nsg(doc) and "resources" not in doc:
        return Imported("desired-state", doc)
    if _is_arm_template(doc):
        return _arm_template(doc, options)
    if (kind := _kind_of(doc)) is not None and kind not in ("effective-nsg", "effective-route"):
        return _resource_list(kind, [((), doc)], options)
    if "responses" in doc and "parameters" in doc:
        return _rest_example(doc)
    if isinstance(doc.get("value"), list):
        values = doc["value"]
        if values and all(_kind_of(v) == "effective-nsg" for v in values):
            # A NetworkInterfaceEffectiveNSGList body (Azure's, or ``nsg-agent effective-rules --json``).
            found: list[tuple[Loc, Any]] = []
            origin: dict[Loc, Loc] = {}
            warnings: list[tuple[Loc, str]] = []
            _effective_nsgs([((), doc)], found, origin, warnings)
            return _wrap_nsgs("effective-rules", found, origin, warnings)
        if values and all(_kind_of(v) == "effective-route" for v in values):
            return Imported("unknown", doc, problems=[((), EFFECTIVE_ROUTES_MSG)])
        return _resource_list("list", [(("value", i), v) for i, v in enumerate(values)], options)
    if _is_arm_parameters(doc):
        return _arm_parameters(doc)
    return Imported("unknown", doc, problems=[(
        (), "not a desired-state file, an Azure export (NSG, rule, VNet, NIC, ASG, route table, "
            "list or effective-NSG list), an ARM template or a service-tag file: expected keys "
            "such as networkSecurityGroups or virtualNetworks")])


EFFECTIVE_ROUTES_MSG = (
    "an effective route table (az network nic show-effective-route-table) is what Azure "
    "computed for one NIC, not a desired state: it is not imported. Declare user routes as "
    "routeTables (see docs/desired-state.md); the default routes are built in")


def _type_name(v: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(type(v), type(v).__name__)


def _prefixed(imported: Imported, prefix: Loc) -> Imported:
    inner = imported.translate
    imported.translate = lambda loc: prefix + tuple(inner(loc))
    imported.problems = [(prefix + tuple(loc), m) for loc, m in imported.problems]
    imported.warnings = [(prefix + tuple(loc), m) for loc, m in imported.warnings]
    if imported.kind in ("unknown", "service-tags", "desired-state"):
        # these are interpreted by the loader on imported.doc with identity paths
        imported.translate = lambda loc: prefix + tuple(loc)
    return imported


# --- Azure resources (show / list / REST / ARM) -----------------------------------------

TYPES = {
    "microsoft.network/networksecuritygroups": "nsg",
    "microsoft.network/networksecuritygroups/securityrules": "rule",
    "microsoft.network/virtualnetworks": "vnet",
    "microsoft.network/virtualnetworks/subnets": "subnet",
    "microsoft.network/virtualnetworks/virtualnetworkpeerings": "peering",
    "microsoft.network/networkinterfaces": "nic",
    "microsoft.network/applicationsecuritygroups": "asg",
    "microsoft.network/routetables": "routeTable",
    "microsoft.network/routetables/routes": "route",
}
COLLECTION = {"nsg": "networkSecurityGroups", "vnet": "virtualNetworks", "nic": "networkInterfaces",
              "asg": "applicationSecurityGroups", "routeTable": "routeTables"}
# child kind -> (parent kind, the parent's list field, the parent's segment in an Azure id)
CHILD = {"rule": ("nsg", "securityRules", "networkSecurityGroups"),
         "subnet": ("vnet", "subnets", "virtualNetworks"),
         "peering": ("vnet", "virtualNetworkPeerings", "virtualNetworks"),
         "route": ("routeTable", "routes", "routeTables")}
KIND_LABEL = {"nsg": "NSG", "vnet": "VNet", "routeTable": "route table"}
RULES_ONLY = "__rules_only__"  # marks an NSG made from a bare rule list


def _props(obj: dict) -> dict:
    p = obj.get("properties")
    return p if isinstance(p, dict) else obj


def _kind_of(obj: Any) -> str | None:
    """What an Azure object is, by its ``type`` or, without one, by its shape."""
    if not isinstance(obj, dict):
        return None
    t = obj.get("type")
    if isinstance(t, str) and t.lower() in TYPES:
        return TYPES[t.lower()]
    if "effectiveSecurityRules" in obj:
        return "effective-nsg"
    props = _props(obj)
    if "nextHopType" in props and "name" not in obj and ("state" in props or "source" in props):
        return "effective-route"
    if "securityRules" in props or "defaultSecurityRules" in props:
        return "nsg"
    if _is_rule(obj):
        return "rule"
    if "addressSpace" in props:
        return "vnet"
    if "ipConfigurations" in props and "addressPrefix" not in props and "addressPrefixes" not in props:
        return "nic"
    if "routes" in props:
        return "routeTable"
    if "nextHopType" in props:
        return "route"
    if "remoteVirtualNetwork" in props:
        return "peering"
    if isinstance(t, str) and t.lower().startswith("microsoft."):
        return "other"
    return None


def _id_parent(obj: dict, segment: str) -> str | None:
    """The parent's name from a child's Azure id: ``.../<segment>/<name>/...``."""
    m = re.search(rf"/{segment}/([^/]+)/", str(obj.get("id", "")), re.I)
    return m.group(1) if m else None


class _Builder:
    """Collects Azure resources into a desired-state document, remembering where each
    part is written so that errors point at the input."""

    def __init__(self, options: Options):
        self.options = options
        self.doc: dict[str, list] = {}
        self.origin: dict[Loc, Loc] = {}
        self.problems: list[tuple[Loc, str]] = []
        self.warnings: list[tuple[Loc, str]] = []
        self.skipped: dict[str, int] = {}
        self.defaults_skipped = 0

    def _find(self, kind: str, name: str) -> int | None:
        items = self.doc.get(COLLECTION[kind], [])
        return next((i for i, it in enumerate(items) if str(it.get("name", "")).lower() == name.lower()), None)

    def add(self, kind: str, loc: Loc, obj: Any, name: str | None = None) -> None:
        if kind in COLLECTION:
            coll = self.doc.setdefault(COLLECTION[kind], [])
            item = dict(obj)
            if name is not None:
                item["name"] = name
            if kind in ("nsg", "vnet", "routeTable") and self._find(kind, str(item.get("name", ""))) is not None:
                self.problems.append((loc + ("name",), (
                    f"{KIND_LABEL[kind]} {item.get('name')!r} appears twice in this file")))
                return
            self.origin[(COLLECTION[kind], len(coll))] = loc
            coll.append(item)
        elif kind in CHILD:
            self.add_child(kind, loc, obj, name)
        elif kind == "effective-nsg":
            found: list[tuple[Loc, Any]] = []
            origin: dict[Loc, Loc] = {}
            _effective_entry(loc, obj, found, origin, self.warnings)
            base = len(self.doc.get("networkSecurityGroups", []))
            for i, (nloc, nsg) in enumerate(found):
                self.doc.setdefault("networkSecurityGroups", []).append(nsg)
                self.origin[("networkSecurityGroups", base + i)] = nloc
            for k, v in origin.items():
                self.origin[("networkSecurityGroups", base + k[1]) + k[2:]] = v
        elif kind == "effective-route":
            self.problems.append((loc, EFFECTIVE_ROUTES_MSG))
        else:
            t = obj.get("type") if isinstance(obj, dict) else None
            self.skipped[str(t or _type_name(obj))] = self.skipped.get(str(t or _type_name(obj)), 0) + 1

    def add_child(self, kind: str, loc: Loc, obj: dict, name: str | None) -> None:
        parent_kind, field_name, segment = CHILD[kind]
        full = name if name is not None else str(obj.get("name", ""))
        parent, _, child = full.rpartition("/")
        parent = parent or _id_parent(obj, segment) or ""
        if kind == "rule":
            if "/defaultsecurityrules/" in str(obj.get("id", "")).lower():
                self.defaults_skipped += 1
                return
            if not parent:
                parent = self.options.nsg or ""
            if not parent:
                self.problems.append((loc, (
                    "a security rule without its NSG: its id does not name the NSG; give the "
                    "NSG with --nsg NAME")))
                return
        item = dict(obj)
        item["name"] = child or full
        pi = self._find(parent_kind, parent) if parent else None
        if pi is None:
            if kind != "rule" or not parent:
                what = KIND_LABEL[parent_kind]
                self.problems.append((loc, (
                    f"{kind} {full!r} belongs to {what} {parent or '(unnamed)'!r}, which is not in "
                    f"the input: export the {what} itself too (its child list alone is not enough)")))
                return
            coll = self.doc.setdefault("networkSecurityGroups", [])
            # only rules: the loader adds them to the NSG of the same name in another file
            coll.append({"name": parent, "securityRules": [], RULES_ONLY: True})
            pi = len(coll) - 1
            self.origin[("networkSecurityGroups", pi, "name")] = loc + ("name",)
        coll_name = COLLECTION[parent_kind]
        parent_obj = dict(self.doc[coll_name][pi])
        holder = parent_obj
        if isinstance(parent_obj.get("properties"), dict):
            holder = parent_obj["properties"] = dict(parent_obj["properties"])
        existing = holder.get(field_name)
        lst = list(existing) if isinstance(existing, list) else []
        if existing is not None and not isinstance(existing, list):
            self.problems.append((loc, f"cannot add {kind} {full!r}: the parent's {field_name} is not a list"))
            return
        self.origin[(coll_name, pi, field_name, len(lst))] = loc
        if field_name == "virtualNetworkPeerings":  # the model's name for Azure's key
            self.origin[(coll_name, pi, "peerings", len(lst))] = loc
        lst.append(item)
        holder[field_name] = lst
        self.doc[coll_name][pi] = parent_obj

    def finish(self, kind: str) -> Imported:
        if self.defaults_skipped:
            self.warnings.append(((), (
                f"{self.defaults_skipped} default security rule(s) skipped: Azure's defaults are "
                "built into every NSG")))
        if self.skipped:
            listed = ", ".join(f"{t} ({n})" if n > 1 else t for t, n in sorted(self.skipped.items()))
            self.warnings.append(((), f"skipped resources that hold no network security state: {listed}"))
        if not self.doc and not self.problems:
            self.warnings.append(((), "nothing to import: no NSG, rule, VNet, NIC, ASG or route table found"))
        return Imported(kind, self.doc, _translator(self.origin), self.problems, self.warnings)


def _resource_list(kind: str, items: list[tuple[Loc, Any]], options: Options) -> Imported:
    b = _Builder(options)
    # parents first, so that children (rule lists, subnet lists) find them
    order = sorted(items, key=lambda it: 1 if _kind_of(it[1]) in CHILD else 0)
    for loc, obj in order:
        k = _kind_of(obj)
        if k is None:
            b.problems.append((loc, (
                f"not an Azure resource this importer knows (an NSG, security rule, VNet, "
                f"subnet, peering, NIC, ASG, route table or effective-NSG entry): {_type_name(obj)}"
                + (f" with keys {', '.join(sorted(obj)[:6])}" if isinstance(obj, dict) else ""))))
            continue
        if _has_expression(obj):
            sub = _arm_template(obj, options)
            for (where, m) in sub.problems:
                b.problems.append((loc + tuple(where), m))
            for coll, lst in sub.doc.items():
                for i, it in enumerate(lst):
                    b.doc.setdefault(coll, []).append(it)
                    b.origin[(coll, len(b.doc[coll]) - 1)] = loc + tuple(sub.translate((coll, i)))
            continue
        b.add(k, loc, obj)
    if kind != "list":
        kind = {"nsg": "nsg", "rule": "nsg-rules"}.get(kind, kind)
    elif b.doc.keys() == {"networkSecurityGroups"}:
        kind = "nsg-list"
    return b.finish(kind)


def _has_expression(v: Any, depth: int = 0) -> bool:
    if isinstance(v, str):
        return v.startswith("[") and not v.startswith("[[") and v.rstrip().endswith("]")
    if depth > 40:
        return False
    if isinstance(v, dict):
        return any(_has_expression(x, depth + 1) for x in v.values())
    if isinstance(v, list):
        return any(_has_expression(x, depth + 1) for x in v)
    return False


# --- ARM templates ------------------------------------------------------------------------

# Keys of a resource (or any object) whose value only informs; an expression there that
# cannot be evaluated is dropped rather than refused.
INFORMATIONAL_KEYS = {"location", "tags", "dependsOn", "apiVersion", "comments", "metadata",
                      "etag", "sku", "zones", "scope", "identity", "kind", "plan",
                      "description", "provisioningState", "resourceGuid", "dnsSettings",
                      "enableAcceleratedNetworking", "enableIPForwarding", "publicIPAddress",
                      "loadBalancerBackendAddressPools", "loadBalancerInboundNatRules",
                      "privateIPAddressVersion", "primary", "serviceEndpoints", "delegations",
                      "privateEndpointNetworkPolicies", "privateLinkServiceNetworkPolicies",
                      "enableDdosProtection", "ddosProtectionPlan", "virtualMachine", "extendedLocation"}


def _is_arm_template(doc: dict) -> bool:
    schema = str(doc.get("$schema", "")).lower()
    return "deploymenttemplate" in schema or isinstance(doc.get("resources"), list)


def _arm_template(doc: dict, options: Options) -> Imported:
    from nsg_agent.desired import arm

    resources, problems = arm.evaluate_template(doc, list(options.parameters))
    b = _Builder(options)
    b.problems += problems
    for r in sorted(resources, key=lambda r: 1 if TYPES.get(r.type.lower()) in CHILD else 0):
        k = TYPES.get(r.type.lower())
        if k is None:
            b.skipped[r.type] = b.skipped.get(r.type, 0) + 1
            continue
        b.add(k, r.loc, r.body, r.name if k in CHILD else None)
    imported = b.finish("arm-template")
    _unresolved(imported, arm.Unresolved)
    return imported


def _unresolved(imported: Imported, marker: type[Unresolved]) -> None:
    """Unevaluated expressions left in the imported document: refused where they matter
    (with the field, the expression and the function), dropped where they only inform."""

    def walk(node: Any, loc: Loc) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k in INFORMATIONAL_KEYS:
                    if not _contains(v, marker):
                        out[k] = v
                    continue  # an informational field that cannot be evaluated: dropped
                out[k] = walk(v, loc + (k,))
            return out
        if isinstance(node, list):
            return [walk(v, loc + (i,)) for i, v in enumerate(node)]
        if isinstance(node, marker):
            flat = _flat_loc(loc)
            imported.problems.append((flat, node.message()))
            return node.expression
        return node

    imported.doc = walk(imported.doc, ())
    # problems found here are at paths of the imported document: translate them
    imported.problems = [(imported.translate(where) if where and where[0] in COLLECTION.values() else where, m)
                         for where, m in imported.problems]


def _contains(v: Any, marker: type) -> bool:
    if isinstance(v, marker):
        return True
    if isinstance(v, dict):
        return any(_contains(x, marker) for x in v.values())
    if isinstance(v, list):
        return any(_contains(x, marker) for x in v)
    return False


def _flat_loc(loc: Loc) -> Loc:
    return tuple(p for p in loc if p != "properties")


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
                f"named {pname!r}; to load the template that uses them, give it with "
                f"--parameters this-file)")))
    if not nsgs:
        return Imported("arm-parameters", doc, problems=[((), (
            "ARM parameters file without a parameter holding a list of security rules: "
            "nothing to import on its own: give it to the template with --parameters FILE"))])
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
    """NetworkInterfaceEffectiveNSGList bodies: each entry becomes an NSG (named after
    ``networkSecurityGroup.id``) holding its user rules (``securityRules/<name>``), associated
    with what ``association`` names; see ``_effective_entry``."""
    for loc, body in bodies:
        entries = body.get("value") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            if isinstance(entry, dict) and isinstance(entry.get("effectiveSecurityRules"), list):
                _effective_entry(loc + ("value", i), entry, found, origin, warnings)


def _effective_entry(loc: Loc, entry: dict, found, origin, warnings) -> None:
    """One effective-NSG entry. Azure writes the effective form of each rule: protocol
    ``All``, ports ``0-65535``, ``*`` as ``0.0.0.0/0``, a tag both singular and plural and its
    prefixes in ``expanded…AddressPrefix``. The expanded prefixes are preferred (they are what
    was in force for this NIC); ``defaultSecurityRules/…`` are Azure's defaults, which every
    NSG has built in. ``association`` becomes the NSG's back-references (networkInterfaces /
    subnets), which the loader turns into associations."""
    ref = entry.get("networkSecurityGroup") or {}
    name = str(ref.get("id", "") if isinstance(ref, dict) else ref).rstrip("/").rsplit("/", 1)[-1]
    n = len(found)
    rules = []
    defaults = 0
    for j, rule in enumerate(entry["effectiveSecurityRules"]):
        rloc = loc + ("effectiveSecurityRules", j)
        if not isinstance(rule, dict):
            rules.append(rule)  # the model reports the wrong type at its path
            origin[("networkSecurityGroups", n, "securityRules", len(rules) - 1)] = rloc
            continue
        rname = str(rule.get("name", ""))
        if rname.lower().startswith("defaultsecurityrules/"):
            defaults += 1
            continue
        flat = _effective_rule(rule)
        flat["name"] = rname.split("/", 1)[1] if rname.lower().startswith("securityrules/") else rname
        for key in rule:
            if key not in EFFECTIVE_RULE_KEYS:
                close = difflib.get_close_matches(str(key), sorted(EFFECTIVE_RULE_KEYS), n=1)
                warnings.append((rloc + (key,), f"unknown key {key!r} in an effective rule"
                                 + (f" (did you mean {close[0]!r}?)" if close else "") + ": ignored"))
        origin[("networkSecurityGroups", n, "securityRules", len(rules))] = rloc
        rules.append(flat)
    nsg: dict[str, Any] = {"name": name or f"effective-{n}", "securityRules": rules}
    assoc = entry["association"] if isinstance(entry.get("association"), dict) else {}
    if isinstance(assoc.get("networkInterface"), dict) and "id" in assoc["networkInterface"]:
        nsg["networkInterfaces"] = [assoc["networkInterface"]]
    elif isinstance(assoc.get("subnet"), dict) and "id" in assoc["subnet"]:
        nsg["subnets"] = [assoc["subnet"]]
    origin[("networkSecurityGroups", n, "name")] = loc + ("networkSecurityGroup",)
    origin[("networkSecurityGroups", n)] = loc
    found.append((loc, nsg))
    warnings.append((loc, (
        f"effective rules imported as NSG {nsg['name']!r}: {len(rules)} user rule(s), expanded "
        f"prefixes used where listed; {defaults} default rule(s) are built in")))


_ANY_PREFIXES = ({"0.0.0.0/0"}, {"0.0.0.0/0", "::/0"}, {"*"})
EFFECTIVE_RULE_KEYS = frozenset(
    {"name", "description", "priority", "direction", "access", "protocol"}
    | {f"{side}{k}" for side in ("source", "destination")
       for k in ("PortRange", "PortRanges", "AddressPrefix", "AddressPrefixes", "ApplicationSecurityGroups")}
    | {"expandedSourceAddressPrefix", "expandedDestinationAddressPrefix"})


def _effective_rule(rule: dict) -> dict:
    out: dict[str, Any] = {}
    for k in ("description", "priority", "direction", "access"):
        if k in rule:
            out[k] = rule[k]
    proto = rule.get("protocol")
    out["protocol"] = "*" if isinstance(proto, str) and proto.lower() in ("all", "any") else proto
    for side in ("source", "destination"):
        ports = _dedupe(_as_items(rule.get(f"{side}PortRanges")) or _as_items(rule.get(f"{side}PortRange")))
        if len(ports) == 1:
            out[f"{side}PortRange"] = "*" if ports[0] == "0-65535" else ports[0]
        elif ports:
            out[f"{side}PortRanges"] = ports
        expanded_key = f"expanded{side[0].upper()}{side[1:]}AddressPrefix"
        if expanded_key in rule and isinstance(rule[expanded_key], list) and rule[expanded_key]:
            prefixes = _dedupe(rule[expanded_key])
        else:
            asgs = rule.get(f"{side}ApplicationSecurityGroups")
            if asgs:
                out[f"{side}ApplicationSecurityGroups"] = asgs
                continue
            prefixes = _dedupe(_as_items(rule.get(f"{side}AddressPrefixes")) or
                               _as_items(rule.get(f"{side}AddressPrefix")))
        if all(isinstance(x, str) for x in prefixes) and set(prefixes) in _ANY_PREFIXES:
            out[f"{side}AddressPrefix"] = "*"
        elif len(prefixes) == 1:
            out[f"{side}AddressPrefix"] = prefixes[0]
        elif prefixes:
            out[f"{side}AddressPrefixes"] = prefixes
    return out


def _as_items(v: Any) -> list:
    if v is None or v == "":
        return []
    return list(v) if isinstance(v, list) else [v]


def _dedupe(items: list) -> list:
    out: list = []
    for x in items:
        if x not in out:
            out.append(x)
    return out


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
    kept: list[Any] = []
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
