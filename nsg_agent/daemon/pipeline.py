"""One pipeline from a loaded desired state to a ruleset: ``build(loaded, target, mode, memo)``.

    LoadedState ──resolve──► Policy ──target.compile──► ruleset (libnftables JSON)
         (desired)             (semantics)                 (compiler, for the target's placement)

Every command, the daemon and the lab go through it: ``plan``/``apply``/``status`` and the
reconciler with a target (HostTarget, the lab's LabTarget), ``effective-rules``/``verify``/
``lab probe`` without one (up to the policy). What a build may remember for the next is an
explicit :class:`Memo` its owner keeps (the daemon keeps one across reloads; a command starts
with an empty one): the literal prefix terms of the last resolve and the element lists of the
last compile. (The load's own memo — parsed service-tag files, prefix lists found valid —
belongs to the source that loads, see nsg_agent.desired.memo.) No memo ever changes a result:
``build(x, memo=<after building y>) == build(x)`` (tests/test_pipeline.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nsg_agent.compiler.classified import ElementCache
from nsg_agent.compiler.results import Summary
from nsg_agent.daemon.targets import CompiledRuleset, Target
from nsg_agent.desired.loader import LoadedState
from nsg_agent.semantics import resolver
from nsg_agent.semantics.policy import Policy
from nsg_agent.semantics.resolver import TermMemo


@dataclass
class Memo:
    """What one build remembers for the next; owned by whoever builds repeatedly."""

    terms: TermMemo = field(default_factory=TermMemo)
    elements: ElementCache = field(default_factory=ElementCache)


@dataclass(frozen=True)
class Build:
    loaded: LoadedState
    policy: Policy
    ruleset: CompiledRuleset | None  # None: built up to the policy (no target)

    @property
    def summary(self) -> Summary | None:
        return self.ruleset.summary if self.ruleset is not None else None


def resolve(loaded: LoadedState, memo: Memo | None = None) -> Policy:
    return resolver.resolve(loaded.state, loaded.tags, memo=memo.terms if memo is not None else None)


def build(loaded: LoadedState, target: Target | None = None, mode: str = "classify", *,
          memo: Memo | None = None, phases: Any = None) -> Build:
    """``loaded`` resolved, and compiled for ``target`` when one is given. ``phases``: an
    object with ``mark(name)`` told when each step ends (the daemon's timing log)."""
    policy = resolve(loaded, memo)
    if phases is not None:
        phases.mark("resolve")
    if target is None:
        return Build(loaded, policy, None)
    ruleset = target.compile(policy, mode, memo.elements if memo is not None else None)
    if phases is not None:
        phases.mark("compile")
    return Build(loaded, policy, ruleset)
