"""Keeping a lab equal to its desired-state file: topology first, then the rules.

``reconcile_topology(state, lab)`` makes namespaces, bridges, veths, addresses, routes and
the lab's own tables (anti-spoofing, VNet isolation) match the file, incrementally, and
records the plan in the state file. ``apply_rules`` compiles the policy with the project's
compiler in fabric placement and replaces ``inet nsg_agent`` in the fabric namespace with
the project's backend (``nsg_agent.kernel.backend``), in one transaction. ``reconcile_lab`` does both.

The lab's own tables are not the agent's table: they go through the same kernel entry point
(``nsg_agent.kernel.backend.NftBackend``) opened with ``owns=labrules.LAB_TABLES``, so that backend
refuses the agent's table as the agent's backend refuses the lab's: one transaction for both
lab tables.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nsg_agent.desired.model import DesiredState
from nsg_agent.errors import OperationFailed
from nsg_agent.lab import build, labrules, naming
from nsg_agent.lab.build import TopologyChanges
from nsg_agent.lab.topology import LabPlan, plan_lab

if TYPE_CHECKING:
    from nsg_agent.compiler.results import Summary


class LabApplyError(OperationFailed, RuntimeError):
    pass


def _desired(state: Any) -> DesiredState:
    return state.state if hasattr(state, "state") else state


def write_lab_tables(netns: str, commands: list[dict]) -> None:
    """Replace the lab's own tables in ``netns`` in one transaction, through the agent's one
    kernel entry point (a backend that owns only those tables)."""
    from nsg_agent.kernel.backend import NftBackend
    from nsg_agent.kernel.errors import NftError

    backend = NftBackend(netns, owns=labrules.LAB_TABLES)
    try:
        backend.transact(commands)
    except NftError as e:
        raise LabApplyError(f"nft in {netns} refused the lab tables: {e}") from None
    finally:
        backend.close()


def reconcile_topology(state: Any, lab: str, *, source: str | Path | None = None,
                       state_dir: Path = naming.STATE_DIR) -> TopologyChanges:
    """Make lab ``lab``'s topology match ``state`` (a LoadedState or DesiredState).

    Idempotent and incremental: what did not change is not touched (a NIC keeps its
    namespace, so its inode). Returns what changed; ``.fabric`` is the namespace where the
    agent's rules belong.
    """
    desired = _desired(state)
    prev = build.previous_plan(lab, state_dir)
    plan = plan_lab(desired, lab, prev)
    record = build.read_state(lab, state_dir) or {}
    changes = build.converge(plan, prev)
    record.update({"version": 1, "lab": lab, "plan": plan.to_dict(),
                   "topology_time": time.time()})
    if source is not None:
        record["file"] = str(Path(source).resolve())
    if changes.built:
        record.pop("rules", None)
        record["created"] = time.time()
    # The lab's own tables are rewritten only when they change: every nftables transaction
    # moves the namespace's generation, which would make the agent re-verify its own table.
    commands = labrules.lab_commands(plan)
    digest = hashlib.sha256(json.dumps(commands, sort_keys=True).encode()).hexdigest()
    if changes.built or record.get("lab_rules_sha256") != digest:
        write_lab_tables(plan.fabric, commands)
        record["lab_rules_sha256"] = digest
    build.write_state(lab, record, state_dir)
    return changes


@dataclass(frozen=True)
class RulesApplied:
    fabric: str
    mode: str
    summary: Summary


def apply_rules(policy: Any, fabric: str, *, mode: str = "classify", backend: Any = None) -> RulesApplied:
    """Compile ``policy`` for the fabric and replace ``inet nsg_agent`` there atomically."""
    from nsg_agent.compiler import FabricPlacement, compile_ruleset
    from nsg_agent.kernel.backend import NftBackend

    ruleset = compile_ruleset(policy, FabricPlacement(), mode=mode)
    own = backend is None
    be = backend or NftBackend(netns=fabric)
    try:
        be.check(ruleset.commands)
        be.replace(ruleset.commands)
    finally:
        if own:
            be.close()
    return RulesApplied(fabric=fabric, mode=mode, summary=ruleset.summary)


def record_rules(lab: str, loaded: Any, applied: RulesApplied,
                 state_dir: Path = naming.STATE_DIR) -> None:
    """Note in the lab's state file which file's rules are enforced (for status and probe)."""
    record_rules_raw(lab, getattr(loaded, "sha256", None), applied.mode, applied.summary, state_dir)


def record_rules_raw(lab: str, sha256: str | None, mode: str, summary: Summary,
                     state_dir: Path = naming.STATE_DIR) -> None:
    record = build.read_state(lab, state_dir) or {}
    record["rules"] = {
        "time": time.time(), "mode": mode, "sha256": sha256,
        "chains": summary.chains, "rules": summary.rules, "set_elements": summary.set_elements,
    }
    build.write_state(lab, record, state_dir)


def reconcile_lab(loaded: Any, lab: str, *, mode: str = "classify", source: str | Path | None = None,
                  state_dir: Path = naming.STATE_DIR) -> tuple[TopologyChanges, RulesApplied]:
    """Topology, then rules: what ``lab up`` and the lab daemon run for each good file."""
    from nsg_agent.semantics.resolver import resolve

    changes = reconcile_topology(loaded, lab, source=source, state_dir=state_dir)
    policy = resolve(_desired(loaded), getattr(loaded, "tags", None))
    applied = apply_rules(policy, changes.fabric, mode=mode)
    record_rules(lab, loaded, applied, state_dir)
    return changes, applied


def current_plan(lab: str, state_dir: Path = naming.STATE_DIR) -> LabPlan | None:
    return build.previous_plan(lab, state_dir)
