"""Where a reconciler enforces: the *target* it is given. A target compiles a policy for its
placement and may bring the world into shape before each compile; the reconciler's logic
(unchanged / delta / replace, last good state, drift repair) is the same for every target.

- :class:`HostTarget`: this host's (or one namespace's) interfaces, host placement.
- ``nsg_agent.lab.target.LabTarget``: a lab's fabric; before each compile it converges the
  lab's topology to the desired state and, if the fabric was rebuilt, hands the reconciler a
  backend for the new namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from nsg_agent.semantics.policy import Policy

if TYPE_CHECKING:
    from nsg_agent.compiler.classified import ElementCache
    from nsg_agent.compiler.results import RuleIndex, Summary
    from nsg_agent.daemon.reconciler import Desired, Reconciler
    from nsg_agent.desired.loader import LoadedState


class CompiledRuleset(Protocol):
    commands: list[dict]
    summary: "Summary"
    rule_index: "RuleIndex"


CompileFn = Callable[[Policy, dict[str, str], str], CompiledRuleset]


def compile_host(policy: Policy, interfaces: dict[str, str], mode: str,
                 elements: "ElementCache | None" = None, flow_logs: bool = False) -> CompiledRuleset:
    """The real compiler in host placement (imported lazily: the daemon's tests use fakes)."""
    from nsg_agent.compiler import HostPlacement, compile_ruleset

    return compile_ruleset(policy, HostPlacement(interfaces=interfaces), mode=mode, elements=elements,
                           flow_logs=flow_logs)


def host_interfaces(policy: Policy) -> dict[str, str]:
    """NIC name -> Linux interface, for NICs that name one (host mode)."""
    return {name: nic.interface for name, nic in sorted(policy.nics.items()) if nic.interface}


class Target(Protocol):
    def prepare(self, loaded: "LoadedState", reconciler: "Reconciler") -> None:
        """Before resolve and compile, with a valid desired state (may raise: the apply fails)."""
        ...

    def compile(self, policy: Policy, mode: str, elements: "ElementCache | None" = None) -> CompiledRuleset:
        """``elements``: the element lists the previous compile made (the pipeline's memo)."""
        ...

    def applied(self, desired: "Desired") -> None:
        """After the kernel took ``desired``."""
        ...


class HostTarget:
    """The NICs of this host that name an interface, in host placement."""

    def __init__(self, compile_fn: CompileFn = compile_host, *, flow_logs: bool = False):
        self.compile_fn = compile_fn
        self.flow_logs = flow_logs  # compile what the flow-log collector reads (run --flow-logs)

    def prepare(self, loaded: Any, reconciler: Any) -> None:
        return None

    def compile(self, policy: Policy, mode: str, elements: "ElementCache | None" = None) -> CompiledRuleset:
        if self.compile_fn is compile_host:  # the real compiler takes the memo's element lists
            return compile_host(policy, host_interfaces(policy), mode, elements, self.flow_logs)
        return self.compile_fn(policy, host_interfaces(policy), mode)

    def applied(self, desired: Any) -> None:
        return None
