"""Real nft accepts what the compiler emits (root; throwaway namespaces named nsgc-*)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler_helpers import IS_ROOT, big_policy, load_with_libnftables, nft_in_netns, throwaway_netns
from nsg_agent.compiler import HostPlacement, compile_ruleset

pytestmark = [pytest.mark.root, pytest.mark.skipif(not IS_ROOT, reason="needs root (network namespaces)")]

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def netns():
    with throwaway_netns("c") as name:
        yield name


def test_golden_rulesets_load_and_replace(netns, tmp_path):
    """Every golden ruleset passes `nft -c`, applies, and re-applies over itself (replace idiom)."""
    files = sorted(GOLDEN.glob("*.json"))
    assert files
    for path in files:
        check = nft_in_netns(netns, "-c", "-j", "-f", str(path))
        assert check.returncode == 0, f"{path.name}: {check.stderr}"
        for _ in range(2):
            applied = nft_in_netns(netns, "-j", "-f", str(path))
            assert applied.returncode == 0, f"{path.name}: {applied.stderr}"
    listed = nft_in_netns(netns, "list", "tables")
    assert listed.stdout.split() == ["table", "inet", "nsg_agent"]


@pytest.mark.parametrize("mode", ["classify", "simple"])
def test_large_policy_loads_with_libnftables(netns, tmp_path, mode):
    """1000 rules x 20 prefixes load through libnftables' JSON API; the listing shows the comments."""
    rs = compile_ruleset(big_policy(1000, 20), HostPlacement({"nic0": "eth0"}), mode=mode)
    assert rs.summary.modes_used == (mode,)
    path = tmp_path / "big.json"
    path.write_text(rs.to_json())
    proc = load_with_libnftables(netns, path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = json.loads(proc.stdout)["nftables"]
    comments = {o["rule"].get("comment") for o in listed if "rule" in o}
    assert {"big-nsg: UserRule_rule0000", "big-nsg: UserRule_rule0999",
            "big-nsg: DefaultRule_DenyAllInBound"} <= comments
    chains = {o["chain"]["name"] for o in listed if "chain" in o}
    assert {c["add"]["chain"]["name"] for c in rs.commands if "chain" in c.get("add", {})} == chains
