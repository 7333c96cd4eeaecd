"""Policies at scale for the benchmarks, deterministic from a seed.

A generated policy is a desired-state document (the format of docs/desired-state.md, as a
plain dict) for one VNet with hundreds of NICs, one NSG on the benchmark's *server* NIC, and
optionally a service-tag file in Microsoft's published format. Three probe flows come with
it, all TCP from the benchmark *client* to the server NIC:

    first  (port 7001)  decided by the NSG's first rule (Allow)
    last   (port 7002)  decided by the NSG's last rule (Allow): the worst case for a linear
                        rule list; iperf3's port 5201 is in the same rule
    none   (port 7003)  matches no rule: falls to the default DenyAllInBound

How the flows are kept honest: every random prefix is drawn from 11.0.0.0-126.255.255.255
(and 2001:db8::/32 for IPv6), ASG members live in the VNet (10.70.0.0/20), random port ranges
lie in 10000-60000; the client (10.70.200.1) is outside the VNet (the Internet tag) and the
probe ports are below 10000, so only the first and the last rule can match a probe flow.
tests/test_bench_generator.py checks this against nsg_agent.semantics.resolver.

Sizes follow Azure's limits as the issue states them: up to 1,000 rules per NSG, up to 4,000
prefixes per rule side, 10 ASGs per rule side (100 per NSG), 20 ASGs per NIC, service-tag files
of 100k prefixes, hundreds of NICs.
"""

from __future__ import annotations

import ipaddress
import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

VNET_SPACE = "10.70.0.0/20"
SUBNET_COUNT = 16  # 10.70.0.0/24 ... 10.70.15.0/24
SERVER_SUBNET = "bench/s00"
SERVER_ADDRESS = "10.70.0.10"
CLIENT_ADDRESS = "10.70.200.1"  # outside the VNet: Internet
LINK_PREFIXLEN = 16  # both ends of the benchmark veth are on-link in 10.70.0.0/16
SERVER_NIC = "server"
SERVER_ASG = "BenchServers"
NSG_NAME = "bench-nsg"

PORT_FIRST, PORT_LAST, PORT_NONE = 7001, 7002, 7003
PORT_IPERF = 5201
PORT_FLIP = 7100  # reserved for the control-plane bench's edit rule (priority 100)
RANDOM_PORTS = (10000, 60000)
FIRST_PRIORITY, PRIORITY_STEP = 110, 3  # 1000 rules: 110 .. 3107; 100-109 stay free

MAX_PREFIXES_PER_SIDE = 4000
MAX_ASGS_PER_RULE = 10
MAX_ASGS_PER_NSG = 100


@dataclass(frozen=True)
class Scale:
    """What to generate. Rule kinds are assigned by position: every ``asg_every``-th rule
    uses ``asgs_per_rule`` ASGs as source, every ``tag_every``-th rule (offset 1) a service
    tag (cycling through the file's tags), the
    first ``wide_rules`` middle rules carry ``wide_prefixes`` prefixes; the others carry
    ``prefixes`` literal prefixes. The first and the last rule are literal-prefix rules."""

    rules: int = 200
    prefixes: int = 50
    ports: int = 1  # destination port ranges per rule
    wide_rules: int = 0
    wide_prefixes: int = MAX_PREFIXES_PER_SIDE
    asg_every: int = 0  # 0: no ASG rules
    asgs_per_rule: int = MAX_ASGS_PER_RULE
    asgs: int = 20  # ASGs defined (BenchServers included)
    nics: int = 20
    tag_prefixes: int = 0  # 0: no service-tag file
    tags: int = 50
    tag_every: int = 0  # 0: no service-tag rules
    ipv6_share: float = 0.0  # share of random prefixes that are IPv6
    mixed_protocols: bool = False  # middle rules use Tcp/Udp/* rather than Tcp only
    seed: int = 1

    def __post_init__(self) -> None:
        if self.rules < 2:
            raise ValueError("at least 2 rules (the first and the last probe rule)")
        if FIRST_PRIORITY + PRIORITY_STEP * (self.rules - 1) > 4096:
            raise ValueError(f"{self.rules} rules do not fit Azure's priorities 100-4096")
        if not 1 <= self.prefixes <= MAX_PREFIXES_PER_SIDE or self.wide_prefixes > MAX_PREFIXES_PER_SIDE:
            raise ValueError(f"prefixes per rule side must be 1..{MAX_PREFIXES_PER_SIDE}")
        if self.asgs > MAX_ASGS_PER_NSG:
            raise ValueError(f"at most {MAX_ASGS_PER_NSG} ASGs per NSG")
        if self.asg_every and self.asgs_per_rule > min(MAX_ASGS_PER_RULE, self.asgs - 1):
            raise ValueError("asgs_per_rule must be <= 10 and < asgs")
        if self.nics < 1 or self.nics > SUBNET_COUNT * 250:
            raise ValueError("nics must be 1..4000")
        if self.tag_every and not self.tag_prefixes:
            raise ValueError("tag rules need a service-tag file (tag_prefixes > 0)")

    def describe(self) -> str:
        parts = [f"{self.rules} rules", f"{self.prefixes} prefixes/rule"]
        if self.wide_rules:
            parts.append(f"{self.wide_rules} rules x {self.wide_prefixes} prefixes")
        if self.asg_every:
            parts.append(f"ASG rules every {self.asg_every} ({self.asgs_per_rule} ASGs each)")
        if self.tag_every:
            parts.append(f"tag rules every {self.tag_every} ({self.tag_prefixes} tag prefixes in {self.tags} tags)")
        parts.append(f"{self.nics} NICs")
        return ", ".join(parts)


# Named sizes used by the benchmark run.
NAIVE_COMPARISON = Scale(rules=200, prefixes=50, ports=1, nics=20, asgs=20, seed=1)
# The maximum policy's 1,000 rules with its ordinary 50 prefixes per rule, one port range, and
# none of its 4,000-prefix, ASG or tag rules: the largest naive rendering we load (about 62,000
# nft rules, 3-4 s with nft 1.0.6; 1000 x 20 = 25,000 rules took 1.5 s, 1000 x 40 2.9 s), so
# classify and naive are compared at the same size. Naive at the full maximum would be far more.
NAIVE_LARGE = Scale(rules=1000, prefixes=50, ports=1, nics=20, asgs=20, seed=1)
MAXIMUM = Scale(
    rules=1000, prefixes=50, ports=2, wide_rules=10, wide_prefixes=4000,
    asg_every=10, asgs_per_rule=10, asgs=100, nics=300,
    tag_prefixes=100_000, tags=50, tag_every=20, ipv6_share=0.1, mixed_protocols=True, seed=1,
)
QUICK_MAXIMUM = replace(MAXIMUM, rules=300, wide_rules=2, nics=100, tag_prefixes=20_000, tags=20, tag_every=15)


@dataclass(frozen=True)
class ProbeFlow:
    """A TCP flow from the client to the server NIC, and what the NSG must decide for it."""

    name: str
    port: int
    rule: str  # the deciding rule's name (a user rule or Azure's default rule)
    access: str  # "Allow" | "Deny"
    protocol: str = "tcp"


@dataclass
class Generated:
    scale: Scale
    state: dict[str, Any]
    service_tags: dict[str, Any] | None
    flows: dict[str, ProbeFlow] = field(default_factory=dict)

    server_nic: str = SERVER_NIC
    server_address: str = SERVER_ADDRESS
    client_address: str = CLIENT_ADDRESS

    @property
    def rules(self) -> list[dict[str, Any]]:
        return self.state["networkSecurityGroups"][0]["securityRules"]

    def prefix_count(self) -> int:
        """Literal prefixes in rules plus the service-tag file's prefixes."""
        n = sum(len(r.get("sourceAddressPrefixes", [])) for r in self.rules)
        if self.service_tags:
            n += sum(len(v["properties"]["addressPrefixes"]) for v in self.service_tags["values"])
        return n

    def write(self, directory: Path, name: str = "state", interface: str | None = None) -> Path:
        """Write the desired-state file (JSON) and its service-tag file; return its path.

        ``interface`` sets the server NIC's Linux interface (host mode)."""
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_with_interface(interface)
        if self.service_tags is not None:
            tag_file = directory / f"{name}-servicetags.json"
            tag_file.write_text(json.dumps(self.service_tags, indent=1))
            state = {**state, "serviceTags": {"files": [tag_file.name]}}
        path = directory / f"{name}.json"
        path.write_text(json.dumps(state, indent=1))
        return path

    def state_with_interface(self, interface: str | None) -> dict[str, Any]:
        if interface is None:
            return self.state
        nics = [dict(n, interface=interface) if n["name"] == SERVER_NIC else n
                for n in self.state["networkInterfaces"]]
        return {**self.state, "networkInterfaces": nics}


# --- random pieces ------------------------------------------------------------------------


def _v4_prefix(rng: random.Random) -> str:
    length = rng.choice((32, 32, 32, 32, 31, 30, 29, 28, 27, 26, 25, 24, 24, 23, 22, 20, 18, 16))
    first = rng.randint(11, 126)
    addr = (first << 24) | rng.getrandbits(24)
    net = ipaddress.IPv4Network((addr, length), strict=False)
    return str(net)


def _v6_prefix(rng: random.Random) -> str:
    length = rng.choice((128, 128, 64, 64, 56, 48))
    base = int(ipaddress.IPv6Address("2001:db8::")) | rng.getrandbits(96)
    return str(ipaddress.IPv6Network((base, length), strict=False))


def _prefixes(rng: random.Random, n: int, v6_share: float) -> list[str]:
    out: set[str] = set()
    while len(out) < n:
        out.add(_v6_prefix(rng) if v6_share and rng.random() < v6_share else _v4_prefix(rng))
    return sorted(out, key=lambda p: (":" in p, p))  # stable order, v4 first


def _port_ranges(rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    lo_all, hi_all = RANDOM_PORTS
    for _ in range(n):
        lo = rng.randint(lo_all, hi_all - 100)
        width = rng.choice((0, 0, 0, 1, 9, 99))
        out.append(str(lo) if width == 0 else f"{lo}-{lo + width}")
    return sorted(set(out))


def _nic_address(i: int) -> tuple[str, str]:
    """(subnet name, address) of the i-th generated NIC; the server NIC is 10.70.0.10."""
    subnet, host = divmod(i, 240)
    return f"s{subnet:02d}", f"10.70.{subnet}.{host + 11}"


# --- the generator ------------------------------------------------------------------------


def generate(scale: Scale) -> Generated:
    """A desired state with one NSG of ``scale.rules`` inbound rules on the server NIC."""
    rng = random.Random(scale.seed)
    asg_names = [SERVER_ASG] + [f"asg{i:03d}" for i in range(1, scale.asgs)]

    nics: list[dict[str, Any]] = [{
        "name": SERVER_NIC, "subnet": SERVER_SUBNET, "ipAddresses": [SERVER_ADDRESS],
        "networkSecurityGroup": NSG_NAME, "applicationSecurityGroups": [SERVER_ASG],
    }]
    for i in range(scale.nics - 1):
        subnet, addr = _nic_address(i)
        # Every ASG gets members (round robin), plus up to two random extra groups.
        extra = rng.sample(asg_names[1:], k=min(len(asg_names) - 1, rng.randint(0, 2)))
        groups = sorted({asg_names[1 + i % (len(asg_names) - 1)], *extra}) if len(asg_names) > 1 else []
        nics.append({"name": f"nic{i:04d}", "subnet": f"bench/{subnet}", "ipAddresses": [addr],
                     "applicationSecurityGroups": groups})

    tags_doc, tag_names = (None, [])
    if scale.tag_prefixes:
        tags_doc, tag_names = _service_tags(rng, scale)

    rules = [_probe_rule(0, "first-rule", PORT_FIRST)]
    tag_cursor = 0
    wide_left = scale.wide_rules
    for i in range(1, scale.rules - 1):
        access = "Allow" if i % 2 == 0 else "Deny"
        protocol = rng.choice(("Tcp", "Udp", "*")) if scale.mixed_protocols else "Tcp"
        rule: dict[str, Any] = {
            "name": f"r{i:04d}", "priority": FIRST_PRIORITY + PRIORITY_STEP * i,
            "direction": "Inbound", "access": access, "protocol": protocol,
            "sourcePortRange": "*",
            "destinationPortRanges": _port_ranges(rng, scale.ports),
        }
        if scale.asg_every and i % scale.asg_every == 0:
            rule["sourceApplicationSecurityGroups"] = sorted(rng.sample(asg_names[1:], scale.asgs_per_rule))
        elif scale.tag_every and i % scale.tag_every == 1:
            rule["sourceAddressPrefix"] = tag_names[tag_cursor % len(tag_names)]
            tag_cursor += 1
        elif wide_left:
            rule["sourceAddressPrefixes"] = _prefixes(rng, scale.wide_prefixes, scale.ipv6_share)
            wide_left -= 1
        else:
            rule["sourceAddressPrefixes"] = _prefixes(rng, scale.prefixes, scale.ipv6_share)
        _destination(rng, rule, i)
        rules.append(rule)
    last = _probe_rule(scale.rules - 1, "last-rule", PORT_LAST, PORT_IPERF)
    rules.append(last)
    # The probe rules carry as many prefixes as the others, the client's /32 among them.
    for r in (rules[0], rules[-1]):
        r["sourceAddressPrefixes"] = sorted(
            _prefixes(rng, scale.prefixes - 1, scale.ipv6_share) + [f"{CLIENT_ADDRESS}/32"],
            key=lambda p: (":" in p, p))

    state: dict[str, Any] = {
        "virtualNetworks": [{
            "name": "bench", "addressSpace": [VNET_SPACE],
            "subnets": [{"name": f"s{k:02d}", "addressPrefix": f"10.70.{k}.0/24"} for k in range(SUBNET_COUNT)],
        }],
        "networkInterfaces": nics,
        "applicationSecurityGroups": [{"name": n} for n in asg_names],
        "networkSecurityGroups": [{"name": NSG_NAME, "securityRules": rules}],
    }
    flows = {
        "first": ProbeFlow("first", PORT_FIRST, "first-rule", "Allow"),
        "last": ProbeFlow("last", PORT_LAST, "last-rule", "Allow"),
        "none": ProbeFlow("none", PORT_NONE, "DenyAllInBound", "Deny"),
    }
    return Generated(scale=scale, state=state, service_tags=tags_doc, flows=flows)


def _probe_rule(i: int, name: str, *ports: int) -> dict[str, Any]:
    return {
        "name": name, "priority": FIRST_PRIORITY + PRIORITY_STEP * i, "direction": "Inbound",
        "access": "Allow", "protocol": "*" if name == "last-rule" else "Tcp",
        "sourcePortRange": "*", "destinationPortRanges": [str(p) for p in ports],
        "destinationAddressPrefix": "*",
    }


def _destination(rng: random.Random, rule: dict[str, Any], i: int) -> None:
    kind = i % 4
    if kind == 0:
        rule["destinationAddressPrefix"] = "*"
    elif kind == 1:
        rule["destinationApplicationSecurityGroups"] = [SERVER_ASG]
    elif kind == 2:
        rule["destinationAddressPrefix"] = "VirtualNetwork"
    else:
        rule["destinationAddressPrefix"] = SERVER_ADDRESS


def _service_tags(rng: random.Random, scale: Scale) -> tuple[dict[str, Any], list[str]]:
    """Microsoft's ServiceTags_Public_*.json shape: a few big tags, many small ones."""
    weights = [1.0 / (k + 1) for k in range(scale.tags)]  # Zipf-like sizes
    total_w = sum(weights)
    sizes = [max(1, int(scale.tag_prefixes * w / total_w)) for w in weights]
    sizes[0] += scale.tag_prefixes - sum(sizes)
    values = []
    names = []
    for k, size in enumerate(sizes):
        region = ("", "eastus", "westeurope", "japaneast")[k % 4]
        service = f"BenchService{k:02d}"
        name = f"{service}.{region.capitalize()}" if region else service
        names.append(name)
        values.append({
            "name": name, "id": name,
            "properties": {
                "changeNumber": 1 + k % 7, "region": region, "regionId": k % 4,
                "platform": "Azure", "systemService": service,
                "addressPrefixes": _prefixes(rng, size, max(scale.ipv6_share, 0.05)),
                "networkFeatures": None if k % 3 else ["API", "NSG", "UDR", "FW"],
            },
        })
    doc = {"changeNumber": 400 + scale.seed, "cloud": "Public", "values": values}
    return doc, names


def scale_dict(scale: Scale) -> dict[str, Any]:
    return asdict(scale)
