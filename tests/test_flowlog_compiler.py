"""The ruleset's flow-log statements (compiler/flowmark.py): a rate-limited NFLOG before every
counted drop, with the drop itself unconditional; the rule's id in the ct mark on every
counted allow; ids that the collector can recompute from the rule index alone."""

from __future__ import annotations

import json

import pytest

from compiler_helpers import REPO, host_placement
from nsg_agent.compiler import FabricPlacement, compile_ruleset
from nsg_agent.compiler import flowmark as F
from nsg_agent.compiler.results import RuleIndex, RuleRef
from nsg_agent.desired.loader import load
from nsg_agent.semantics.resolver import resolve

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
VARIANTS = [("host", "classify"), ("host", "simple"), ("fabric", "classify")]


def _compile(path, placement, mode):
    loaded = load(path)
    policy = resolve(loaded.state, loaded.tags)
    where = host_placement(policy) if placement == "host" else FabricPlacement()
    return compile_ruleset(policy, where, mode=mode, flow_logs=True)


def _rules(rs):
    return [c["add"]["rule"] for c in rs.commands if "rule" in c.get("add", {})]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
@pytest.mark.parametrize("placement,mode", VARIANTS)
def test_every_deny_path_logs_and_every_allow_marks(path, placement, mode):
    rs = _compile(path, placement, mode)
    rules = _rules(rs)
    ids = F.ids_to_rules(RuleIndex.from_json(rs.rule_index.to_json()))  # as the collector reads it
    drops = allows = 0
    for i, rule in enumerate(rules):
        comment = rule.get("comment")
        if (rule["chain"], comment) not in rs.rule_index:
            continue
        ref = rs.rule_index.lookup(rule["chain"], comment)
        assert ref is not None
        exprs = rule["expr"]
        verdict = next(iter(exprs[-1]))
        if verdict == "drop":
            drops += 1
            # the drop stays unconditional: matches, counter, drop, nothing rate-limited
            assert not any("limit" in e or "log" in e for e in exprs)
            log_rule = rules[i - 1]
            assert log_rule["chain"] == rule["chain"] and "comment" not in log_rule
            assert log_rule["expr"][:-2] == exprs[:-2], "the log rule has the drop's matches"
            limit, log = log_rule["expr"][-2:]
            assert limit == {"limit": {"rate": F.LOG_RATE, "per": "second", "burst": F.LOG_BURST}}
            assert log["log"]["group"] == F.NFLOG_GROUP
            assert F.parse_prefix(log["log"]["prefix"]) == (ref.direction, comment)
            assert len(log["log"]["prefix"].encode()) <= F.PREFIX_MAX
        elif verdict in ("return", "accept") and ref.rule != "PlatformRule_AllowNeighborDiscovery":
            allows += 1
            mangle = [e for e in exprs if "mangle" in e]
            assert len(mangle) == 1, rule
            value = mangle[0]["mangle"]["value"]["|"]
            keep, rule_id = value[0]["&"][1], value[1]
            assert keep == 0xFFFFFFFF & ~F.slot_mask(ref.direction)  # other bits kept
            slots = F.decode_mark(rule_id)
            assert list(slots) == [ref.direction]
            assert ids[(ref.direction, slots[ref.direction])] == (ref.nsg, ref.rule)
            assert rule_id & 0xFF == 0  # bits 0-7 left to the host
    assert drops and allows


def test_no_flow_statements_outside_counted_rules():
    rs = _compile(REPO / "examples" / "lab-demo.yaml", "fabric", "classify")
    for rule in _rules(rs):
        text = json.dumps(rule["expr"])
        if '"log"' in text:
            assert "comment" not in rule
        if '"mangle"' in text:
            assert (rule["chain"], rule.get("comment")) in rs.rule_index


def test_prefix_and_ids():
    long = "n" * 80 + ": UserRule_" + "r" * 80
    p = F.log_prefix("Inbound", long)
    assert len(p.encode()) <= F.PREFIX_MAX and p.startswith("I nnn")
    assert F.parse_prefix("O web-nsg: UserRule_x") == ("Outbound", "web-nsg: UserRule_x")
    assert F.parse_prefix("something else") is None
    assert F.split_comment("web-nsg: UserRule_x") == ("web-nsg", "UserRule_x")
    assert F.split_comment("PlatformRule_BlockGre") == ("", "PlatformRule_BlockGre")
    refs = [RuleRef("b", "r", "Inbound", "c1", ()), RuleRef("a", "r", "Inbound", "c2", ()),
            RuleRef("a", "r", "Outbound", "c3", ()), RuleRef("a", "r", "Inbound", "c4", ())]
    assert F.rule_ids(refs) == {("Inbound", "a", "r"): 1, ("Inbound", "b", "r"): 2, ("Outbound", "a", "r"): 1}
    many = [RuleRef("n", f"r{i:05}", "Inbound", "c", ()) for i in range(5000)]
    ids = F.rule_ids(many)
    assert max(ids.values()) == F.MAX_ID and sorted(ids.values())[F.MAX_ID - 2] == F.MAX_ID - 1
    assert F.decode_mark((3 << 8) | (7 << 20) | 0x5) == {"Inbound": 3, "Outbound": 7}
    assert F.decode_mark(0x5) == {}
