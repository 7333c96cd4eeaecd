"""Names of everything the lab creates: pure functions, no kernel access.

One lab has one name (``[a-z0-9][a-z0-9-]*``, at most ``MAX_LAB_NAME`` characters). Every
network namespace it creates is called ``nsgl-<lab>-<role>``:

    nsgl-<lab>-fab     the fabric: one bridge per subnet, routing, the NSG rules
    nsgl-<lab>-n<i>    NIC number i (its veth is ``eth0`` inside)
    nsgl-<lab>-h<i>    external host number i (lab.externalHosts)
    nsgl-<lab>-plat    the platform host 168.63.129.16

Interfaces live only inside the lab's namespaces (never in the root namespace), are at most
15 characters and all start with ``nsg``:

    nsgb<i>   the bridge of subnet i (fabric)       nsgp<i>  NIC i's bridge port (fabric)
    nsgh<i>   external host i's routed port (fabric) nsghpl   the platform host's port (fabric)
    nsgt<i>   a veth end on its way into a namespace (renamed to eth0 there)

Indexes are allocated stably: a name keeps its index for the life of the lab, so editing the
file (adding or removing a NIC) never renames an existing namespace or interface.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Mapping

from nsg_agent.errors import InvalidInput


def _netns_prefix() -> str:
    """``nsgl-``, or NSG_AGENT_LAB_NETNS_PREFIX (``nsg`` + up to 4 of [a-z0-9] + ``-``), which
    lets a test suite give its labs a namespace prefix of its own."""
    value = os.environ.get("NSG_AGENT_LAB_NETNS_PREFIX", "")
    return value if re.fullmatch(r"nsg[a-z0-9]{0,4}-", value) else "nsgl-"


NETNS_PREFIX = _netns_prefix()
MAX_LAB_NAME = 20
IFNAME_MAX = 15
INNER_IF = "eth0"
STATE_DIR = Path("/run/nsg-agent/lab")

_LAB_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,%d}[a-z0-9])?$" % (MAX_LAB_NAME - 2))
_ROLE_RE = re.compile(r"^(fab|plat|n\d+|h\d+)$")


class LabNameError(InvalidInput, ValueError):
    """A lab name that cannot be used for namespace names."""


def lab_name_from_file(path: str | Path) -> str:
    """'examples/lab-demo.yaml' -> 'lab-demo'; anything else folded to [a-z0-9-]."""
    stem = Path(path).name
    for suffix in (".yaml", ".yml", ".json"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    name = name[:MAX_LAB_NAME].strip("-")
    return name or "lab"


def check_lab_name(name: str) -> str:
    """Return ``name`` if it is a valid lab name, else raise LabNameError saying why."""
    if not _LAB_RE.match(name):
        raise LabNameError(
            f"lab name {name!r} must be 1-{MAX_LAB_NAME} characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit")
    return name


def fabric_netns(lab: str) -> str:
    return f"{NETNS_PREFIX}{lab}-fab"


def platform_netns(lab: str) -> str:
    return f"{NETNS_PREFIX}{lab}-plat"


def nic_netns(lab: str, index: int) -> str:
    return f"{NETNS_PREFIX}{lab}-n{index}"


def host_netns(lab: str, index: int) -> str:
    return f"{NETNS_PREFIX}{lab}-h{index}"


def _ifname(name: str) -> str:
    assert len(name) <= IFNAME_MAX and name.startswith("nsg"), name
    return name


def bridge_ifname(index: int) -> str:
    return _ifname(f"nsgb{index}")


def nic_port_ifname(index: int) -> str:
    return _ifname(f"nsgp{index}")


def host_port_ifname(index: int) -> str:
    return _ifname(f"nsgh{index}")


PLATFORM_PORT = "nsghpl"


def transit_ifname(tag: str) -> str:
    """The temporary name of the veth end that moves into a NIC/host namespace."""
    return _ifname(f"nsgt{tag}")


def lab_netns_pattern(lab: str) -> re.Pattern[str]:
    """Matches exactly the namespace names that lab ``lab`` may create (and no other lab's:
    lab ``a`` does not match ``nsgl-a-b-fab``, which belongs to lab ``a-b``)."""
    return re.compile(r"^%s%s-(fab|plat|n\d+|h\d+)$" % (re.escape(NETNS_PREFIX), re.escape(lab)))


def lab_of_netns(name: str) -> str | None:
    """The lab a namespace name belongs to, or None if it is not a lab namespace."""
    if not name.startswith(NETNS_PREFIX):
        return None
    rest = name[len(NETNS_PREFIX):]
    lab, sep, role = rest.rpartition("-")
    if not sep or not _ROLE_RE.match(role) or not _LAB_RE.match(lab):
        return None
    return lab


def state_file(lab: str, state_dir: Path = STATE_DIR) -> Path:
    return state_dir / f"{lab}.json"


def allocate_indexes(keys: Iterable[str], previous: Mapping[str, int] | None = None) -> dict[str, int]:
    """Stable small indexes for ``keys``: a key seen before keeps its index; new keys get the
    lowest indexes not in use, in the order given. Keys compare case-insensitively (Azure
    names do), and the result is keyed by the lowercased name."""
    prev = {k.lower(): v for k, v in (previous or {}).items()}
    wanted = []
    for k in keys:
        lk = k.lower()
        if lk not in wanted:
            wanted.append(lk)
    out: dict[str, int] = {k: prev[k] for k in wanted if k in prev}
    used = set(out.values())
    nxt = 0
    for k in wanted:
        if k in out:
            continue
        while nxt in used:
            nxt += 1
        out[k] = nxt
        used.add(nxt)
    return out
