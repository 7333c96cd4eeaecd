"""Shared fixtures for the unit tests (no root needed unless marked ``root``)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
# The shared sample data lives beside the repository: <repo>/../shared/azure-samples
SAMPLES = REPO.parent / "shared" / "azure-samples"


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The repository's examples/ folder."""
    return EXAMPLES


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """Azure's public sample data (REST examples, real NSGs, service tags); skips if absent."""
    if not SAMPLES.is_dir():
        pytest.skip(f"sample data not found at {SAMPLES}")
    return SAMPLES



# --- small builders shared by the model/semantics/CLI tests -------------------------------
# (imported as ``from foundation_helpers import ...``; tests/ is on sys.path in pytest's default mode)

import copy
import ipaddress
import json

from nsg_agent.desired.loader import LoadedState, load_bytes
from nsg_agent.desired.vocabulary import Direction
from nsg_agent.errors import LoadError, Problem
from nsg_agent.semantics.policy import Flow, Verdict
from nsg_agent.semantics.resolver import protocol_number, resolve, verify


def rule(name: str, priority: int, direction: str = "Inbound", access: str = "Allow",
         protocol: str = "*", src: str | list | None = "*", dst: str | list | None = "*",
         sport: str | list = "*", dport: str | list = "*", **extra) -> dict:
    """A security rule in the flat shape; a list for src/dst/ports uses the plural field."""
    r: dict = {"name": name, "priority": priority, "direction": direction, "access": access,
               "protocol": protocol}
    for side, value in (("source", src), ("destination", dst)):
        if isinstance(value, list):
            r[f"{side}AddressPrefixes"] = value
        elif value is not None:
            r[f"{side}AddressPrefix"] = value
    for side, value in (("source", sport), ("destination", dport)):
        r[f"{side}PortRanges" if isinstance(value, list) else f"{side}PortRange"] = value
    r.update(extra)
    return r


def base_state(subnet_rules: list | None = None, nic_rules: list | None = None, **top) -> dict:
    """VNet v1 10.0.0.0/16, subnet s1 10.0.1.0/24 with NICs n1 10.0.1.4 and n2 10.0.1.5.
    ``subnet_rules``/``nic_rules`` (None: no NSG) become NSGs on subnet s1 / on NIC n1."""
    doc: dict = {
        "virtualNetworks": [{"name": "v1", "addressSpace": ["10.0.0.0/16"],
                             "subnets": [{"name": "s1", "addressPrefix": "10.0.1.0/24"}]}],
        "networkInterfaces": [{"name": "n1", "subnet": "v1/s1", "ipAddresses": ["10.0.1.4"]},
                              {"name": "n2", "subnet": "v1/s1", "ipAddresses": ["10.0.1.5"]}],
        "networkSecurityGroups": [],
    }
    if subnet_rules is not None:
        doc["networkSecurityGroups"].append({"name": "subnet-nsg", "securityRules": subnet_rules})
        doc["virtualNetworks"][0]["subnets"][0]["networkSecurityGroup"] = "subnet-nsg"
    if nic_rules is not None:
        doc["networkSecurityGroups"].append({"name": "nic-nsg", "securityRules": nic_rules})
        doc["networkInterfaces"][0]["networkSecurityGroup"] = "nic-nsg"
    doc.update(copy.deepcopy(top))
    return doc


def load_doc(doc: dict, name: str = "state.json") -> LoadedState:
    """Load a document through the real loader (JSON text, validation included)."""
    return load_bytes(json.dumps(doc).encode(), __import__("pathlib").Path(name))


def problems_of(doc: dict) -> list[Problem]:
    """The problems the loader reports for ``doc`` (fails the test if it loads)."""
    try:
        load_doc(doc)
    except LoadError as e:
        assert e.problems, "LoadError without problems"
        return e.problems
    raise AssertionError("document loaded but should have been rejected")


def flow(direction: str, protocol: str, local: str, remote: str,
         local_port: int | None = None, remote_port: int | None = None) -> Flow:
    return Flow(Direction(direction), protocol_number(protocol), ipaddress.ip_address(local),
                ipaddress.ip_address(remote), local_port, remote_port)


def check(loaded: LoadedState | dict, nic: str, direction: str, protocol: str, local: str,
          remote: str, local_port: int | None = None, remote_port: int | None = None) -> Verdict:
    """IP flow verify on a loaded state (or a document, loaded first)."""
    if isinstance(loaded, dict):
        loaded = load_doc(loaded)
    policy = resolve(loaded.state, loaded.tags)
    return verify(policy, nic, flow(direction, protocol, local, remote, local_port, remote_port))


def decided_by(v: Verdict) -> tuple[str, str | None, str | None]:
    """(access, NSG, rule name) of the deciding decision."""
    d = v.deciding
    return (v.access.value, d.nsg if d else None, d.rule.name if d and d.rule else None)
