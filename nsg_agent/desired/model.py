"""The desired-state model (pydantic v2), in Azure's own vocabulary.

The models accept both the flat shape of docs/desired-state.md and Azure's nested REST/ARM
shape (``{"name": ..., "properties": {...}}``); read-only Azure fields (``id``, ``etag``,
``provisioningState`` ...) are accepted and ignored. Field-level checks live here; checks that
need the whole file (references, uniqueness, overlaps, limits) live in ``nsg_agent.desired.validate``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from nsg_agent.desired import memo as load_memo
from nsg_agent.desired.vocabulary import Access, Direction, Protocol
from nsg_agent.netaddr import _fast_cidr

# --- limits (Azure subscription limits, validated by nsg_agent.desired.validate) ----------------------
MAX_RULES_PER_NSG = 1000
MAX_PREFIXES_PER_SIDE = 4000
MAX_ASGS_PER_RULE_SIDE = 10
MAX_ASGS_PER_NSG = 100
MAX_ASGS_PER_NIC = 20
MAX_IPCONFIGS_PER_ASG = 4000

PRIORITY_MIN, PRIORITY_MAX = 100, 4096

# Azure: up to 80 characters, begins with a word character, ends with a word character or
# '_', and may contain word characters, '.', '-' and '_'.
NAME_RE = re.compile(r"^\w(?:[\w.\-]{0,78}\w)?$|^\w(?:[\w.\-]{0,78}_)$")

# A fleet host's name (NetworkInterface.host): a DNS-style name, also one etcd key segment.
HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")

TEMPLATE_EXPRESSION_RE = re.compile(r"^\s*\[(?!\[).*\]\s*$", re.S)

# Built-in tags that are not in Microsoft's published file. Canonical spelling -> aliases.
BUILTIN_TAGS = {
    "VirtualNetwork": ("virtual_network",),
    "AzureLoadBalancer": ("azure_loadbalancer",),
    "Internet": (),
    "AzurePlatformDNS": (),
    "AzurePlatformIMDS": (),
    "AzurePlatformLKM": (),
}
_BUILTIN_BY_KEY = {}
for _canon, _aliases in BUILTIN_TAGS.items():
    _BUILTIN_BY_KEY[_canon.lower()] = _canon
    for _a in _aliases:
        _BUILTIN_BY_KEY[_a] = _canon


def canonical_builtin_tag(name: str) -> str | None:
    """'INTERNET' -> 'Internet', 'VIRTUAL_NETWORK' -> 'VirtualNetwork'; None if not built in."""
    return _BUILTIN_BY_KEY.get(name.lower())


class TemplateExpressionError(ValueError):
    """An ARM template expression such as ``[parameters('x')]`` where a value is needed."""


def _reject_expression(value: Any) -> Any:
    if isinstance(value, str) and TEMPLATE_EXPRESSION_RE.match(value):
        raise ValueError(
            f"ARM template expression {value!r}: expressions are evaluated in ARM templates "
            "and template resources, not in a desired-state file; substitute the value"
        )
    return value


def _enum_ci(enum_cls):
    """A before-validator matching an enum's values in any letter case."""

    by_key = {m.value.lower(): m for m in enum_cls}

    def parse(value: Any) -> Any:
        _reject_expression(value)
        if isinstance(value, str):
            member = by_key.get(value.strip().lower())
            if member is None and enum_cls is Protocol and value.strip().lower() in ("any", "all"):
                member = Protocol.ANY
            if member is None:
                allowed = ", ".join(m.value for m in enum_cls)
                raise ValueError(f"{value!r} is not one of: {allowed}")
            return member
        return value

    return BeforeValidator(parse)


CIDirection = Annotated[Direction, _enum_ci(Direction)]
CIAccess = Annotated[Access, _enum_ci(Access)]
CIProtocol = Annotated[Protocol, _enum_ci(Protocol)]


def _ref_name(value: Any) -> Any:
    """A reference by name or by Azure id ({"id": ".../name"}): the last path segment."""
    if isinstance(value, dict) and "id" in value:
        value = value["id"]
    if isinstance(value, str):
        _reject_expression(value)
        return value.rstrip("/").rsplit("/", 1)[-1]
    return value


RefName = Annotated[str, BeforeValidator(_ref_name)]


def flatten_properties(data: Any) -> Any:
    """Azure's nested shape -> flat: merge ``properties`` into the object itself."""
    if isinstance(data, dict) and isinstance(data.get("properties"), dict):
        merged = {k: v for k, v in data.items() if k != "properties"}
        for k, v in data["properties"].items():
            merged.setdefault(k, v)
        return merged
    return data


# --- port and address syntax ---------------------------------------------------------------


def parse_port_range(text: str) -> tuple[int, int]:
    """'*' -> (0, 65535); '80' -> (80, 80); '1000-1005' -> (1000, 1005)."""
    s = text.strip()
    if s == "*":
        return (0, 65535)
    m = re.fullmatch(r"(\d{1,5})(?:\s*-\s*(\d{1,5}))?", s)
    if not m:
        raise ValueError(f"port {text!r} is not '*', a port or a range like 10000-10005")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    for p in (lo, hi):
        if p > 65535:
            raise ValueError(f"port {p} in {text!r} is outside 0-65535")
    if lo > hi:
        raise ValueError(f"port range {text!r} is reversed")
    return (lo, hi)


def parse_prefix(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An IP or CIDR. Host bits set in a CIDR are an error, as in Azure."""
    s = text.strip()
    try:
        return ipaddress.ip_network(s, strict=True)
    except ValueError as e:
        if "/" in s:
            try:
                ipaddress.ip_network(s, strict=False)
            except ValueError:
                pass
            else:
                net = ipaddress.ip_network(s, strict=False)
                raise ValueError(f"{text!r} has host bits set (did you mean {net}?)") from None
        raise ValueError(f"{text!r} is not an IP address or CIDR prefix ({e})") from None


def prefix_cidr(text: str) -> tuple[int, int, int]:
    """``parse_prefix`` as (family, network as int, prefix length), without building an
    ipaddress object for the common spellings; refuses the same texts with the same errors."""
    fast = _fast_cidr(text.strip(), True)
    if fast is not None:
        return fast
    net = parse_prefix(text)
    return net.version, int(net.network_address), net.prefixlen


# Prefix lists already found valid, every item a plain prefix (see _fast_cidr), are kept in
# the active load memo (nsg_agent.desired.memo) by _list_key. Such items hold no newline, so
# their join has exactly len - 1 newlines; another list of the same length joining to the
# same text has the very same items. Reloading a file with thousands of unchanged prefixes
# then checks each list with one hash.


def _list_key(items: list[str]) -> tuple[int, bytes]:
    return len(items), hashlib.blake2b("\n".join(items).encode("utf-8", "surrogatepass"), digest_size=20).digest()


def looks_like_address(text: str) -> bool:
    s = text.strip()
    return bool(re.fullmatch(r"[0-9.]+(/\d+)?", s)) or ":" in s


# Azure's read-only and informational fields, on every resource: known, and ignored quietly.
AZURE_INFORMATIONAL = frozenset({
    "id", "etag", "type", "provisioningState", "resourceGuid", "location", "tags", "apiVersion",
    "dependsOn", "comments", "kind", "sku", "zones", "extendedLocation", "systemData",
    "managedBy", "$schema", "contentVersion", "resourceGroup", "subscriptionId",
})


class _Base(BaseModel):
    # Unknown keys are not kept: nsg_agent.desired.strictness reports each one (a warning, an error with
    # --strict), so a misspelled field never passes silently. Azure's read-only and
    # informational fields (AZURE_INFORMATIONAL, plus ``azure_ignored`` of each model) are
    # known and quiet.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)
    azure_ignored: ClassVar[frozenset[str]] = frozenset()
    # Azure's resource id, kept (nsg_agent.semantics.answers repeats it in Azure-shaped answers).
    id: str | None = Field(default=None, max_length=2048)

    @model_validator(mode="before")
    @classmethod
    def _nested(cls, data: Any) -> Any:
        if isinstance(data, dict) and "properties" in data and not isinstance(data["properties"], dict):
            raise ValueError(f"properties must be an object (mapping), not {_kind(data['properties'])}")
        if not isinstance(data, dict) and not isinstance(data, BaseModel):
            raise ValueError(f"expected an object (mapping) for {_label(cls)}, not {_kind(data)}")
        return flatten_properties(data)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return f"the boolean {v}"
    if isinstance(v, (int, float)):
        return f"the number {v}"
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    if isinstance(v, list):
        return "a list"
    return "null" if v is None else type(v).__name__


def _label(cls: type) -> str:
    return {"SecurityRule": "a security rule", "NetworkSecurityGroup": "an NSG",
            "VirtualNetwork": "a VNet", "Subnet": "a subnet", "NetworkInterface": "a NIC",
            "IPConfiguration": "an IP configuration", "ApplicationSecurityGroup": "an ASG",
            "DesiredState": "the desired state", "ServiceTagFiles": "serviceTags",
            "Platform": "platform", "Lab": "lab", "ExternalHost": "a lab external host",
            }.get(cls.__name__, cls.__name__)


def _name_check(value: str) -> str:
    _reject_expression(value)
    if not NAME_RE.match(value):
        raise ValueError(
            f"name {value!r} must be 1-80 characters, start with a letter, digit or '_', "
            "end with a letter, digit or '_', and contain only those, '.' and '-'"
        )
    return value


def _as_list(value: Any) -> Any:
    if value is None:
        return []
    _reject_expression(value)  # "securityRules": "[variables('securityRules')]"
    return value


StrList = Annotated[list[str], BeforeValidator(_as_list)]
RefList = Annotated[list[RefName], BeforeValidator(_as_list)]


class SecurityRule(_Base):
    name: str
    description: str | None = Field(default=None, max_length=140)
    priority: int
    direction: CIDirection
    access: CIAccess
    protocol: CIProtocol
    sourceAddressPrefix: str | None = None
    sourceAddressPrefixes: StrList = []
    sourceApplicationSecurityGroups: RefList = []
    sourcePortRange: str | None = None
    sourcePortRanges: StrList = []
    destinationAddressPrefix: str | None = None
    destinationAddressPrefixes: StrList = []
    destinationApplicationSecurityGroups: RefList = []
    destinationPortRange: str | None = None
    destinationPortRanges: StrList = []

    _name = field_validator("name")(classmethod(lambda cls, v: _name_check(v)))

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: Any) -> Any:
        _reject_expression(v)
        if isinstance(v, bool):
            raise ValueError("priority must be an integer")
        if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit():
            v = int(v)
        if isinstance(v, int) and not PRIORITY_MIN <= v <= PRIORITY_MAX:
            raise ValueError(f"priority {v} is outside {PRIORITY_MIN}..{PRIORITY_MAX}")
        return v

    @field_validator(
        "sourceAddressPrefix", "destinationAddressPrefix", "sourcePortRange",
        "destinationPortRange", mode="before",
    )
    @classmethod
    def _singular(cls, v: Any) -> Any:
        _reject_expression(v)
        if v == "":
            return None
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)  # a port as a number (an ARM int parameter): the same port
        return v

    @field_validator("sourcePortRanges", "destinationPortRanges", mode="before")
    @classmethod
    def _port_numbers(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [str(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
        return v

    @field_validator("sourcePortRanges", "destinationPortRanges", mode="after")
    @classmethod
    def _port_list(cls, v: list[str]) -> list[str]:
        for item in v:
            _reject_expression(item)
            parse_port_range(item)
        return v

    @field_validator("sourcePortRange", "destinationPortRange", mode="after")
    @classmethod
    def _port(cls, v: str | None) -> str | None:
        if v is not None:
            parse_port_range(v)
        return v

    @field_validator("sourceAddressPrefixes", "destinationAddressPrefixes", mode="after")
    @classmethod
    def _prefix_list(cls, v: list[str]) -> list[str]:
        key = _list_key(v)
        memo = load_memo.current()
        if key in memo.prefix_lists:
            return v  # the same list was valid in an earlier load
        plain = True
        for item in v:
            if _fast_cidr(item, True) is not None:
                continue  # a plain address or prefix: none of the checks below can fail
            plain = False
            _reject_expression(item)
            if item.strip() == "*":
                raise ValueError("'*' is only allowed in the singular field (…AddressPrefix)")
            if not looks_like_address(item):
                raise ValueError(
                    f"{item!r}: a service tag is only allowed in the singular field "
                    "(…AddressPrefix), not in the list (…AddressPrefixes)"
                )
            parse_prefix(item)
        if plain:
            memo.remember_prefix_list(key)
        return v

    @field_validator("sourceAddressPrefix", "destinationAddressPrefix", mode="after")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None and v.strip() != "*" and looks_like_address(v):
            parse_prefix(v)
        return v

    @model_validator(mode="after")
    def _sides(self) -> "SecurityRule":
        for side in ("source", "destination"):
            single = getattr(self, f"{side}AddressPrefix")
            plural = getattr(self, f"{side}AddressPrefixes")
            asgs = getattr(self, f"{side}ApplicationSecurityGroups")
            given = [n for n, val in (("AddressPrefix", single), ("AddressPrefixes", plural),
                                      ("ApplicationSecurityGroups", asgs)) if val]
            if len(given) > 1:
                raise ValueError(
                    f"{side}: give one of {side}AddressPrefix, {side}AddressPrefixes or "
                    f"{side}ApplicationSecurityGroups, not " + " and ".join(side + g for g in given)
                )
            if not given:
                raise ValueError(
                    f"{side}: one of {side}AddressPrefix, {side}AddressPrefixes or "
                    f"{side}ApplicationSecurityGroups is required ('*' for any)"
                )
            if len(asgs) > MAX_ASGS_PER_RULE_SIDE:
                raise ValueError(
                    f"{side}ApplicationSecurityGroups has {len(asgs)} groups; Azure allows "
                    f"at most {MAX_ASGS_PER_RULE_SIDE}"
                )
            if len(plural) > MAX_PREFIXES_PER_SIDE:
                raise ValueError(
                    f"{side}AddressPrefixes has {len(plural)} entries; Azure allows at most "
                    f"{MAX_PREFIXES_PER_SIDE}"
                )
            if getattr(self, f"{side}PortRange") and getattr(self, f"{side}PortRanges"):
                raise ValueError(f"{side}: give {side}PortRange or {side}PortRanges, not both")
            if not getattr(self, f"{side}PortRange") and not getattr(self, f"{side}PortRanges"):
                # Azure requires it; taking a missing one as '*' would open every port.
                raise ValueError(
                    f"{side}: one of {side}PortRange or {side}PortRanges is required "
                    "('*' for any port)")
        return self

    # Convenience views used by the semantics engine.
    def address_items(self, side: str) -> list[str]:
        single = getattr(self, f"{side}AddressPrefix")
        return [single] if single else list(getattr(self, f"{side}AddressPrefixes"))

    def port_items(self, side: str) -> list[str]:
        single = getattr(self, f"{side}PortRange")
        plural = getattr(self, f"{side}PortRanges")
        return [single] if single else list(plural)


class NetworkSecurityGroup(_Base):
    # defaultSecurityRules are Azure's built-in defaults (the same in every NSG, built in
    # here); subnets / networkInterfaces back-references are turned into associations by the
    # loader before validation.
    azure_ignored: ClassVar[frozenset[str]] = frozenset({"defaultSecurityRules", "flowLogs"})
    name: str
    securityRules: Annotated[list[SecurityRule], BeforeValidator(_as_list)] = []
    flushConnection: bool = False

    _name = field_validator("name")(classmethod(lambda cls, v: _name_check(v)))

    @field_validator("flushConnection", mode="before")
    @classmethod
    def _flush(cls, v: Any) -> Any:
        return False if v is None else v


class Subnet(_Base):
    azure_ignored: ClassVar[frozenset[str]] = frozenset({
        "ipConfigurations", "delegations", "serviceEndpoints", "serviceEndpointPolicies",
        "privateEndpointNetworkPolicies", "privateLinkServiceNetworkPolicies", "purpose",
        "resourceNavigationLinks", "serviceAssociationLinks", "natGateway", "privateEndpoints",
        "ipConfigurationProfiles", "defaultOutboundAccess", "applicationGatewayIPConfigurations",
        "ipAllocations", "ipamPoolPrefixAllocations", "sharingScope"})
    name: str
    addressPrefix: str
    networkSecurityGroup: RefName | None = None
    routeTable: RefName | None = None

    @model_validator(mode="before")
    @classmethod
    def _prefixes(cls, data: Any) -> Any:
        # Azure: "addressPrefixes": [one prefix] instead of "addressPrefix"
        data = flatten_properties(data)
        if isinstance(data, dict) and "addressPrefix" not in data and "addressPrefixes" in data:
            items = data["addressPrefixes"]
            if isinstance(items, list) and len(items) == 1:
                data = {**{k: v for k, v in data.items() if k != "addressPrefixes"}, "addressPrefix": items[0]}
            elif isinstance(items, list) and len(items) > 1:
                raise ValueError(f"subnet with {len(items)} addressPrefixes: only one prefix per "
                                 "subnet is supported")
        return data

    @field_validator("addressPrefix")
    @classmethod
    def _cidr(cls, v: str) -> str:
        _reject_expression(v)
        parse_prefix(v)
        return v

    @property
    def network(self):
        return parse_prefix(self.addressPrefix)


PEERING_STATES = ("Connected", "Initiated", "Disconnected")


class VirtualNetworkPeering(_Base):
    """One side of an Azure VNet peering (``virtualNetworkPeerings[]``).

    Azure models a peering as a resource on each VNet; traffic flows only when both sides
    exist (``peeringState: Connected``). The shorthand ``peerings: [name]`` (a plain string)
    stands for a connected pair: both sides at once (``pair=True``)."""

    name: str
    remoteVirtualNetwork: RefName
    peeringState: str | None = None
    allowVirtualNetworkAccess: bool = True
    pair: bool = False  # written as the shorthand: stands for both sides

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            _reject_expression(data)
            name = data.rstrip("/").rsplit("/", 1)[-1]
            return {"name": name, "remoteVirtualNetwork": name, "pair": True}
        data = flatten_properties(data)
        if isinstance(data, dict) and "remoteVirtualNetwork" in data and "name" not in data:
            data = {**data, "name": _ref_name(data["remoteVirtualNetwork"])}
        return data

    @field_validator("peeringState", mode="before")
    @classmethod
    def _state(cls, v: Any) -> Any:
        if v is None:
            return None
        _reject_expression(v)
        if isinstance(v, str):
            for known in PEERING_STATES:
                if v.strip().lower() == known.lower():
                    return known
            raise ValueError(f"peeringState {v!r} is not one of: {', '.join(PEERING_STATES)}")
        return v

    @field_validator("allowVirtualNetworkAccess", mode="before")
    @classmethod
    def _access(cls, v: Any) -> Any:
        return True if v is None else v

    @property
    def remote(self) -> str:
        return self.remoteVirtualNetwork


class VirtualNetwork(_Base):
    azure_ignored: ClassVar[frozenset[str]] = frozenset({
        "enableDdosProtection", "ddosProtectionPlan", "dhcpOptions", "encryption",
        "bgpCommunities", "enableVmProtection", "privateEndpointVNetPolicies", "flowLogs",
        "ipAllocations", "flowTimeoutInMinutes", "defaultPublicNatGateway"})
    name: str
    addressSpace: Annotated[list[str], BeforeValidator(_as_list)]
    subnets: Annotated[list[Subnet], BeforeValidator(_as_list)] = []
    # Azure's key is virtualNetworkPeerings; both keys may be given (their entries add up).
    peerings: Annotated[list[VirtualNetworkPeering], BeforeValidator(_as_list)] = []
    onPremisesPrefixes: StrList = []

    @model_validator(mode="before")
    @classmethod
    def _azure_peerings(cls, data: Any) -> Any:
        data = flatten_properties(data)
        if isinstance(data, dict) and "virtualNetworkPeerings" in data:
            data = dict(data)
            azure = data.pop("virtualNetworkPeerings")
            own = data.get("peerings")
            if own is None:
                data["peerings"] = azure
            elif isinstance(own, list) and isinstance(azure, list):
                data["peerings"] = own + azure
            else:  # a wrong type: let the field's own validation name it
                data["peerings"] = own if not isinstance(own, list) else azure
        return data

    @field_validator("addressSpace", mode="before")
    @classmethod
    def _space(cls, v: Any) -> Any:
        # Azure nests it: "addressSpace": {"addressPrefixes": [...]}
        if isinstance(v, dict):
            v = v.get("addressPrefixes", [])
        if isinstance(v, str):
            v = [v]
        return v

    @field_validator("addressSpace", "onPremisesPrefixes", mode="after")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for item in v:
            _reject_expression(item)
            parse_prefix(item)
        return v


NEXT_HOP_TYPES = ("VirtualNetworkGateway", "VnetLocal", "Internet", "VirtualAppliance", "None")


class Route(_Base):
    """A user-defined route (Azure: routeTables[].routes[])."""

    name: str
    addressPrefix: str
    nextHopType: str
    nextHopIpAddress: str | None = None

    @field_validator("addressPrefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        _reject_expression(v)
        if not looks_like_address(v):
            raise ValueError(
                f"{v!r}: service tags as route prefixes are not supported; write the prefixes")
        parse_prefix(v)
        return v

    @field_validator("nextHopType", mode="before")
    @classmethod
    def _hop(cls, v: Any) -> Any:
        _reject_expression(v)
        if isinstance(v, str):
            for known in NEXT_HOP_TYPES:
                if v.strip().lower() == known.lower():
                    return known
            raise ValueError(f"nextHopType {v!r} is not one of: {', '.join(NEXT_HOP_TYPES)}")
        return v

    @field_validator("nextHopIpAddress")
    @classmethod
    def _hop_ip(cls, v: str | None) -> str | None:
        if v is not None:
            _reject_expression(v)
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise ValueError(f"nextHopIpAddress {v!r} is not an IP address") from None
        return v

    @model_validator(mode="after")
    def _appliance(self) -> "Route":
        if self.nextHopType == "VirtualAppliance" and not self.nextHopIpAddress:
            raise ValueError("a route with nextHopType VirtualAppliance needs nextHopIpAddress")
        return self

    @property
    def network(self):
        return parse_prefix(self.addressPrefix)


class RouteTable(_Base):
    name: str
    routes: Annotated[list[Route], BeforeValidator(_as_list)] = []

    _name = field_validator("name")(classmethod(lambda cls, v: _name_check(v)))


class IPConfiguration(_Base):
    """One of Azure's ``ipConfigurations`` of a NIC (``az network nic show``)."""

    azure_ignored: ClassVar[frozenset[str]] = frozenset({
        "privateIPAllocationMethod", "privateIPAddressVersion", "primary", "publicIPAddress",
        "loadBalancerBackendAddressPools", "loadBalancerInboundNatRules",
        "applicationGatewayBackendAddressPools", "virtualNetworkTaps", "gatewayLoadBalancer",
        "privateLinkConnectionProperties", "privateIPAddressPrefixLength"})
    name: str | None = None
    privateIPAddress: str | None = None
    subnet: RefName | None = None
    applicationSecurityGroups: RefList = []

    @field_validator("subnet", mode="before")
    @classmethod
    def _subnet_id(cls, v: Any) -> Any:
        if isinstance(v, dict) and "id" in v:
            v = v["id"]
        if isinstance(v, str):
            m = re.search(r"virtualNetworks/([^/]+)/subnets/([^/]+)/?$", v, re.I)
            if m:
                return f"{m.group(1)}/{m.group(2)}"
        return v


def _from_ipconfigs(data: Any) -> Any:
    """Azure's NIC shape -> ours: ``ipConfigurations[].privateIPAddress`` become ipAddresses,
    their (common) subnet the NIC's subnet, their ASGs the NIC's ASGs."""
    data = flatten_properties(data)
    if not isinstance(data, dict) or not isinstance(data.get("ipConfigurations"), list):
        return data
    configs = [flatten_properties(c) for c in data["ipConfigurations"]]
    if not all(isinstance(c, dict) for c in configs):
        return data  # the model reports the wrong type of the item
    out = dict(data)
    if "ipAddresses" not in out:
        missing = [str(c.get("name", i))[:40] for i, c in enumerate(configs) if not c.get("privateIPAddress")]
        if missing:
            raise ValueError(
                f"ipConfigurations {', '.join(missing)} without privateIPAddress (a Dynamic address "
                "is known only once deployed: export the deployed NIC with az network nic show)")
        out["ipAddresses"] = [c["privateIPAddress"] for c in configs]
    if "subnet" not in out:
        found = [IPConfiguration._subnet_id(c.get("subnet")) for c in configs]
        subnets = {s for s in found if isinstance(s, str)}
        if len(subnets) > 1:
            raise ValueError(f"ipConfigurations are in different subnets ({', '.join(sorted(map(str, subnets)))}): "
                             "one NIC, one subnet")
        if subnets:
            out["subnet"] = subnets.pop()
    if "applicationSecurityGroups" not in out:
        groups: list = []
        for c in configs:
            given = c.get("applicationSecurityGroups") or []
            for g in given if isinstance(given, list) else [given]:
                if g not in groups:
                    groups.append(g)
        if groups:
            out["applicationSecurityGroups"] = groups
    return out


class NetworkInterface(_Base):
    azure_ignored: ClassVar[frozenset[str]] = frozenset({
        "dnsSettings", "enableAcceleratedNetworking", "enableIPForwarding", "macAddress",
        "primary", "virtualMachine", "hostedWorkloads", "tapConfigurations", "nicType",
        "auxiliaryMode", "auxiliarySku", "disableTcpStateTracking", "vnetEncryptionSupported",
        "dscpConfiguration", "privateEndpoint", "workloadType", "privateLinkService",
        "migrationPhase", "allowPort25Out", "defaultOutboundConnectivityEnabled"})
    name: str
    subnet: str  # "vnet/subnet"
    ipAddresses: Annotated[list[str], BeforeValidator(_as_list)]
    networkSecurityGroup: RefName | None = None
    applicationSecurityGroups: RefList = []
    interface: str | None = Field(default=None, max_length=15)
    # The fleet (docs/fleet.md): the host whose agent enforces this NIC (`nsg-agent run
    # --etcd URL --host NAME`); interface names are unique per host. Ignored by a single host
    # reading a file.
    host: str | None = Field(default=None, max_length=253)
    ipConfigurations: list[IPConfiguration] = []

    @model_validator(mode="before")
    @classmethod
    def _azure_nic(cls, data: Any) -> Any:
        return _from_ipconfigs(data)

    @field_validator("ipAddresses", mode="before")
    @classmethod
    def _ips(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        return v

    @field_validator("ipAddresses", mode="after")
    @classmethod
    def _ip_syntax(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("a NIC needs at least one IP address")
        for item in v:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address") from None
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None:
            _reject_expression(v)
            if not HOST_RE.match(v):
                raise ValueError(f"host {v!r} must be a host name: letters, digits, '-', '_' and '.', "
                                 "starting and ending with a letter or digit")
        return v

    @field_validator("subnet", mode="before")
    @classmethod
    def _subnet_obj(cls, v: Any) -> Any:
        return v["id"] if isinstance(v, dict) and isinstance(v.get("id"), str) else v

    @field_validator("subnet")
    @classmethod
    def _subnet_ref(cls, v: str) -> str:
        # Accept an Azure subnet id: .../virtualNetworks/<vnet>/subnets/<subnet>
        m = re.search(r"virtualNetworks/([^/]+)/subnets/([^/]+)/?$", v, re.I)
        if m:
            return f"{m.group(1)}/{m.group(2)}"
        if v.count("/") != 1:
            raise ValueError(f"subnet {v!r} must be written 'vnet/subnet'")
        return v

    @property
    def addresses(self):
        return tuple(ipaddress.ip_address(a) for a in self.ipAddresses)


class ApplicationSecurityGroup(_Base):
    name: str

    _name = field_validator("name")(classmethod(lambda cls, v: _name_check(v)))


class ServiceTagFiles(_Base):
    files: StrList = []
    # Azure's expansion of the Internet tag, to replace the built-in one: a text file (one
    # prefix a line, '#' comments), a JSON list of prefixes, or an effective-NSG response
    # (az network nic list-effective-nsg) whose tagMap.Internet is taken.
    internet: str | None = None


class Platform(_Base):
    outboundSmtp: str = "blocked"
    platformExemption: bool = True  # 168.63.129.16 / 169.254.169.254 exempt from NSGs
    # GRE, IP-in-IP, multicast and broadcast are dropped inside a VNet whatever the NSGs say
    platformDrops: bool = True

    @field_validator("outboundSmtp")
    @classmethod
    def _smtp(cls, v: str) -> str:
        if v.lower() not in ("blocked", "allowed"):
            raise ValueError(f"outboundSmtp {v!r} must be 'blocked' or 'allowed'")
        return v.lower()


class ExternalHost(_Base):
    name: str
    address: str

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v


class Lab(_Base):
    externalHosts: Annotated[list[ExternalHost], BeforeValidator(_as_list)] = []


class DesiredState(_Base):
    # "none": the daemon removes its table and enforces nothing (the explicit way to stop
    # enforcing through the file; an empty file, or one without this host's NICs, is refused).
    enforce: Literal["all", "none"] = "all"
    virtualNetworks: Annotated[list[VirtualNetwork], BeforeValidator(_as_list)] = []
    networkInterfaces: Annotated[list[NetworkInterface], BeforeValidator(_as_list)] = []
    applicationSecurityGroups: Annotated[list[ApplicationSecurityGroup], BeforeValidator(_as_list)] = []
    networkSecurityGroups: Annotated[list[NetworkSecurityGroup], BeforeValidator(_as_list)] = []
    routeTables: Annotated[list[RouteTable], BeforeValidator(_as_list)] = []
    serviceTags: ServiceTagFiles = ServiceTagFiles()
    platform: Platform = Platform()
    lab: Lab = Lab()

    # lookups ---------------------------------------------------------------------------
    def nsg(self, name: str) -> NetworkSecurityGroup | None:
        return next((n for n in self.networkSecurityGroups if n.name.lower() == name.lower()), None)

    def vnet(self, name: str) -> VirtualNetwork | None:
        return next((v for v in self.virtualNetworks if v.name.lower() == name.lower()), None)

    def subnet(self, ref: str) -> tuple[VirtualNetwork, Subnet] | None:
        vname, _, sname = ref.partition("/")
        vnet = self.vnet(vname)
        if vnet is None:
            return None
        sub = next((s for s in vnet.subnets if s.name.lower() == sname.lower()), None)
        return (vnet, sub) if sub else None

    def route_table(self, name: str) -> RouteTable | None:
        return next((t for t in self.routeTables if t.name.lower() == name.lower()), None)

    def nic(self, name: str) -> NetworkInterface | None:
        return next((n for n in self.networkInterfaces if n.name.lower() == name.lower()), None)


SCHEMA_ID = "https://github.com/nsg-agent/nsg-agent/desired-state.schema.json"


def desired_state_schema() -> dict[str, Any]:
    """The JSON Schema of the desired-state file (``nsg-agent schema``), from these models.
    It describes the flat shape; the loader also accepts Azure's nested ``properties`` shape
    and the exports listed in docs/desired-state.md."""
    schema = DesiredState.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "nsg-agent desired state"
    schema["description"] = ("Azure Network Security Group semantics enforced with nftables: "
                             "VNets, subnets, NICs, ASGs, NSGs. See docs/desired-state.md.")
    # Editors: allow the $schema key (and Azure's informational keys) at the top level.
    schema.setdefault("properties", {})["$schema"] = {"type": "string"}
    return schema
