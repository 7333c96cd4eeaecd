"""Azure's back-references become associations.

Azure exports an NSG with the subnets and NICs it is attached to (``subnets``,
``networkInterfaces``: lists of ``{"id": ...}``), and a route table with its ``subnets``; the
desired state says it the other way round (``subnet.networkSecurityGroup``,
``nic.networkSecurityGroup``, ``subnet.routeTable``). ``apply`` moves each back-reference to
the object it names, in the merged document of every input file, before validation:

- the named subnet / NIC is in the input and has no association: it gets this one;
- it has the same one already: nothing to do;
- it has another one: an error (Azure allows one NSG per subnet / NIC);
- it is not in the input while the input has VNets or NICs: a warning (the association is
  not enforced); an input with no topology at all (a lone NSG export) stays quiet.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

Loc = tuple

_SUBNET_ID = re.compile(r"virtualNetworks/([^/]+)/subnets/([^/]+)/?$", re.I)
_NIC_ID = re.compile(r"networkInterfaces/([^/]+)(?:/ipConfigurations/[^/]+)?/?$", re.I)


def _holder(item: dict) -> dict:
    props = item.get("properties")
    return props if isinstance(props, dict) else item


def _ref_name(v: Any) -> str | None:
    if isinstance(v, dict):
        v = v.get("id")
    if isinstance(v, str):
        return v.rstrip("/").rsplit("/", 1)[-1]
    return None


def _pop_refs(item: dict, key: str) -> Any:
    """Remove ``key`` from the item (top level or under properties); its value (any JSON
    value: the caller checks it is a list), None when absent."""
    for place in (item, item.get("properties")):
        if isinstance(place, dict) and key in place:
            return place.pop(key)
    return None


def apply(doc: dict) -> tuple[list[tuple[Loc, str]], list[tuple[Loc, str]]]:
    """Apply back-references in ``doc`` (changed in place, copying what it changes).
    Returns (problems, warnings) at paths of ``doc``."""
    problems: list[tuple[Loc, str]] = []
    warnings: list[tuple[Loc, str]] = []
    vnets: list = doc["virtualNetworks"] if isinstance(doc.get("virtualNetworks"), list) else []
    nics: list = doc["networkInterfaces"] if isinstance(doc.get("networkInterfaces"), list) else []
    has_topology = bool(vnets or nics)

    def subnet_at(vname: str, sname: str) -> tuple[int, int] | None:
        for vi, v in enumerate(vnets):
            if isinstance(v, dict) and str(v.get("name", "")).lower() == vname.lower():
                subs = _holder(v).get("subnets")
                for si, sub in enumerate(subs if isinstance(subs, list) else []):
                    if isinstance(sub, dict) and str(sub.get("name", "")).lower() == sname.lower():
                        return vi, si
        return None

    def set_subnet(vi: int, si: int, key: str, value: str) -> None:
        vnet = dict(vnets[vi])
        holder = vnet
        if isinstance(vnet.get("properties"), dict):
            holder = vnet["properties"] = dict(vnet["properties"])
        subs = holder["subnets"] = list(holder["subnets"])
        sub = dict(subs[si])
        target = sub
        if isinstance(sub.get("properties"), dict):
            target = sub["properties"] = dict(sub["properties"])
        target[key] = value
        subs[si] = sub
        vnets[vi] = vnet

    def set_nic(ni: int, value: str) -> None:
        nic = dict(nics[ni])
        target = nic
        if isinstance(nic.get("properties"), dict):
            target = nic["properties"] = dict(nic["properties"])
        target["networkSecurityGroup"] = value
        nics[ni] = nic

    def link(coll: str, key: str, label: str, singular: str) -> None:
        items = doc.get(coll)
        if not isinstance(items, list):
            return
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            name = item.get("name")
            lists = {}
            item = dict(item)
            if isinstance(item.get("properties"), dict):
                item["properties"] = dict(item["properties"])
            for back in (("subnets", "networkInterfaces") if coll == "networkSecurityGroups" else ("subnets",)):
                refs = _pop_refs(item, back)
                if refs is not None:
                    lists[back] = refs
            if not lists:
                continue
            items[i] = item
            if not isinstance(name, str):
                continue
            for back, refs in lists.items():
                loc = (coll, i, back)
                if not isinstance(refs, list):
                    problems.append((loc, f"{back} must be a list of references ({{id: ...}})"))
                    continue
                for j, ref in enumerate(refs):
                    rid = ref.get("id") if isinstance(ref, dict) else ref
                    if not isinstance(rid, str):
                        problems.append((loc + (j,), "a reference must be {id: ...} or an id string"))
                        continue
                    setter: Callable[[], None] | None
                    if back == "subnets":
                        m = _SUBNET_ID.search(rid)
                        if not m:
                            problems.append((loc + (j,),
                                             f"{rid!r} is not a subnet id (.../virtualNetworks/V/subnets/S)"))
                            continue
                        found = subnet_at(m.group(1), m.group(2))
                        what, one = f"subnet {m.group(1)}/{m.group(2)}", f"a subnet has one {singular}"
                        if found is None:
                            current, setter = None, None
                        else:
                            vi, si = found
                            current = _ref_name(_holder(_holder(vnets[vi])["subnets"][si]).get(key))
                            setter = functools.partial(set_subnet, vi, si, key, name)
                    else:
                        m = _NIC_ID.search(rid)
                        nic_name = m.group(1) if m else rid.rstrip("/").rsplit("/", 1)[-1]
                        ni = next((k for k, n in enumerate(nics) if isinstance(n, dict)
                                   and str(n.get("name", "")).lower() == nic_name.lower()), None)
                        what, one = f"NIC {nic_name!r}", "a NIC has one NSG"
                        current = None if ni is None else _ref_name(_holder(nics[ni]).get("networkSecurityGroup"))
                        setter = None if ni is None else (lambda ni=ni: set_nic(ni, name))
                    if setter is None:
                        if has_topology:
                            warnings.append((loc + (j,), (
                                f"{label} {name!r} is associated with {what}, which is not in the "
                                "input: that association is not enforced")))
                    elif current is None:
                        setter()
                    elif current.lower() != name.lower():
                        problems.append((loc + (j,), (
                            f"{label} {name!r} lists {what}, whose {key} is {current!r}: {one}")))

    link("networkSecurityGroups", "networkSecurityGroup", "NSG", "NSG")
    link("routeTables", "routeTable", "route table", "route table")
    return problems, warnings
