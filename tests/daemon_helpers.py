"""Helpers for the reconcile tests: a tiny stand-in compiler and policy files (the fake clock,
backend and notifier ship in nsg_agent.testing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsg_agent.compiler.results import NicSummary, RuleIndex, RuleRef, Summary
from nsg_agent.kernel.backend import TABLE_FAMILY, TABLE_NAME
from nsg_agent.semantics.policy import Policy

TABLE = {"family": TABLE_FAMILY, "name": TABLE_NAME}


@dataclass
class Env:
    """What a reconcile test works with: the desired-state file, the fake kernel, the status
    store, the clock, the reconciler (and the notifier it tells)."""

    config: Path
    backend: Any
    store: Any
    clock: Any
    rec: Any
    notifier: Any = None


@dataclass
class FakeRuleset:
    commands: list[dict]
    summary: Summary
    rule_index: RuleIndex = field(default_factory=RuleIndex)


def fake_compile(policy: Policy, interfaces: dict[str, str], mode: str) -> FakeRuleset:
    """One chain per NIC with one counted, commented rule per NSG rule: enough structure for
    the reconciler (the real compiler has its own tests)."""
    commands: list[dict] = [{"add": {"table": TABLE}}, {"delete": {"table": TABLE}}, {"add": {"table": TABLE}}]
    rules = 0
    index = {}
    nics = {}
    for nic_name in sorted(interfaces):
        nic = policy.nics[nic_name]
        chain = f"nic_{nic_name}"
        nics[nic_name] = NicSummary(inbound=chain, outbound=chain, interface=interfaces[nic_name])
        commands.append({"add": {"chain": {"family": "inet", "table": TABLE_NAME, "name": chain}}})
        for level in nic.inbound + nic.outbound:
            for rule in level.rules:
                comment = f"{level.nsg}: {rule.log_name}"
                verdict = {"accept": None} if rule.access.value == "Allow" else {"drop": None}
                commands.append({"add": {"rule": {
                    "family": "inet", "table": TABLE_NAME, "chain": chain, "comment": comment,
                    "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                                        "right": interfaces[nic_name]}},
                             {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                                        "right": rule.protocol.value}},
                             {"counter": None}, verdict]}}})
                index[(chain, comment)] = RuleRef(level.nsg, rule.log_name, rule.direction.value, chain,
                                                  (f"{nic_name}/{level.kind.value}",))
                rules += 1
    summary = Summary(mode=mode, modes_used=(mode,), chains=len(interfaces), rules=rules, nics=nics)
    return FakeRuleset(commands, summary, RuleIndex(index))


def policy_text(*, extra_rule: str = "", flush: bool = False, interface: str = "eth-srv") -> str:
    """A one-NIC desired state; ``extra_rule`` is YAML for one more inbound rule."""
    return f"""\
virtualNetworks:
  - name: vnet
    addressSpace: [10.50.0.0/16]
    subnets:
      - name: web
        addressPrefix: 10.50.1.0/24
networkInterfaces:
  - name: srv
    subnet: vnet/web
    ipAddresses: [10.50.1.4]
    networkSecurityGroup: srv-nsg
    interface: {interface}
networkSecurityGroups:
  - name: srv-nsg
    flushConnection: {str(flush).lower()}
    securityRules:
      - name: allow-http
        priority: 100
        direction: Inbound
        access: Allow
        protocol: Tcp
        sourceAddressPrefix: Internet
        sourcePortRange: "*"
        destinationAddressPrefix: "*"
        destinationPortRange: "8080"
{extra_rule}"""


DENY_SSH = """\
      - name: deny-ssh
        priority: 110
        direction: Inbound
        access: Deny
        protocol: Tcp
        sourceAddressPrefix: "*"
        sourcePortRange: "*"
        destinationAddressPrefix: "*"
        destinationPortRange: "22"
"""

BAD_PRIORITY = """\
      - name: broken
        priority: 5
        direction: Inbound
        access: Allow
        protocol: Tcp
        sourceAddressPrefix: "*"
        sourcePortRange: "*"
        destinationAddressPrefix: "*"
        destinationPortRange: "22"
"""


def write(path: Path, text: str) -> None:
    """Replace the file the way editors do: write a temporary file, then rename it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
