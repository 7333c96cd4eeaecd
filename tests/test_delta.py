"""nsg_agent.kernel.delta: the delta batch turns the old table into exactly the new one (no root:
FakeBackend; the kernel check is tests/test_delta_nft.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler_helpers import host_placement, policy_from_dict
from nsg_agent.compiler import FabricPlacement, HostPlacement, compile_ruleset
from nsg_agent.desired import loader
from nsg_agent.kernel.delta import delta
from nsg_agent.semantics import resolver as semantics
from nsg_agent.testing import FakeBackend
from test_tracer_vs_semantics import desired_state

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def compile_doc(doc: dict, tmp_path: Path, name: str = "state") -> list[dict]:
    """Compile a desired-state document (written beside the examples' service-tag file)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    if not (tmp_path / "service-tags.json").exists():
        (tmp_path / "service-tags.json").write_text((EXAMPLES / "service-tags.json").read_text())
    loaded = loader.load(path)
    policy = semantics.resolve(loaded.state, loaded.tags)
    placement = HostPlacement({n: nic.interface or f"eth{i}" for i, (n, nic) in enumerate(sorted(policy.nics.items()))})
    return compile_ruleset(policy, placement).commands


def applied(*batches: list[dict], transact: bool = False) -> str:
    fake = FakeBackend()
    fake.replace(batches[0])
    for b in batches[1:]:
        fake.transact(b) if transact else fake.replace(b)
    return fake.dump()


def _rules(doc: dict) -> list[dict]:
    return doc["networkSecurityGroups"][0]["securityRules"]


def flip_access(doc: dict) -> dict:
    _rules(doc)[0]["access"] = "Deny" if _rules(doc)[0]["access"] == "Allow" else "Allow"
    return doc


def drop_last_rule(doc: dict) -> dict:
    _rules(doc).pop()
    return doc


def add_rule(doc: dict) -> dict:
    used = {r["priority"] for r in _rules(doc)}
    _rules(doc).append({"name": "delta-added", "priority": max(used) + 1, "direction": "Inbound",
                        "access": "Deny", "protocol": "Udp", "sourceAddressPrefix": "203.0.113.0/24",
                        "sourcePortRange": "*", "destinationAddressPrefix": "*", "destinationPortRange": "5353"})
    return doc


def join_asg(doc: dict) -> dict:
    asgs = [a["name"] for a in doc.get("applicationSecurityGroups", [])]
    for nic in doc["networkInterfaces"]:
        missing = [a for a in asgs if a not in nic.get("applicationSecurityGroups", [])]
        if missing:
            nic["applicationSecurityGroups"] = nic.get("applicationSecurityGroups", []) + missing[:1]
            return doc
    # every NIC is in every ASG (or there are none): a new ASG, named by a new rule
    doc.setdefault("applicationSecurityGroups", []).append({"name": "delta-asg"})
    doc["networkInterfaces"][0].setdefault("applicationSecurityGroups", []).append("delta-asg")
    add_rule(doc)
    _rules(doc)[-1].pop("destinationAddressPrefix")
    _rules(doc)[-1]["destinationApplicationSecurityGroups"] = ["delta-asg"]
    return doc


def drop_nic(doc: dict) -> dict:
    doc["networkInterfaces"].pop()
    return doc


EDITS = [flip_access, drop_last_rule, add_rule, join_asg, drop_nic]
FILES = ["webservers-asg.yaml", "port80-subnet-nic.yaml", "hub-spoke.yaml", "lab-demo.yaml"]


@pytest.mark.parametrize("edit", EDITS, ids=[e.__name__ for e in EDITS])
@pytest.mark.parametrize("name", FILES)
def test_example_edits(name, edit, tmp_path):
    """For every example and edit, the old table plus the delta equals the new table."""
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    old = compile_doc(doc, tmp_path, "old")
    new = compile_doc(edit(copy.deepcopy(doc)), tmp_path, "new")
    d = delta(old, new, max_share=10.0)
    assert d is not None
    assert applied(old, d, transact=True) == applied(new)


def test_content_edit_keeps_names_and_is_small(tmp_path):
    """An ASG membership change or an access flip rewrites the one level it touches (its
    tree may be renumbered), not the table: the other levels, the NIC and base chains keep
    their names and are not in the delta."""
    doc = yaml.safe_load((EXAMPLES / "webservers-asg.yaml").read_text())
    old = compile_doc(doc, tmp_path, "old")
    for edit in (join_asg, flip_access):
        new = compile_doc(edit(copy.deepcopy(doc)), tmp_path, "new")
        d = delta(old, new)
        assert d is not None and 0 < len(d) < len(new) / 2, (edit.__name__, d and len(d))
        assert not any("delete" in c for c in d)
        touched = set()
        for c in d:
            (_, obj), = c.items()
            (_, body), = obj.items()
            touched.add((body.get("name") or body.get("chain")).split("_")[1])
        assert len(touched) == 1, (edit.__name__, touched)  # one level: lvl_<h8>...


def test_unchanged_is_empty():
    p = policy_from_dict(yaml.safe_load((EXAMPLES / "port80-subnet-nic.yaml").read_text()))
    rs = compile_ruleset(p, host_placement(p))
    assert delta(rs.commands, rs.commands) == []


def test_structural_change_is_refused():
    """Another placement (other base chains) cannot go as a delta: replace instead."""
    p = policy_from_dict(yaml.safe_load((EXAMPLES / "port80-subnet-nic.yaml").read_text()))
    host = compile_ruleset(p, host_placement(p)).commands
    fabric = compile_ruleset(p, FabricPlacement()).commands
    assert delta(host, fabric) is None


def test_large_delta_is_left_to_replace(tmp_path):
    """A delta carrying more than half of the table is not worth it (default share)."""
    a = yaml.safe_load((EXAMPLES / "webservers-asg.yaml").read_text())
    b = yaml.safe_load((EXAMPLES / "lab-demo.yaml").read_text())
    old, new = compile_doc(a, tmp_path, "a"), compile_doc(b, tmp_path, "b")
    assert delta(old, new) is None
    d = delta(old, new, max_share=10.0)
    assert d is not None and applied(old, d, transact=True) == applied(new)


def _mutated(doc: dict, data) -> dict:
    doc = copy.deepcopy(doc)
    rules = [r for g in doc["networkSecurityGroups"] for r in g["securityRules"]]
    if rules and data.draw(st.booleans()):
        r = data.draw(st.sampled_from(rules))
        r["access"] = "Deny" if r["access"] == "Allow" else "Allow"
    for nic in doc["networkInterfaces"]:
        if data.draw(st.booleans()):
            nic["applicationSecurityGroups"] = data.draw(
                st.lists(st.sampled_from(["asgA", "asgB"]), max_size=2, unique=True))
    return doc


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_pairs(data):
    """Random policies, edited or unrelated: old table + delta == new table, every time."""
    a = data.draw(desired_state())
    b = _mutated(a, data) if data.draw(st.booleans()) else data.draw(desired_state())
    pa, pb = policy_from_dict(a), policy_from_dict(b)
    old = compile_ruleset(pa, host_placement(pa)).commands
    new = compile_ruleset(pb, host_placement(pb)).commands
    d = delta(old, new, max_share=10.0)
    if d is None:  # only for structural changes: other base chains
        base = lambda cmds: [c for c in cmds if "hook" in c.get("add", {}).get("chain", {})]  # noqa: E731
        assert base(old) != base(new)
        return
    assert applied(old, d, transact=True) == applied(new)
