"""The fleet commands: ``publish`` (a validated state into etcd, one transaction) and ``fleet
status`` (which host enforces which revision). ``run --etcd URL --host NAME`` is in
cli/enforce.py. See docs/fleet.md.

Exit codes: 0 ok, 2 invalid input, 3 etcd unreachable or refused; ``publish`` exits 4 when
the compare-and-swap lost (someone published since the revision you expected) and ``fleet
status`` exits 1 when a host is stale, failing, degraded or missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from nsg_agent.cli.inputs import add_files, load_inputs
from nsg_agent.errors import EXIT_CONFLICT, EXIT_OK, EXIT_UNHEALTHY, CommandFailed


def add_etcd_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("etcd")
    g.add_argument("--etcd", metavar="URL[,URL...]", required=True,
                   help="etcd client URLs (http:// or https://), tried in turn")
    add_etcd_connection_options(g)


def add_etcd_connection_options(g: Any) -> None:
    g.add_argument("--prefix", default="/nsg-agent/", metavar="P", help="key prefix (default /nsg-agent/)")
    g.add_argument("--etcd-ca", metavar="FILE", help="CA bundle to verify etcd's certificate (https)")
    g.add_argument("--etcd-cert", metavar="FILE", help="client certificate (etcd --client-cert-auth)")
    g.add_argument("--etcd-key", metavar="FILE", help="the client certificate's key")
    g.add_argument("--etcd-user", metavar="NAME", help="etcd user (etcd auth enabled)")
    g.add_argument("--etcd-password-file", metavar="FILE",
                   help="file holding the user's password (or NSG_AGENT_ETCD_PASSWORD)")


def etcd_config(args: argparse.Namespace):
    from nsg_agent.errors import InvalidInput
    from nsg_agent.sources.etcd import EtcdConfig

    password = os.environ.get("NSG_AGENT_ETCD_PASSWORD")
    if getattr(args, "etcd_password_file", None):
        try:
            password = Path(args.etcd_password_file).read_text().rstrip("\n")
        except OSError as e:
            raise InvalidInput(f"--etcd-password-file: {e}") from None
    if bool(args.etcd_cert) != bool(args.etcd_key):
        raise InvalidInput("--etcd-cert and --etcd-key go together")
    return EtcdConfig.parse(args.etcd, args.prefix, ca=args.etcd_ca, cert=args.etcd_cert, key=args.etcd_key,
                            user=args.etcd_user, password=password)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "publish", help="validate FILE... and write it to etcd for the fleet (one transaction)",
        description="Validate FILE... exactly like 'apply' does, split it into one key per object "
                    "(docs/fleet.md) and write what changed in ONE etcd transaction: changed keys "
                    "put, vanished keys deleted, the marker rewritten. The transaction compares the "
                    "marker's revision with --expect-revision (or with the revision read just "
                    "before): two operators cannot overwrite each other. Exit 4 when that compare lost.")
    add_files(p)
    add_etcd_options(p)
    p.add_argument("--expect-revision", type=int, metavar="N", default=None,
                   help="publish only if the state is still at revision N (0: nothing published yet); "
                        "'fleet status' and a previous publish print it")
    p.add_argument("--dry-run", action="store_true", help="show the key diff, write nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_publish)

    p = subparsers.add_parser("fleet", help="the fleet in etcd: which host runs which revision")
    sub = p.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    s = sub.add_parser("status", help="every agent's report: revision enforced, stale, failing, missing",
                       description="Read the agents' reports (each under a lease-bound key: a dead host "
                                   "disappears within the lease's TTL) and compare them with the "
                                   "published revision. Exit 1 when a host is not current.")
    add_etcd_options(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_fleet_status)


def _failed(message: str) -> Exception:
    return CommandFailed(message)


def _client(args: argparse.Namespace):
    from nsg_agent.sources.etcd import Etcd

    return Etcd(etcd_config(args))


def cmd_publish(args: argparse.Namespace) -> int:
    from nsg_agent.sources import etcd as etcd_mod
    from nsg_agent.sources import fleetstate as fs

    loaded = load_inputs(args)  # validated exactly like 'apply': invalid input exits 2 here
    for w in loaded.warnings:
        print(f"nsg-agent: warning: {w}", file=sys.stderr)
    if loaded.kind == "service-tags":
        from nsg_agent.errors import InvalidInput

        raise InvalidInput("publish needs a desired state (the service-tag files it references are published with it)")
    keys = fs.encode(loaded, lambda p: Path(p).read_bytes())
    unowned = sorted(n.name for n in loaded.state.networkInterfaces if not n.host)
    if unowned:
        print(f"nsg-agent: warning: NICs without a host (no agent enforces them; they still count as "
              f"ASG members): {', '.join(unowned)}", file=sys.stderr)
    client = _client(args)
    try:
        try:
            result = etcd_mod.publish(client, keys, expect_revision=args.expect_revision, dry_run=args.dry_run,
                                      sources=[str(Path(f).absolute()) for f in args.file])
        except (etcd_mod.EtcdUnavailable, etcd_mod.EtcdRequestFailed) as e:
            raise _failed(str(e)) from None
    finally:
        client.close()
    d = result.diff
    hosts = sorted({n.host for n in loaded.state.networkInterfaces if n.host})
    if args.json:
        print(json.dumps({"ok": result.succeeded, "dry_run": args.dry_run, "revision": result.revision,
                          "previous_revision": result.previous or None, "conflict_revision": result.conflict_revision,
                          "put": sorted(d.put), "delete": d.delete, "unchanged": d.unchanged,
                          "keys": result.keys_total, "bytes": result.bytes_written, "hosts": hosts}, indent=2))
    else:
        for line in d.lines(result.old):
            print(line)
        summary = (f"{len([k for k in d.put if k not in result.old])} added, "
                   f"{len([k for k in d.put if k in result.old])} changed, {len(d.delete)} deleted, "
                   f"{d.unchanged} unchanged keys")
        if not result.succeeded:
            print(f"refused: the state is at revision {result.conflict_revision}, not "
                  f"{args.expect_revision if args.expect_revision is not None else result.previous} "
                  "(someone published meanwhile): look at it, then publish again "
                  f"with --expect-revision {result.conflict_revision}", file=sys.stderr)
        elif args.dry_run:
            print(f"dry run: {summary}; the state is at revision {result.previous or 'none (nothing published)'}")
        else:
            print(f"published revision {result.revision} under {client.config.prefix} "
                  f"({summary}, {result.bytes_written} bytes in one transaction; "
                  f"{len(hosts)} hosts own NICs)")
    return EXIT_OK if result.succeeded else EXIT_CONFLICT


def _ago(t: Any, now: float) -> str:
    if not t:
        return "-"
    s = now - float(t)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"


def _error_line(err: Any, width: int = 110) -> str:
    if not isinstance(err, dict):
        return str(err)[:width]
    problems = [p for p in err.get("problems") or [] if isinstance(p, dict)]
    if problems:
        p = problems[0]
        text = f"{err.get('kind')}: {p.get('file')}: {p.get('path') + ': ' if p.get('path') else ''}{p.get('message')}"
        more = len(problems) - 1
        text = text + (f" (+{more} more)" if more else "")
    else:
        text = f"{err.get('kind')}: {' '.join(str(err.get('message', '')).split())}"
    return text if len(text) <= width else text[:width - 3] + "..."


def render_fleet(data: dict, now: float | None = None) -> str:
    now = time.time() if now is None else now
    pub = data["published"]
    lines = [f"etcd:      {data['endpoint']} (etcd revision {data['etcd_revision']})"]
    if pub.get("revision"):
        lines.append(f"published: revision {pub['revision']}, {_ago(pub.get('at'), now)} by {pub.get('by')}, "
                     f"{pub.get('keys')} keys")
    else:
        lines.append("published: nothing (nsg-agent publish FILE --etcd URL)")
    lines.append(f"{'host':<16} {'verdict':<9} {'revision':>8}  {'applied':<10} {'etcd':<12} nics / last error")
    for h in data["hosts"]:
        etcd_state = (h.get("etcd") or {}).get("state", "-")
        detail = ", ".join(h.get("nics") or []) or "-"
        if h.get("last_error"):
            detail = _error_line(h["last_error"])
        rev = h.get("revision") if h.get("revision") is not None else "-"
        behind = f" (-{h['behind']})" if h.get("behind") else ""
        lines.append(f"{h['host']:<16} {h['verdict']:<9} {str(rev) + behind:>8}  {_ago(h.get('applied_at'), now):<10} "
                     f"{etcd_state:<12} {detail}")
    for m in data["missing"]:
        lines.append(f"{m:<16} {'missing':<9} {'-':>8}  {'-':<10} {'-':<12} owns NICs, no agent reports")
    if data.get("unowned_nics"):
        lines.append(f"NICs without a host (enforced nowhere): {', '.join(data['unowned_nics'])}")
    counts: dict[str, int] = {}
    for h in data["hosts"]:
        counts[h["verdict"]] = counts.get(h["verdict"], 0) + 1
    if data["missing"]:
        counts["missing"] = len(data["missing"])
    lines.append(", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no agent reports")
    return "\n".join(lines)


def cmd_fleet_status(args: argparse.Namespace) -> int:
    from nsg_agent.sources import etcd as etcd_mod

    client = _client(args)
    try:
        try:
            data = etcd_mod.fleet_status(client)
        except (etcd_mod.EtcdUnavailable, etcd_mod.EtcdRequestFailed) as e:
            raise _failed(str(e)) from None
    finally:
        client.close()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(render_fleet(data))
    healthy = all(h["verdict"] == "current" for h in data["hosts"]) and not data["missing"]
    return EXIT_OK if healthy else EXIT_UNHEALTHY
