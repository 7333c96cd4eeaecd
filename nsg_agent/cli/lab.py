"""``nsg-agent lab ...``: a whole VNet in network namespaces, enforced by the agent's
compiler in the fabric, and proven with real packets. See docs/lab.md.

    lab up FILE [--name N] [--mode classify|simple]   build (or update) the lab, apply rules
    lab down [--name N | --all]                       remove everything the lab created
    lab status [--name N] [--json]                    namespaces, NICs, hosts, rules
    lab exec NAME [--lab N] -- CMD...                 run CMD in a NIC's or host's namespace
    lab probe [FILE] [--name N] [--json] [--ports P]  the connectivity matrix vs. prediction
    lab run FILE [--name N]                           the daemon: keep the lab equal to FILE

Exit codes: 0 ok; 1 ``probe`` found a mismatch; 2 invalid input; 3 the operation failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nsg_agent.cli import flows, lazy
from nsg_agent.cli.inputs import add_files, add_input_options, files_label, load_inputs, load_options
from nsg_agent.errors import EXIT_INVALID, EXIT_MISMATCH, EXIT_OK, CommandFailed
from nsg_agent.lab import naming

build = lazy("nsg_agent.lab.build")  # pyroute2: imported when a lab command runs
host_netns = lazy("nsg_agent.host.netns")
topology = lazy("nsg_agent.lab.topology")

if TYPE_CHECKING:
    from nsg_agent.lab.topology import LabPlan



def _failed(message: str) -> Exception:
    return CommandFailed(message)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise _failed("the lab creates network namespaces: run it as root")


def _lab_name(args: argparse.Namespace, file: str | None) -> str:
    name = getattr(args, "name", None)
    if name:
        return naming.check_lab_name(name)
    if file:
        return naming.lab_name_from_file(file)
    labs = build.all_labs()
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise _failed("no lab is up (start one with 'nsg-agent lab up FILE')")
    raise _failed(f"several labs are up ({', '.join(labs)}): choose one with --name")


def _plan_or_fail(lab: str) -> LabPlan:
    plan = build.previous_plan(lab)
    if plan is None or host_netns.netns_inode(plan.fabric) is None:
        raise _failed(f"lab {lab!r} is not up (start it with 'nsg-agent lab up FILE --name {lab}')")
    return plan


def register(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser(
        "lab", help="a VNet in network namespaces, enforced and probed with real packets",
        description="Build a whole VNet from a desired-state file in network namespaces "
                    "(a fabric with a bridge per subnet, a namespace per NIC and per external "
                    "host), enforce it with the agent's compiler, and probe it with real "
                    "packets. See docs/lab.md.")
    sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)

    p = sub.add_parser("up", help="build or update a lab from FILE and apply its rules",
                       description="Create the lab's namespaces, bridges and veths from FILE (or "
                                   "change only what differs if the lab is up), then compile the "
                                   "policy for the fabric and apply it atomically.")
    add_files(p)
    p.add_argument("--name", "--lab", dest="name", help="lab name (default: from the file name)")
    p.add_argument("--mode", choices=("classify", "simple"), default="classify",
                   help="compiler rendering (default classify)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="remove everything a lab created (idempotent)",
                       description="Remove the lab's namespaces (with every veth and bridge in "
                                   "them) and its state. Works after a crash, without a state "
                                   "file, by namespace name.")
    p.add_argument("file", metavar="FILE", nargs="?",
                   help="the file the lab was built from (its name gives the lab's, as for 'lab up FILE')")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--name", "--lab", dest="name", help="lab name (default: from FILE, or the only lab up)")
    g.add_argument("--all", action="store_true", help="every lab on this machine")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="what a lab consists of and what it enforces")
    p.add_argument("file", metavar="FILE", nargs="?", help="the lab built from FILE (as for 'lab up FILE')")
    p.add_argument("--name", "--lab", dest="name", help="lab name (default: from FILE, or every lab)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("exec", help="run a command in a NIC's or host's namespace",
                       description="Run CMD inside the namespace of NAME (a NIC, an external "
                                   "host, 'platform' or 'fabric'); exits with CMD's exit code.")
    p.add_argument("target", metavar="NAME")
    p.add_argument("--name", "--lab", dest="name", help="lab name (default: the only lab up)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("probe", help="connectivity matrix with real packets vs. the prediction",
                       description="TCP connect, UDP request/answer and ICMP echo between every "
                                   "pair of NICs and hosts, on the ports the rules mention plus "
                                   "a few they do not; each cell compared with what Azure would "
                                   "do (verify). Exit 1 on any mismatch.")
    add_input_options(p)
    p.add_argument("file", metavar="FILE", nargs="*",
                   help="the desired state to predict from (default: the file the lab was built from)")
    p.add_argument("--name", "--lab", dest="name", help="lab name (default: from FILE, or the only lab up)")
    p.add_argument("--ports", help="comma-separated ports instead of the automatic choice")
    p.add_argument("--only", help="comma-separated NIC/host names to restrict the matrix to")
    p.add_argument("--timeout", type=float, default=0.5, help="seconds per probe (default 0.5)")
    p.add_argument("--json", action="store_true", help="every cell as JSON")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("run", help="daemon: keep the lab's topology and rules equal to FILE",
                       description="The agent's reconciling daemon pointed at a lab: on every "
                                   "change of FILE (or its service-tag files) the topology is "
                                   "reconciled (NICs added, removed, moved, readdressed) and the "
                                   "rules re-applied; bad edits keep the last good state.")
    add_files(p)
    p.add_argument("--name", "--lab", dest="name", help="lab name (default: from the file name)")
    p.add_argument("--mode", choices=("classify", "simple"), default="classify")
    p.add_argument("--debounce", type=float, default=None, help="seconds (default: the daemon's)")
    p.add_argument("--resync", type=float, default=None, help="seconds (default: the daemon's)")
    p.add_argument("--down-on-exit", action="store_true", help="remove the lab when stopped")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                   help="auto (default): readable lines on a terminal, JSON lines otherwise")
    flows.add_run_options(p, lab=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("flows", help="the lab's flow logs as a table (what 'lab run' collected)",
                       description="The Azure-format flow logs 'lab run' writes for the lab: each "
                                   "flow tuple with NIC, direction, addresses, protocol, state, "
                                   "deciding NSG and rule, packets and bytes. See docs/flowlogs.md.")
    p.add_argument("--name", "--lab", dest="name", help="lab name (default: the only lab up)")
    flows.add_read_options(p, default_dir=False)
    p.set_defaults(func=cmd_flows)


# --- up / down -------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from nsg_agent.lab.reconcile import reconcile_lab

    loaded = load_inputs(args)
    _need_root()
    lab = _lab_name(args, args.file[0])
    t0 = time.monotonic()
    try:
        changes, applied = reconcile_lab(loaded, lab, mode=args.mode, source=args.file[0])
    except topology.LabPlanError as e:
        print(f"nsg-agent: {e}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as e:  # noqa: BLE001 - kernel/netlink failures: report, exit 3
        raise _failed(f"lab {lab}: {type(e).__name__}: {e}") from e
    plan = _plan_or_fail(lab)
    s = applied.summary
    if args.json:
        print(json.dumps({"lab": lab, "fabric": plan.fabric, "changes": changes.as_dict(),
                          "rules": {"mode": applied.mode, "chains": s.chains,
                                    "rules": s.rules, "set_elements": s.set_elements},
                          "seconds": round(time.monotonic() - t0, 3)}, indent=2))
        return EXIT_OK
    verb = "built" if changes.built else ("updated" if not changes.empty else "unchanged")
    print(f"lab {lab} {verb} in {time.monotonic() - t0:.1f} s: fabric {plan.fabric}, "
          f"{len(plan.bridges)} subnets, {len(plan.nics)} NICs, {len(plan.hosts)} hosts")
    if not changes.built:
        for what, items in (("added", changes.added), ("removed", changes.removed),
                            ("changed", changes.changed)):
            for item in items:
                print(f"  {what}: {item}")
    print(f"rules: inet nsg_agent in {plan.fabric} ({applied.mode}: {s.chains} chains, "
          f"{s.rules} rules, {s.set_elements} set elements)")
    _print_members(plan)
    print(f"next: nsg-agent lab probe --name {lab}    |    nsg-agent lab exec NIC --name {lab} -- CMD"
          f"    |    nsg-agent lab down --name {lab}")
    return EXIT_OK


def _print_members(plan: LabPlan) -> None:
    for n in plan.nics:
        print(f"  NIC  {n.name:<12} {', '.join(n.addresses):<16} {n.subnet:<20} {n.netns}")
    for h in plan.hosts:
        print(f"  host {h.name:<12} {h.address:<16} {h.kind:<20} {h.netns}")


def flow_log_dir(lab: str) -> Path:
    """Where 'lab run' writes the lab's flow logs unless told otherwise."""
    return naming.STATE_DIR / f"{lab}.flowlogs"


def cmd_flows(args: argparse.Namespace) -> int:
    lab = _lab_name(args, None)
    return flows.show(args, args.dir or str(flow_log_dir(lab)))


def _remove_status_dir(lab: str) -> None:
    from nsg_agent.daemon.status import DEFAULT_STATE_DIR

    d = Path(DEFAULT_STATE_DIR) / naming.fabric_netns(lab)
    if d.is_dir():
        shutil.rmtree(d, ignore_errors=True)
    if flow_log_dir(lab).is_dir():  # the default flow-log directory of 'lab run' (tmpfs)
        shutil.rmtree(flow_log_dir(lab), ignore_errors=True)


def cmd_down(args: argparse.Namespace) -> int:
    _need_root()
    if args.all:
        labs = build.all_labs()
    else:
        try:
            labs = [_lab_name(args, args.file)]
        except Exception as e:  # noqa: BLE001 - "no lab is up" is success for an idempotent down
            if "no lab is up" in str(e):
                labs = []
            else:
                raise
    out = {}
    for lab in labs:
        out[lab] = build.destroy(lab)
        _remove_status_dir(lab)
    if args.json:
        print(json.dumps({"removed": out}, indent=2))
    elif not labs:
        print("no lab is up")
    else:
        for lab, names in out.items():
            print(f"lab {lab}: removed {len(names)} namespaces" + (f" ({', '.join(names)})" if names else ""))
    return EXIT_OK


# --- status / exec -------------------------------------------------------------------------------


def lab_status(lab: str) -> dict[str, Any]:
    record = build.read_state(lab) or {}
    plan = build.previous_plan(lab)
    present = set(build.lab_namespaces(lab))
    out: dict[str, Any] = {"lab": lab, "fabric": naming.fabric_netns(lab),
                           "up": naming.fabric_netns(lab) in present,
                           "file": record.get("file"), "rules": record.get("rules"),
                           "namespaces": sorted(present)}
    if plan is not None:
        out["nics"] = [{"name": n.name, "addresses": list(n.addresses), "subnet": n.subnet,
                        "netns": n.netns, "port": n.port, "bridge": n.bridge,
                        "present": n.netns in present} for n in plan.nics]
        out["hosts"] = [{"name": h.name, "kind": h.kind, "address": h.address, "netns": h.netns,
                         "present": h.netns in present} for h in plan.hosts]
        out["subnets"] = [{"name": f"{b.vnet}/{b.subnet}", "prefix": b.prefix,
                           "gateway": b.gateway, "bridge": b.ifname} for b in plan.bridges]
        out["unpeered"] = [list(p) for p in plan.isolation]
        expected = set(plan.namespaces())
        out["missing"] = sorted(expected - present)
        out["stray"] = sorted(present - expected)
    try:
        from nsg_agent.daemon.status import StatusStore

        st = StatusStore(netns=naming.fabric_netns(lab))
        commit = (json.loads(st.path.read_text()).get("commit") if st.path.exists() else None) or {}
        if commit:  # the lab daemon (lab run) records what it enforces here
            out["daemon"] = {k: commit.get(k) for k in
                             ("source", "sha256", "applied_at", "mode", "ruleset_sha256")}
    except (OSError, ValueError, AttributeError):
        pass
    return out


def cmd_status(args: argparse.Namespace) -> int:
    if args.name or args.file:
        labs = [naming.check_lab_name(args.name) if args.name else naming.lab_name_from_file(args.file)]
    else:
        labs = build.all_labs()
    data = [lab_status(lab) for lab in labs]
    if args.json:
        print(json.dumps({"labs": data}, indent=2, default=str))
        return EXIT_OK
    if not data:
        print("no lab is up")
    for d in data:
        state = "up" if d["up"] else "DOWN"
        print(f"lab {d['lab']}: {state}, fabric {d['fabric']}, file {d.get('file') or '-'}")
        r = d.get("rules")
        if r:
            print(f"  rules: {r.get('mode')}, {r.get('rules')} rules, sha256 {str(r.get('sha256'))[:12]}, "
                  f"applied {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r.get('time', 0)))}")
        for s in d.get("subnets", []):
            print(f"  subnet {s['name']:<20} {s['prefix']:<16} gateway {s['gateway']} on {s['bridge']}")
        for n in d.get("nics", []):
            print(f"  NIC    {n['name']:<20} {', '.join(n['addresses']):<16} {n['netns']}"
                  + ("" if n["present"] else "  (MISSING)"))
        for h in d.get("hosts", []):
            print(f"  host   {h['name']:<20} {h['address']:<16} {h['netns']}"
                  + ("" if h["present"] else "  (MISSING)"))
        for a, b in d.get("unpeered", []):
            print(f"  no route {a} -> {b} (not peered)")
        if d.get("stray"):
            print(f"  stray namespaces: {', '.join(d['stray'])}")
    return EXIT_OK


def cmd_exec(args: argparse.Namespace) -> int:
    _need_root()
    cmd = list(args.cmd)
    # argparse's REMAINDER also swallows options given after NAME ("web1 --lab x -- cmd")
    if "--" in cmd:
        before, cmd = cmd[:cmd.index("--")], cmd[cmd.index("--") + 1:]
        while before:
            opt = before.pop(0)
            if opt in ("--lab", "--name") and before:
                args.name = before.pop(0)
            elif opt.startswith(("--lab=", "--name=")):
                args.name = opt.split("=", 1)[1]
            else:
                print(f"nsg-agent: lab exec: unexpected {opt!r} before '--'", file=sys.stderr)
                return EXIT_INVALID
    if not cmd:
        print("nsg-agent: lab exec NAME -- CMD...: no command given", file=sys.stderr)
        return EXIT_INVALID
    lab = _lab_name(args, None)
    plan = _plan_or_fail(lab)
    target = args.target
    ns = plan.fabric if target.lower() in ("fabric", "fab") else plan.netns_of(target)
    if ns is None:
        names = [n.name for n in plan.nics] + [h.name for h in plan.hosts] + ["fabric"]
        print(f"nsg-agent: lab {lab} has no NIC or host {target!r} (known: {', '.join(names)})",
              file=sys.stderr)
        return EXIT_INVALID
    return subprocess.run(["ip", "netns", "exec", ns, *cmd]).returncode


# --- probe / run ------------------------------------------------------------------------------------


def cmd_probe(args: argparse.Namespace) -> int:
    from nsg_agent.daemon import pipeline
    from nsg_agent.lab import probe

    _need_root()
    lab = _lab_name(args, args.file[0] if args.file else None)
    plan = _plan_or_fail(lab)
    file = args.file or (build.read_state(lab) or {}).get("file")
    if not file:
        raise _failed(f"lab {lab}: no file recorded; give FILE")
    loaded = load_inputs(args, file)
    file = files_label(file)
    policy = pipeline.build(loaded).policy
    ports = None
    if args.ports:
        try:
            ports = sorted({int(p) for p in args.ports.split(",") if p.strip()})
        except ValueError:
            print(f"nsg-agent: --ports {args.ports!r}: give comma-separated port numbers", file=sys.stderr)
            return EXIT_INVALID
        if any(not 1 <= p <= 65535 for p in ports):
            print("nsg-agent: --ports: ports are 1-65535", file=sys.stderr)
            return EXIT_INVALID
    only = [x.strip() for x in args.only.split(",")] if args.only else None
    report = probe.run_probes(policy, plan, ports, timeout=args.timeout, only=only)
    rec = build.read_state(lab) or {}
    applied_sha = (rec.get("rules") or {}).get("sha256")
    if applied_sha and applied_sha != loaded.sha256:
        report.notes.append(f"{file} (sha256 {loaded.sha256[:12]}) differs from the file the "
                            f"rules were applied from ({applied_sha[:12]}): run 'lab up' first")
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(probe.render(report))
    return EXIT_MISMATCH if report.mismatches else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from nsg_agent.lab.labdaemon import lab_daemon
    from nsg_agent.logging import configure

    load_inputs(args)  # a bad file at startup is an input error (exit 2)
    _need_root()
    lab = _lab_name(args, args.file[0])
    configure(args.log_level, fmt=getattr(args, "log_format", "auto"))
    collect = not getattr(args, "no_flow_logs", True)
    daemon = lab_daemon(args.file, lab, mode=args.mode, debounce=args.debounce, resync=args.resync,
                        load_options=load_options(args), flow_logs=collect)
    collector = None
    if collect:
        import structlog

        from nsg_agent.daemon.status import StatusStore

        directory = args.flow_logs or str(flow_log_dir(lab))
        try:
            collector = flows.start(args, directory, naming.fabric_netns(lab),
                                    flows.lab_context(lab, StatusStore(netns=naming.fabric_netns(lab))),
                                    log=structlog.get_logger("nsg_agent.flowlogs"))
        except OSError as e:  # on by default: without NFLOG or ctnetlink the lab still runs
            structlog.get_logger("nsg_agent.flowlogs").warning("flowlog.unavailable", directory=directory,
                                                               error=str(e))
            collector = None
    try:
        return daemon.run()
    finally:
        flows.stop(collector)
        if args.down_on_exit:
            build.destroy(lab)
            _remove_status_dir(lab)
