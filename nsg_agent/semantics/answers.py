"""Network Watcher's answers in the shapes Azure returns them (pure).

- ``effective_nsg_list``: the body of ``az network nic list-effective-nsg`` / the REST
  ``effectiveNetworkSecurityGroups`` call (NetworkInterfaceEffectiveNSGList): per NSG
  association ``networkSecurityGroup.id``, ``association``, ``effectiveSecurityRules`` and
  ``tagMap``, written as Azure writes them (recorded response in
  docs/evidence/): ``protocol: "All"`` for ``*``, ports ``"0-65535"``,
  ``*`` addresses as ``"0.0.0.0/0"`` (twice in the plural list, as recorded), names
  ``securityRules/<n>`` / ``defaultSecurityRules/<n>``, ``expanded…AddressPrefix`` only on a
  side that names a tag or ASG.
- ``ip_flow_verify``: ``{"access", "ruleName", "ruleId"}`` as Azure's IP flow verify answers
  (``securityRules/<n>`` with the rule's id; ``defaultSecurityRules/<n>`` with an empty id),
  with the agent's richer per-level path beside it. Azure's API considers NSGs only; where the
  platform decides (GRE, multicast, SMTP block, platform exemption) or no NSG applies
  (Azure's error ``NsgsNotAppliedOnNic``), ``azure`` says what Azure's API itself answers.

Resource ids: an object imported from Azure keeps its ``id``; otherwise one is formed with
the zero subscription and resource group ``nsg-agent`` (Azure's own form, a placeholder).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from nsg_agent.desired import networks
from nsg_agent.desired.model import DesiredState, looks_like_address
from nsg_agent.desired.vocabulary import Access, Direction, LevelKind, Protocol
from nsg_agent.semantics.policy import AddressTerm, Flow, NicPolicy, PortTerm, ResolvedRule, Verdict
from nsg_agent.semantics.resolver import Resolver, evaluate

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "nsg-agent"
ANY_V4 = "0.0.0.0/0"


class ResourceIds:
    """Azure resource ids of the desired state's objects (given ones kept)."""

    def __init__(self, state: DesiredState):
        self.state = state
        self.prefix = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
        for obj in (*state.networkSecurityGroups, *state.networkInterfaces, *state.virtualNetworks):
            given = _given_id(obj)
            if given and "/providers/" in given:
                self.prefix = given.split("/providers/", 1)[0]
                break

    def _id(self, obj: Any, kind: str, name: str) -> str:
        return _given_id(obj) or f"{self.prefix}/providers/Microsoft.Network/{kind}/{name}"

    def nsg(self, name: str) -> str:
        return self._id(self.state.nsg(name), "networkSecurityGroups", name)

    def nic(self, name: str) -> str:
        return self._id(self.state.nic(name), "networkInterfaces", name)

    def subnet(self, ref: str) -> str:
        vnet, _, sub = ref.partition("/")
        found = self.state.subnet(ref)
        return self._id(found[1] if found else None, "virtualNetworks", f"{vnet}/subnets/{sub}")

    def rule(self, nsg: str, rule: str) -> str:
        return f"{self.nsg(nsg)}/securityRules/{rule}"


def _given_id(obj: Any) -> str | None:
    if obj is None:
        return None
    value = getattr(obj, "id", None)
    if value is None and getattr(obj, "model_extra", None):
        value = obj.model_extra.get("id")
    return value if isinstance(value, str) and value.startswith("/subscriptions/") else None


# --- effective security rules ---------------------------------------------------------------


def rule_name(rule: ResolvedRule) -> str:
    """Azure's name of a rule in effective rules and IP flow verify."""
    if rule.platform:
        return f"platformRules/{rule.name}"
    return f"{'defaultSecurityRules' if rule.default else 'securityRules'}/{rule.name}"


def _ports(term: PortTerm) -> dict[str, Any]:
    ranges = [f"{lo}-{hi}" for lo, hi in term.ranges]
    return {"range": ranges[0] if len(ranges) == 1 else None, "ranges": ranges}


def _named(term: AddressTerm) -> bool:
    """A tag or ASG: its prefixes are not what the user wrote."""
    if term.any:
        return False
    return term.label.startswith("asg:") or not all(_is_literal(x) for x in term.label.split(","))


def _is_literal(text: str) -> bool:
    return looks_like_address(text)


def _cidr_text(text: str) -> str:
    """Azure writes a single address as a /32 (or /128) prefix."""
    return text if "/" in text else f"{text}/{128 if ':' in text else 32}"


class _Expander:
    """Tag and ASG expansions of one NIC, as Azure lists them (tagMap)."""

    def __init__(self, resolver: Resolver, nic: NicPolicy, ids: ResourceIds):
        self.resolver = resolver
        self.nic = nic
        self.ids = ids
        self.ipv6 = any(a.version == 6 for a in nic.addresses)
        self.tag_map: dict[str, list[str]] = {}

    def _visible(self, prefixes: Iterable[str], tag: str) -> list[str]:
        # Azure's recorded answer for an IPv4-only NIC lists no IPv6 Internet prefix (the
        # IPv6 half is our definition, see nsg_agent.desired.builtin_tags): show it on dual-stack NICs.
        if tag == "Internet" and not self.ipv6:
            return [p for p in prefixes if ":" not in p]
        return list(prefixes)

    def expand(self, term: AddressTerm) -> list[str]:
        if term.label == "VirtualNetwork":
            found = self.resolver.virtual_network_prefixes(self.nic.vnet, self.nic.subnet)
        else:
            found = [str(n) for n in term.prefixes]
        found = self._visible(found, term.label)
        if not term.label.startswith("asg:"):
            self.tag_map[term.label] = found
        return found

    def side(self, prefix: str, term: AddressTerm) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if term.any:
            out[f"{prefix}AddressPrefix"] = ANY_V4
            out[f"{prefix}AddressPrefixes"] = [ANY_V4, ANY_V4]  # as Azure returns it
        elif term.label.startswith("asg:"):
            out[f"{prefix}ApplicationSecurityGroups"] = [
                {"id": f"{self.ids.prefix}/providers/Microsoft.Network/applicationSecurityGroups/{part[4:]}"}
                for part in term.label.split(",")]
        elif _named(term):
            out[f"{prefix}AddressPrefix"] = term.label
            out[f"{prefix}AddressPrefixes"] = [term.label]
        else:
            items = [_cidr_text(x) for x in term.label.split(",")]
            if len(items) == 1:
                out[f"{prefix}AddressPrefix"] = items[0]
            out[f"{prefix}AddressPrefixes"] = items
        if _named(term):
            out[f"expanded{prefix[0].upper()}{prefix[1:]}AddressPrefix"] = self.expand(term)
        return out


def effective_rule_json(rule: ResolvedRule, expander: _Expander) -> dict[str, Any]:
    out: dict[str, Any] = {"name": rule_name(rule),
                           "protocol": "All" if rule.protocol is Protocol.ANY else rule.protocol.value}
    for side, term in (("source", rule.source_ports), ("destination", rule.destination_ports)):
        ports = _ports(term)
        if ports["range"] is not None:
            out[f"{side}PortRange"] = ports["range"]
    for side, term in (("source", rule.source_ports), ("destination", rule.destination_ports)):
        out[f"{side}PortRanges"] = _ports(term)["ranges"]
    src, dst = expander.side("source", rule.source), expander.side("destination", rule.destination)
    for key in ("AddressPrefix", "AddressPrefixes", "ApplicationSecurityGroups"):
        for name, fields in (("source", src), ("destination", dst)):
            if f"{name}{key}" in fields:
                out[f"{name}{key}"] = fields[f"{name}{key}"]
    for name, fields in (("source", src), ("destination", dst)):
        key = f"expanded{name[0].upper()}{name[1:]}AddressPrefix"
        if key in fields:
            out[key] = fields[key]
    out.update({"access": rule.access.value, "priority": rule.priority, "direction": rule.direction.value})
    return out


def effective_nsg_list(state: DesiredState, resolver: Resolver, nic: NicPolicy,
                       directions: Iterable[Direction] = (Direction.INBOUND, Direction.OUTBOUND),
                       ) -> dict[str, Any]:
    """Azure's NetworkInterfaceEffectiveNSGList body for ``nic``: one entry per NSG level
    (subnet NSG first), each with its effective rules and the tagMap of the tags they use."""
    ids = ResourceIds(state)
    directions = tuple(directions)
    entries = []
    for kind in (LevelKind.SUBNET, LevelKind.NIC):
        expander = _Expander(resolver, nic, ids)
        rules: list[dict] = []
        nsg = None
        for direction in directions:
            for lv in nic.levels(direction):
                if lv.kind is kind:
                    nsg = lv.nsg
                    rules += [effective_rule_json(r, expander) for r in lv.rules]
        if nsg is None:
            continue
        assoc = ({"subnet": {"id": ids.subnet(nic.subnet)}} if kind is LevelKind.SUBNET
                 else {"networkInterface": {"id": ids.nic(nic.nic)}})
        entries.append({"networkSecurityGroup": {"id": ids.nsg(nsg)}, "association": assoc,
                        "effectiveSecurityRules": rules, "tagMap": expander.tag_map})
    return {"value": entries}


# --- IP flow verify ------------------------------------------------------------------------


NSGS_NOT_APPLIED = "NsgsNotAppliedOnNic"


def nsg_only(nic: NicPolicy) -> NicPolicy:
    """The NIC as Azure's IP flow verify sees it: its NSGs, no platform rule."""
    return dataclasses.replace(nic, platform_drops=(), smtp_block=None, platform_exempt=None,
                               outbound_platform=())


def _answer(verdict: Verdict, ids: ResourceIds) -> dict[str, Any]:
    deciding = verdict.deciding
    rule = deciding.rule if deciding is not None else None
    if rule is None:
        return {"access": verdict.access.value, "ruleName": None, "ruleId": ""}
    rule_id = "" if rule.default or rule.platform else ids.rule(rule.nsg, rule.name)
    return {"access": verdict.access.value, "ruleName": rule_name(rule), "ruleId": rule_id}


def routing_notes(state: DesiredState, nic: NicPolicy, flow: Flow) -> list[str]:
    """A note when routing (not an NSG) would drop this flow in Azure: the route to the
    remote address has next hop None."""
    route = networks.route_for(state, nic.subnet, flow.remote)
    if route is not None and route.next_hop_type == "None":
        return [f"routing: {route.describe()} drops traffic between {nic.nic} and "
                f"{flow.remote} whatever the NSGs say (Azure's IP flow verify answers the NSG question only)"]
    return []


def ip_flow_verify(state: DesiredState, nic: NicPolicy, flow: Flow, verdict: Verdict,
                   path: list[dict[str, Any]]) -> dict[str, Any]:
    """The verify answer: Azure's three fields (for the data plane), the path, and what
    Azure's own API would answer where it differs."""
    ids = ResourceIds(state)
    out = _answer(verdict, ids)
    deciding = verdict.deciding
    out["nsg"] = deciding.nsg if deciding else None
    out["path"] = path
    if not nic.inbound and not nic.outbound:
        out["azure"] = {"error": {"code": NSGS_NOT_APPLIED,
                                  "message": f"No NSGs are applied on network interface {nic.nic}: "
                                             "Azure's IP flow verify refuses the question; "
                                             "the data plane allows the flow"}}
    else:
        azure = _answer(evaluate(nsg_only(nic), flow), ids)
        if azure != _answer(verdict, ids):
            out["azure"] = azure
    notes = routing_notes(state, nic, flow)
    if notes:
        out["notes"] = notes
    return out


__all__ = ["ResourceIds", "effective_nsg_list", "ip_flow_verify", "rule_name", "nsg_only",
           "routing_notes", "NSGS_NOT_APPLIED", "Access"]
