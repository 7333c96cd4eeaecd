"""The nftables compiler: a resolved Policy in, libnftables JSON for one table out.

Pure: no nftables, pyroute2 or watchdog import here (a test proves it). See README.md.

    from nsg_agent.compiler import compile_ruleset, HostPlacement, FabricPlacement
    rs = compile_ruleset(policy, HostPlacement({"web1": "eth0"}), mode="classify")
    rs.commands   # add table, delete table, add table, chains, maps, rules
    rs.to_json()  # {"nftables": [metainfo, *commands]}, deterministic bytes
    rs.summary    # Summary: counts, NICs, level chains (compiler/results.py)
    rs.rule_index # RuleIndex: (chain, comment) -> RuleRef(nsg, rule, direction, chain, scope)
"""

from nsg_agent.compiler.naming import TABLE_NAME
from nsg_agent.compiler.placement import FabricPlacement, HostPlacement
from nsg_agent.compiler.render import MAX_LEVEL_ELEMENTS, MODES, Ruleset, compile_ruleset
from nsg_agent.compiler.results import RuleIndex, RuleRef, Summary

__all__ = [
    "FabricPlacement",
    "HostPlacement",
    "MAX_LEVEL_ELEMENTS",
    "MODES",
    "RuleIndex",
    "RuleRef",
    "Ruleset",
    "Summary",
    "TABLE_NAME",
    "compile_ruleset",
]
