"""The kernel agrees: old table + delta (one transaction through nsg_agent.kernel.backend) lists exactly like
a fresh load of the new table (root; throwaway namespaces nsgc-*; no traffic)."""

from __future__ import annotations

import copy

import pytest
import yaml

from compiler_helpers import IS_ROOT, throwaway_netns
from nsg_agent.kernel.backend import NftBackend
from nsg_agent.kernel.delta import delta
from test_delta import EDITS, EXAMPLES, FILES, compile_doc

pytestmark = [pytest.mark.root, pytest.mark.skipif(not IS_ROOT, reason="needs root (network namespaces)")]


def normalized(listing: dict) -> tuple[list[str], dict[str, list[str]]]:
    """Objects without handles and counter values, sorted; and each chain's rules in order."""
    import json

    objects, rules = [], {}
    for item in listing["nftables"]:
        kind = next(iter(item))
        if kind == "metainfo":
            continue
        obj = {k: v for k, v in item[kind].items() if k != "handle"}
        if kind == "rule":
            obj["expr"] = [{"counter": None} if "counter" in e else e for e in obj["expr"]]
            rules.setdefault(obj["chain"], []).append(json.dumps(obj, sort_keys=True))
        objects.append(json.dumps({kind: obj}, sort_keys=True))
    return sorted(objects), rules


def kernel_after(*batches: list[dict], delta_batch: list[dict] | None = None) -> tuple:
    with throwaway_netns("d") as ns:
        backend = NftBackend(ns)
        try:
            backend.replace(batches[0])
            if delta_batch is not None:
                backend.transact(delta_batch)
            return normalized(backend.list_table())
        finally:
            backend.close()


@pytest.mark.parametrize("name", FILES)
def test_example_edits_in_the_kernel(name, tmp_path):
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    old = compile_doc(doc, tmp_path, "old")
    for edit in EDITS:
        new = compile_doc(edit(copy.deepcopy(doc)), tmp_path, f"new-{edit.__name__}")
        d = delta(old, new, max_share=10.0)
        assert d is not None, edit.__name__
        assert kernel_after(old, delta_batch=d) == kernel_after(new), edit.__name__


@pytest.mark.parametrize("change", ["asg", "tag", "access"])
def test_generated_policy_changes_in_the_kernel(change, tmp_path):
    """A 200-rule policy with ASG and service-tag rules (bench/generate.py): the changes the
    benchmark times go as small deltas (changed named sets: flush + add set) and the kernel
    ends up with exactly the new table."""
    import json
    from dataclasses import replace

    from bench.generate import NAIVE_COMPARISON, SERVER_NIC, generate
    from nsg_agent.compiler import HostPlacement, compile_ruleset
    from nsg_agent.desired import loader
    from nsg_agent.semantics import resolver as semantics

    # 150 NICs: ASG rules name enough members (>= 16 intervals) to get shared named sets
    gen = generate(replace(NAIVE_COMPARISON, nics=150, asg_every=10, asgs_per_rule=10, tag_every=20,
                           tag_prefixes=4000, tags=10))
    path = gen.write(tmp_path, interface="eth0")

    def compiled() -> list[dict]:
        loaded = loader.load(path)
        return compile_ruleset(semantics.resolve(loaded.state, loaded.tags),
                               HostPlacement({SERVER_NIC: "eth0"})).commands

    old = compiled()
    state = json.loads(path.read_text())
    rules = state["networkSecurityGroups"][0]["securityRules"]
    if change == "asg":
        group = next(g for r in rules for g in r.get("sourceApplicationSecurityGroups", []))
        nic = next(n for n in state["networkInterfaces"]
                   if n["name"] != SERVER_NIC and group not in n["applicationSecurityGroups"])
        nic["applicationSecurityGroups"].append(group)
        path.write_text(json.dumps(state))
    elif change == "tag":
        tag_path = path.parent / state["serviceTags"]["files"][0]
        tags = json.loads(tag_path.read_text())
        used = {r["sourceAddressPrefix"].lower() for r in rules if "sourceAddressPrefix" in r}
        tag = next(v for v in tags["values"] if v["name"].lower() in used)
        tag["properties"]["addressPrefixes"].append("198.51.100.0/25")
        tag_path.write_text(json.dumps(tags))
    else:
        rules[0]["access"] = "Deny" if rules[0]["access"] == "Allow" else "Allow"
        path.write_text(json.dumps(state))
    new = compiled()
    d = delta(old, new)
    assert d is not None and len(d) < len(new) / 20, len(d or [])
    if change == "asg":
        assert any("flush" in c and "set" in c["flush"] for c in d)
    assert kernel_after(old, delta_batch=d) == kernel_after(new)
