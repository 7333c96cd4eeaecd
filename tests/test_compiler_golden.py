"""Golden files: the compiled JSON of each example and golden input, per placement and mode,
and beside each the same table as sorted nft text (``*.nft``, the table model's dump: what a
reviewer reads; ``ip saddr @set goto chain`` instead of nested JSON).

Regenerate after an intended change with ``pytest tests/test_compiler_golden.py --update-goldens``
(or ``NSG_UPDATE_GOLDEN=1``) and review the diff like code (the .nft diff shows what changed
in the table).
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest

from compiler_helpers import REPO, host_placement
from nsg_agent.compiler import FabricPlacement, compile_ruleset
from nsg_agent.desired.loader import load
from nsg_agent.kernel.state import NftRuleset
from nsg_agent.semantics.resolver import resolve

GOLDEN = Path(__file__).parent / "golden"
INPUTS = sorted((GOLDEN / "inputs").glob("*.yaml")) + sorted((REPO / "examples").glob("*.yaml"))
VARIANTS = [("host", "classify"), ("host", "simple"), ("fabric", "classify")]
CASES = [(path, placement, mode) for path in INPUTS for placement, mode in VARIANTS]
# with the flow-log statements (a rate-limited log before each drop, the rule id in the ct mark)
CASES += [(path, placement, "classify+flowlogs") for path in sorted((GOLDEN / "inputs").glob("*.yaml"))
          for placement in ("host", "fabric")]


def _case_id(case) -> str:
    path, placement, mode = case
    origin = "inputs" if path.parent.name == "inputs" else "examples"
    return f"{origin}/{path.stem}-{placement}-{mode}"


def render(path: Path, placement: str, mode: str) -> str:
    """One command per line: a changed rule or map shows up as one changed line. A mode
    ending in ``+flowlogs`` compiles the flow-log statements too (run --flow-logs)."""
    loaded = load(path)
    policy = resolve(loaded.state, loaded.tags)
    where = host_placement(policy) if placement == "host" else FabricPlacement()
    mode, _, flow = mode.partition("+")
    doc = json.loads(compile_ruleset(policy, where, mode=mode, flow_logs=flow == "flowlogs").to_json())
    lines = ",\n".join(json.dumps(c, separators=(",", ":")) for c in doc["nftables"])
    return '{"nftables":[\n' + lines + "\n]}\n"


@pytest.fixture
def update_goldens(pytestconfig) -> bool:
    return bool(pytestconfig.getoption("update_goldens")) or os.environ.get("NSG_UPDATE_GOLDEN") == "1"


def assert_golden(actual: str, target: Path, update: bool = False) -> None:
    """``actual`` equals the reviewed golden file ``target`` (written instead with
    ``update``: --update-goldens); a mismatch fails with a unified diff."""
    if update:
        target.write_text(actual)
    assert target.exists(), f"no golden file {target.name}: run with --update-goldens and review it"
    expected = target.read_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            f"golden/{target.name}", "compiled", n=1))
        pytest.fail(f"compiled output differs from golden/{target.name}:\n{diff[:20000]}")


def golden_path(path: Path, placement: str, mode: str) -> Path:
    origin = "" if path.parent.name == "inputs" else "example-"
    return GOLDEN / f"{origin}{path.stem}.{placement}-{mode}.json"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_golden(case, update_goldens):
    """The compiled ruleset equals the reviewed golden file (unified diff on mismatch)."""
    path, placement, mode = case
    assert_golden(render(path, placement, mode), golden_path(path, placement, mode), update_goldens)


def test_golden_renders_are_valid_json_and_stable():
    """Rendering the same input twice gives identical bytes that parse as JSON."""
    path = INPUTS[0]
    first, second = render(path, "host", "classify"), render(path, "host", "classify")
    assert first == second
    assert json.loads(first)["nftables"][0] == {"metainfo": {"json_schema_version": 1}}


def nft_text(json_text: str) -> str:
    """The table a compiled batch builds, as the model's sorted nft text."""
    return NftRuleset.from_commands(json.loads(json_text)["nftables"]).dump()


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_golden_nft_text(case, update_goldens):
    """The compiled table as nft text equals the reviewed .nft golden, and the JSON golden
    describes the very same table (its model dumps to the same text)."""
    path, placement, mode = case
    target = golden_path(path, placement, mode).with_suffix(".nft")
    assert_golden(nft_text(render(path, placement, mode)), target, update_goldens)
    assert nft_text(golden_path(path, placement, mode).read_text()) == target.read_text()
