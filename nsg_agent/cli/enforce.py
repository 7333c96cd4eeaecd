"""Enforcement commands: ``plan``, ``apply``, ``status``, ``remove`` and ``run`` (the daemon).

Every command acts on one network namespace (``--netns NAME``; default: the namespace the
command runs in) and its status file under ``--state-dir`` (default /run/nsg-agent).

Exit codes (see nsg_agent.cli): 0 ok, 2 invalid input, 3 the kernel refused / namespace missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from nsg_agent.cli import flows
from nsg_agent.cli.fleet import add_etcd_connection_options
from nsg_agent.cli.inputs import add_files, add_input_options, files_label, load_options
from nsg_agent.daemon.operations import build_plan, collect_status, read_record, review_change, when
from nsg_agent.daemon.status import (
    DEFAULT_STATE_DIR,
    NamespaceLocked,
    Plan,
    Status,
    StatusFileError,
    StatusStore,
)
from nsg_agent.errors import EXIT_FAILED, EXIT_OK, CommandFailed, LoadError

if TYPE_CHECKING:
    from nsg_agent.compiler.results import Summary

MODES = ("classify", "simple")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--netns", metavar="NAME", default=None,
                   help="act in the named network namespace (/run/netns/NAME); default: this one")
    p.add_argument("--state-dir", metavar="DIR", default=os.environ.get("NSG_AGENT_STATE_DIR", DEFAULT_STATE_DIR),
                   help=f"where status files live (default {DEFAULT_STATE_DIR}; one sub-directory per namespace)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan", help="show what applying FILE would change",
        description="Compile FILE and compare it with what was last applied (the status file) "
                    "and with the kernel (is the table there, has it drifted): rules added, "
                    "removed and changed by comment, and set sizes. Changes nothing.")
    add_files(p)
    p.add_argument("--mode", choices=MODES, default="classify")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--detailed-exitcode", action="store_true",
                   help="exit 0 when nothing would change, 2 when something would, 3 on any error "
                        "(invalid input included), as terraform plan -detailed-exitcode")
    _common(p)
    p.set_defaults(func=cmd_plan)

    p = subparsers.add_parser(
        "apply", help="apply FILE once (dry-run check, then one atomic transaction)",
        description="Load, compile and apply FILE: the kernel checks the batch first, then the "
                    "table inet nsg_agent is replaced in one transaction. Records the commit in "
                    "the status file. With flushConnection on an NSG, live flows the new policy "
                    "denies are cut.")
    add_files(p)
    p.add_argument("--mode", choices=MODES, default="classify")
    p.add_argument("--force", action="store_true",
                   help="apply even if the coverage check finds a lock-out of the current "
                        "management session (see 'plan')")
    p.add_argument("--confirm", type=float, metavar="SECONDS", default=None,
                   help="roll the kernel back to the previous table (one transaction) unless "
                        "'nsg-agent confirm' arrives within SECONDS (like commit confirmed)")
    _common(p)
    p.set_defaults(func=cmd_apply)

    p = subparsers.add_parser(
        "confirm", help="keep what 'apply --confirm' applied (cancel the rollback)",
        description="Confirm the pending 'apply --confirm': the applied table stays and the "
                    "rollback is cancelled. Exit 0 if something was pending, 3 if not.")
    p.add_argument("--watch", action="store_true", help=argparse.SUPPRESS)  # the rollback watcher
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(func=cmd_confirm)

    p = subparsers.add_parser(
        "status", help="what is enforced: source, hash, time, counts, per-rule hit counters",
        description="Print the last commit (source file, sha256, time, counts), the last error, "
                    "whether the kernel still holds the committed table, and per-rule packet and "
                    "byte counters read from the kernel.")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="also list rules that have no hits")
    _common(p)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("remove", help="delete the table inet nsg_agent",
                              description="Delete the agent's table (nothing else) and forget the commit.")
    _common(p)
    p.set_defaults(func=cmd_remove)

    p = subparsers.add_parser(
        "run", help="the daemon: keep the kernel equal to the file",
        description="Watch --config and its service-tag files, apply every good edit, keep the "
                    "last good state on bad input, repair drift every --resync seconds. SIGHUP "
                    "reloads, SIGTERM exits leaving the rules in place. See docs/daemon.md.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--config", metavar="FILE", nargs="+",
                        help="host mode: enforce the file's NICs on this machine (several files "
                             "are merged; every file involved is watched)")
    target.add_argument("--etcd", metavar="URL[,URL...]",
                        help="fleet mode: the desired state lives in etcd (nsg-agent publish); enforce "
                             "the NICs whose host is --host (docs/fleet.md)")
    target.add_argument("--lab", metavar="FILE", nargs="+",
                        help="lab mode: keep the lab's topology and rules equal to FILE "
                             "(same as 'nsg-agent lab run FILE')")
    p.add_argument("--lab-name", metavar="NAME", help="with --lab: the lab's name (default from the file)")
    p.add_argument("--mode", choices=MODES, default="classify")
    p.add_argument("--resync", type=float, default=5.0, metavar="SECONDS",
                   help="how often to check the kernel for drift (default 5)")
    p.add_argument("--debounce", type=float, default=0.15, metavar="SECONDS",
                   help="quiet time after a file event before reconciling (default 0.15)")
    p.add_argument("--remove-on-exit", action="store_true",
                   help="delete the table on SIGTERM (with --lab: remove the whole lab, as 'lab run --down-on-exit')")
    p.add_argument("--no-delta", action="store_true",
                   help="replace the whole table on every change (default: an edit is applied as "
                        "a delta of the changed sets and chains when the kernel still holds the "
                        "last commit)")
    p.add_argument("--no-link-events", action="store_true", help="do not watch link events")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                   help="auto (default): readable lines on a terminal, JSON lines otherwise")
    p.add_argument("--confirm-edits", type=float, metavar="SECONDS", default=None,
                   help="roll an applied edit back unless 'nsg-agent confirm' arrives within SECONDS "
                        "(the edited file is then not applied again until it changes)")
    p.add_argument("--force", action="store_true",
                   help="apply edits even when they would lock out a live management session "
                        "(established TCP to port 22 that the current policy allows)")
    p.add_argument("--metrics", metavar="[HOST:]PORT", default=None,
                   help="serve Prometheus metrics on HOST:PORT (HOST defaults to 127.0.0.1); see docs/metrics.md")
    p.add_argument("--metrics-textfile", metavar="PATH", default=None,
                   help="write the metrics to PATH after each reconcile (node_exporter's textfile collector)")
    fleet = p.add_argument_group("fleet (with --etcd)")
    fleet.add_argument("--host", metavar="NAME", default=None,
                       help="this agent's host name in the fleet: it enforces the NICs whose host is NAME "
                            "(default: the machine's host name)")
    fleet.add_argument("--etcd-cache", metavar="DIR", default=os.environ.get("NSG_AGENT_ETCD_CACHE",
                                                                              "/var/lib/nsg-agent/etcd"),
                       help="where the last good state read from etcd is persisted with its revision, one "
                            "sub-directory per namespace: enforced when etcd is down at start, so on "
                            "persistent storage (default /var/lib/nsg-agent/etcd)")
    fleet.add_argument("--report-ttl", type=int, default=10, metavar="SECONDS",
                       help="the lease of this agent's report in etcd: a dead agent disappears from "
                            "'fleet status' this long after its last keep-alive (default 10)")
    add_etcd_connection_options(fleet)
    flows.add_run_options(p)
    add_input_options(p)
    _common(p)
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser(
        "metrics", help="print the Prometheus metrics once (or write them for the textfile collector)",
        description="The kernel-side metrics of one namespace (per-rule packets and bytes, enforced "
                    "counts, last apply, kernel matches commit) in Prometheus' text format.")
    p.add_argument("--textfile", metavar="PATH", help="write to PATH (atomically) instead of stdout")
    _common(p)
    p.set_defaults(func=cmd_metrics)


# --- helpers -----------------------------------------------------------------------------


def _failed(message: str) -> Exception:
    return CommandFailed(message)


def _backend(netns: str | None):
    from nsg_agent.host.netns import NetnsError
    from nsg_agent.kernel.backend import NftBackend

    try:
        return NftBackend(netns)
    except NetnsError as e:
        raise _failed(str(e)) from None
    except OSError as e:  # libnftables missing or not permitted
        raise _failed(f"cannot use libnftables: {e}") from None


def _quiet_logging() -> None:
    from nsg_agent.logging import configure

    configure("warning")


# --- plan ----------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        return _plan(args)
    except LoadError as e:
        if not args.detailed_exitcode:
            raise
        print(f"nsg-agent: {e}", file=sys.stderr)
        return EXIT_FAILED


def _plan(args: argparse.Namespace) -> int:
    store = StatusStore(args.state_dir, args.netns)
    backend = None
    if os.geteuid() == 0:
        backend = _backend(args.netns)
    try:
        plan, summary = build_plan(args.file, args.mode, store, backend, load_options(args))
        rev, cov = review_change(args.file, store, backend, load_options(args))
    finally:
        if backend is not None:
            backend.close()
    changed = not plan.empty or bool(rev.changes)
    if args.json:
        print(json.dumps({"plan": plan.as_dict(), "summary": summary.counts(),
                          "review": rev.as_dict(), "coverage": cov.as_dict() if cov else None,
                          "changes": changed}, indent=2))
    else:
        print(render_plan(plan, summary, rev, cov))
    return (2 if changed else EXIT_OK) if args.detailed_exitcode else EXIT_OK


def render_plan(plan: Plan, summary: Summary, rev: Any = None, cov: Any = None) -> str:
    lines = []
    if plan.record_problem:
        lines.append(f"record: {plan.record_problem}")
    if rev is not None:
        body = rev.lines()
        if body:
            lines.append("rules (+ added, - removed, ~ changed, ! never matches, x live connection revoked):")
            lines += body
    if cov is not None:
        for f in cov.findings:
            lines.append(f"  {'LOCK-OUT' if f.kind == 'lockout' else 'warning'}: {f.message}")
        if cov.lockouts:
            lines.append("  'apply' refuses this without --force")
    elif rev is not None:
        lines.append("coverage and live connections: not checked (needs root)")
    if plan.table_present is False:
        lines.append("kernel: table inet nsg_agent is absent (applying creates it)")
    elif plan.table_present and plan.drift:
        lines.append("kernel: the table differs from the last commit (drift): applying repairs it")
    elif plan.table_present is None:
        lines.append("kernel: not checked (needs root)")
    for title, names in (("+", plan.added), ("-", plan.removed), ("~", plan.changed)):
        lines += [f"  {title} {n}" for n in names]
    # Level maps are named after their content, so a changed level shows as one map gone
    # and one new: report the totals, and per map only where a name persists.
    for name, (old, new) in plan.sets.items():
        if old is not None and new is not None and old != new:
            lines.append(f"  set {name}: {old} -> {new} elements")
    old_sets = [v[0] for v in plan.sets.values() if v[0] is not None]
    new_sets = [v[1] for v in plan.sets.values() if v[1] is not None]
    if sorted(old_sets) != sorted(new_sets) or any(a != b for a, b in plan.sets.values()):
        lines.append(f"  sets/maps: {len(old_sets)} -> {len(new_sets)}, "
                     f"elements {sum(old_sets)} -> {sum(new_sets)}")
    lines.append(f"{len(plan.added)} added, {len(plan.removed)} removed, {len(plan.changed)} changed, "
                 f"{plan.unchanged} unchanged; new ruleset: {summary.rules} rules, "
                 f"{summary.sets} sets, {summary.set_elements} elements")
    if plan.empty:
        lines.append("no changes")
    return "\n".join(lines)


# --- apply / remove --------------------------------------------------------------------------


def _reconciler(file: str, args: argparse.Namespace, backend: Any, **kw: Any):
    from nsg_agent.daemon.reconciler import Reconciler
    from nsg_agent.host import conntrack

    store = StatusStore(args.state_dir, args.netns)
    flusher = (lambda policy: conntrack.flush_denied(backend.runner, policy)) if hasattr(backend, "runner") else None
    rec = Reconciler(file, backend, store, load_options=load_options(args), mode=args.mode,
                     flusher=flusher, **kw)
    try:
        store.ensure_dir()  # before anything reaches the kernel: the record must be writable
    except OSError as e:
        raise _failed(f"state directory {store.dir}: {e}") from None
    try:
        previous = store.read()
    except StatusFileError as e:
        # Not the agent's record: set it aside (kept for inspection) and rebuild it from the
        # kernel and the file by applying.
        moved = store.set_aside()
        rec.log.error("status.corrupt", error=str(e), moved_to=str(moved) if moved else None,
                      action="rebuilding the record from the kernel and the file")
        previous = Status(netns=store.netns)
    rec.status.last_error = None
    rec.restore(previous)
    return rec


def cmd_apply(args: argparse.Namespace) -> int:
    _quiet_logging()
    backend = _backend(args.netns)
    try:
        _, cov = review_change(args.file, StatusStore(args.state_dir, args.netns), backend, load_options(args))
        for f in cov.findings if cov else []:
            print(f"nsg-agent: {'LOCK-OUT' if f.kind == 'lockout' else 'warning'}: {f.message}", file=sys.stderr)
        if cov and cov.lockouts and not args.force:
            raise _failed("refused: the new policy would lock out the management session above "
                          "(check the NIC's addresses and interface; --force applies anyway)")
        store = StatusStore(args.state_dir, args.netns)
        pending = None
        if args.confirm is not None:
            from nsg_agent.daemon import confirm

            if args.confirm <= 0:
                raise _invalid("--confirm SECONDS must be positive")
            if confirm.pending(store) is not None:
                raise _failed("an 'apply --confirm' is still pending: 'nsg-agent confirm' it or "
                              "wait for its rollback first")
            pending = confirm.prepare(store, backend.list_table(), args.confirm)
        rec = _reconciler(args.file, args, backend)
        rec.check_first = True  # the kernel checks the batch (dry run) before the transaction
        if rec.reconcile("apply"):
            c = rec.status.commit
            s = c.summary
            print(f"applied {files_label(args.file)} (sha256 {c.sha256[:12]}) to {args.netns or 'this namespace'}: "
                  f"{s.chains} chains, {s.rules} rules, {s.sets} sets, {s.set_elements} elements")
            if pending is not None:
                from nsg_agent.daemon import confirm

                pid = confirm.arm(store, pending, c.sha256, args.netns, args.state_dir)
                print(f"rolls back in {args.confirm:g} s unless confirmed: nsg-agent confirm"
                      + (f" --netns {args.netns}" if args.netns else "") + f" (watcher pid {pid})")
            return EXIT_OK
        err = rec.status.last_error or {}
        if err.get("kind") == "config":
            raise LoadError([_problem(p) for p in err.get("problems", [])])
        raise _failed(err.get("message", "apply failed"))
    finally:
        backend.close()


def cmd_metrics(args: argparse.Namespace) -> int:
    from nsg_agent.daemon import metrics

    backend = _backend(args.netns)
    try:
        m = metrics.Metrics(metrics.reader(StatusStore(args.state_dir, args.netns), backend), daemon=False)
        if args.textfile:
            m.write_textfile(args.textfile)
        else:
            sys.stdout.write(m.text().decode())
    finally:
        backend.close()
    return EXIT_OK


def cmd_confirm(args: argparse.Namespace) -> int:
    from nsg_agent.daemon import confirm

    store = StatusStore(args.state_dir, args.netns)
    if args.watch:
        from nsg_agent.logging import configure, get_logger

        configure("info")
        outcome = confirm.watch(store, lambda: _backend(args.netns))
        get_logger().info(f"confirm.{outcome}", netns=args.netns or "host")
        return EXIT_OK
    done = confirm.confirm(store)
    if done is None:
        raise _failed("nothing to confirm (no 'apply --confirm' pending; it may have rolled back: see status)")
    if args.json:
        print(json.dumps({"confirmed": True, "sha256": done.get("applied_sha256")}))
    else:
        print(f"confirmed: {str(done.get('applied_sha256'))[:12]} stays in {args.netns or 'this namespace'}")
    return EXIT_OK


def _invalid(message: str) -> Exception:
    from nsg_agent.errors import InvalidInput

    return InvalidInput(message)


def _problem(d: dict):
    from nsg_agent.errors import Problem

    return Problem(d.get("file", ""), d.get("path", ""), d.get("message", ""), d.get("line"))


def cmd_remove(args: argparse.Namespace) -> int:
    backend = _backend(args.netns)
    try:
        existed = backend.delete_table()
    finally:
        backend.close()
    store = StatusStore(args.state_dir, args.netns)
    status, _ = read_record(store)
    status.commit = None
    if store.path.exists():
        store.write(status)
    store.clear_intent()
    print(f"table inet nsg_agent {'deleted' if existed else 'was not present'} in {args.netns or 'this namespace'}")
    return EXIT_OK


# --- status ----------------------------------------------------------------------------------


def render_status(data: dict, show_all: bool = False) -> str:
    lines = [f"namespace: {data['netns']}"]
    if data.get("record_error"):
        lines.append(f"record:    UNUSABLE: {data['record_error']}")
    c = data["commit"]
    k = data["kernel"]
    if data.get("unverified"):
        p = data.get("pending") or {}
        holds = ""
        if k is not None:
            s = k.get("ruleset_sha256")
            holds = (" (kernel: the pending ruleset)" if s and s == p.get("ruleset_sha256") else
                     " (kernel: the committed ruleset)" if s and c and s == c["ruleset_sha256"] else
                     " (kernel: neither)")
        lines.append(f"record:    UNVERIFIED: an apply of {p.get('source', '?')} (ruleset "
                     f"{str(p.get('ruleset_sha256', '?'))[:12]}) began and its outcome was not recorded"
                     f"{holds}; the next apply or daemon start resolves it")
    if c is None:
        lines.append("enforcing: nothing (no commit recorded)")
    else:
        n = c["counts"]
        lines += [f"source:    {c['source']}", f"sha256:    {c['sha256']}",
                  f"applied:   {c['applied']}  (mode {c['mode']}, {', '.join(n.get('modes_used') or [])})"
                  + ("; adopted at the daemon's start (the kernel already held it, nothing written)"
                     if c.get("how") == "adopted" else ""),
                  *([f"revision:  {c['revision']} (published {when(c.get('published_at'))}"
                     + (f", {_age(c.get('published_at'))} old" if c.get("published_at") else "") + ")"]
                    if c.get("revision") is not None else []),
                  f"counts:    {n.get('chains')} chains, {n.get('rules')} rules, {n.get('sets')} sets, "
                  f"{n.get('set_elements')} elements"]
    f = data.get("fleet")
    if f:
        e = f.get("etcd") or {}
        line = f"etcd:      {e.get('state')} since {when(e.get('since'))}"
        if f.get("state") == "degraded":
            line += (" -- DEGRADED: enforcing the last good state"
                     + (" persisted locally" if f.get("served_from_cache") else "")
                     + f" (revision {f.get('revision')})")
        lines.append(line + (f"; {e['error']}" if e.get("error") and e.get("state") != "connected" else ""))
    pc = data.get("pending_confirm")
    if pc:
        lines.append(f"pending:   apply --confirm: rolls back to {pc['rolls_back_to']} in "
                     f"{pc['seconds_left']} s unless 'nsg-agent confirm'")
    err = data["last_error"]
    if err:
        lines.append(f"last error ({err.get('kind')}, {when(err.get('time'))}): {err.get('message')}")
    else:
        lines.append("last error: none")
    if k is None:
        lines.append("kernel:    not read (needs root)")
    else:
        state = ("absent" if not k["table_present"] else
                 "matches the commit" if k["matches_commit"] else "DIFFERS from the commit (drift)")
        lines.append(f"kernel:    table inet nsg_agent {state}")
        hits = k.get("rule_hits", [])
        shown = [h for h in hits if show_all or h["packets"]]
        if shown:
            lines.append(f"  {'packets':>10} {'bytes':>12}  direction  NSG: rule  (NICs)")
            lines += [f"  {h['packets']:>10} {h['bytes']:>12}  {h['direction']:<9}  "
                      f"{h['nsg'] or 'platform'}: {h['rule']}  ({', '.join(h['nics'])})" for h in shown]
        lines.append(f"  ({len(hits)} NSG and platform rules, {len([h for h in hits if h['packets']])} with hits; "
                     "--json has them per internal chain too)")
    return "\n".join(lines)


def _age(t: Any) -> str:
    import time

    s = time.time() - float(t)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def cmd_status(args: argparse.Namespace) -> int:
    store = StatusStore(args.state_dir, args.netns)
    backend = _backend(args.netns) if os.geteuid() == 0 else None
    try:
        data = collect_status(store, backend)
    finally:
        if backend is not None:
            backend.close()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(render_status(data, args.all))
    return EXIT_OK


# --- run ---------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from nsg_agent.daemon.reconciler import FatalError
    from nsg_agent.daemon.shell import Daemon
    from nsg_agent.host.notify import Notifier
    from nsg_agent.logging import configure

    if args.lab:
        from nsg_agent.cli import lab as lab_commands

        return lab_commands.cmd_run(argparse.Namespace(
            file=args.lab, name=args.lab_name, mode=args.mode, debounce=args.debounce,
            resync=args.resync, log_level=args.log_level, down_on_exit=args.remove_on_exit,
            **{k: getattr(args, k) for k in ("strict", "nsg", "parameters", "max_file_size")},
            log_format=args.log_format,
            **{k: getattr(args, k) for k in ("flow_logs", "flow_logs_max_size", "flow_logs_interval",
                                             "flow_logs_flush")},
            no_flow_logs=False))
    store = StatusStore(args.state_dir, args.netns)
    try:
        store.lock()  # one daemon per namespace, held until the process exits
    except (NamespaceLocked, OSError) as e:
        raise _failed(str(e)) from None
    notifier = Notifier()
    backend = _backend(args.netns)
    metrics = None
    if args.metrics or args.metrics_textfile:
        from nsg_agent.daemon import metrics as metrics_mod

        metrics = metrics_mod.Metrics(metrics_mod.reader(StatusStore(args.state_dir, args.netns), backend))
        metrics.textfile = args.metrics_textfile
    configure(args.log_level, sys.stderr, fmt=args.log_format)
    if metrics is not None and args.metrics:
        try:
            metrics.serve(args.metrics if ":" in args.metrics else f"127.0.0.1:{args.metrics}")
        except (OSError, ValueError) as e:
            backend.close()
            raise _failed(f"--metrics {args.metrics}: cannot listen: {e}") from None
    fleet = None
    if args.etcd:
        import socket

        from nsg_agent.cli.fleet import etcd_config
        from nsg_agent.daemon.fleet import FleetAgent

        fleet = FleetAgent(etcd_config(args), args.host or socket.gethostname(), store,
                           report_ttl=args.report_ttl, cache_dir=args.etcd_cache, load_options=load_options(args))
    collector = None
    if args.flow_logs:
        import structlog

        try:
            collector = flows.start(args, args.flow_logs, args.netns,
                                    flows.host_context(StatusStore(args.state_dir, args.netns), args.netns),
                                    metrics, structlog.get_logger("nsg_agent.flowlogs"))
        except OSError as e:
            backend.close()
            raise _failed(f"--flow-logs {args.flow_logs}: {e}") from None
    try:
        from nsg_agent.daemon.targets import HostTarget

        rec = _reconciler(fleet.source if fleet else args.config, args, backend, notifier=notifier,
                          debounce=args.debounce, resync=args.resync,
                          target=HostTarget(flow_logs=bool(args.flow_logs)),
                          observers=[o for o in (fleet.observe if fleet else None,
                                                 metrics.outcome if metrics is not None else None) if o])
        if metrics is not None:
            rec.conntrack.listeners.append(metrics.conntrack_flushed)
        if fleet is not None:
            fleet.start(rec)
        rec.incremental = not args.no_delta
        rec.confirm_edits = args.confirm_edits
        rec.lockout_check = not args.force
        if hasattr(backend, "runner"):
            from nsg_agent.daemon import coverage
            from nsg_agent.host import conntrack

            rec.host_reader = lambda: (coverage.interface_addresses(backend.runner),
                                       [e for port in coverage.MANAGEMENT_PORTS
                                        for e in conntrack.list_entries(backend.runner, 6, port)])
        daemon = Daemon(rec, netns=args.netns, notifier=notifier, remove_on_exit=args.remove_on_exit,
                        watch_links=not args.no_link_events)
        try:
            return daemon.run()
        except FatalError as e:
            raise _failed(str(e)) from None
    finally:
        if fleet is not None:
            fleet.stop()
        flows.stop(collector)
        backend.close()
