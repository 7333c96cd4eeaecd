"""``verify --kernel``: the same flow through the live ruleset (nsg_agent.lab.kernelverify), beside
the model's answer. Exit 0/1 as verify when they agree (Allow/Deny), 4 when they differ."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from nsg_agent.desired.vocabulary import Direction
from nsg_agent.errors import EXIT_KERNEL_MISMATCH, InvalidInput, OperationFailed
from nsg_agent.semantics.policy import Flow, NicPolicy, Verdict


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("against the live kernel")
    g.add_argument("--kernel", action="store_true",
                   help="also run the flow through the loaded ruleset (a copy of it in a throwaway "
                        "namespace, traced) and compare; exit 4 if kernel and model differ")
    g.add_argument("--netns", metavar="NAME", default=None,
                   help="with --kernel: the namespace the agent enforces (host mode; default this one)")
    g.add_argument("--lab", metavar="NAME", default=None,
                   help="with --kernel: a lab's fabric instead (its NICs by address)")


def run(args: argparse.Namespace, loaded: Any, policy: Any, nic: NicPolicy, flow: Flow,
        verdict: Verdict, out: dict | None) -> int:
    from nsg_agent.kernel.backend import NftBackend
    from nsg_agent.lab import kernelverify
    from nsg_agent.semantics.resolver import evaluate

    if os.geteuid() != 0:
        raise OperationFailed("verify --kernel needs root (it builds throwaway network namespaces)")
    expected: list[str] | None = None
    allowed = verdict.allowed
    if args.lab:
        from nsg_agent.lab import build, naming

        plan = build.previous_plan(naming.check_lab_name(args.lab))
        if plan is None:
            raise OperationFailed(f"lab {args.lab!r} is not up")
        netns = plan.fabric
        src, dst = (flow.remote, flow.local) if flow.direction is Direction.INBOUND else (flow.local, flow.remote)
        sport, dport = ((flow.remote_port, flow.local_port) if flow.direction is Direction.INBOUND
                        else (flow.local_port, flow.remote_port))
        # In the fabric the other end's own NSGs apply too when it is a NIC of the lab.
        expected = kernelverify.model_rules(verdict)
        other = next((n for n in policy.nics.values() if flow.remote in n.addresses), None)
        if other is not None and allowed:
            back = Flow(Direction.OUTBOUND if flow.direction is Direction.INBOUND else Direction.INBOUND,
                        flow.protocol, flow.remote, flow.local, flow.remote_port, flow.local_port)
            v2 = evaluate(other, back)
            allowed = v2.allowed
            expected = kernelverify.model_rules(v2) + expected if back.direction is Direction.OUTBOUND \
                else expected + kernelverify.model_rules(v2)
            if not v2.allowed:
                verdict = v2
    else:
        netns = args.netns
        if not nic.interface:
            raise InvalidInput(f"NIC {nic.nic} names no interface: host mode does not enforce it "
                               "(give the NIC an 'interface:' or use --lab)")
    backend = NftBackend(netns)
    try:
        listing = backend.list_table()
    finally:
        backend.close()
    if listing is None:
        raise OperationFailed(f"the agent's table is not loaded in {netns or 'this namespace'}")
    if args.lab:
        kernel = kernelverify.trace_fabric(listing, src, dst, flow.protocol, sport, dport)
    else:
        kernel = kernelverify.trace_host(listing, nic.interface, flow)
    want = expected if expected is not None else kernelverify.model_rules(verdict)
    problems = kernelverify.compare(allowed, kernel, want)
    if out is not None:
        out["kernel"] = {**kernel.as_dict(), "agrees": not problems, "differences": problems,
                         "netns": netns or "host"}
        print(json.dumps(out, indent=2))
    else:
        print(f"kernel: {kernel.access} through {', '.join(kernel.rules) or 'no counted rule'}"
              f" ({'agrees with the model' if not problems else 'DIFFERS from the model'})")
        for p in problems:
            print(f"  difference: {p}")
    if problems:
        return EXIT_KERNEL_MISMATCH
    return 0 if kernel.access == "Allow" else 1


__all__ = ["add_arguments", "run", "EXIT_KERNEL_MISMATCH"]
