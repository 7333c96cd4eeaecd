"""``nsg-agent flows``: read Azure-format flow logs back; and the ``--flow-logs`` options of
``run`` / ``lab run`` that start the collector beside the daemon (docs/flowlogs.md)."""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from nsg_agent.errors import InvalidInput

DEFAULT_MAX_SIZE = "256M"
LAB_MAX_SIZE = "64M"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)i?[bB]?\s*$")
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_size(text: str) -> int:
    m = _SIZE.match(text or "")
    if not m:
        raise InvalidInput(f"not a size: {text!r} (e.g. 64M, 1G, 500000)")
    return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()])


def parse_since(text: str, now: float | None = None) -> int:
    """``1h``, ``30m``, ``2d``, ``90s``, or an ISO time (UTC unless it says) -> epoch ms."""
    now = time.time() if now is None else now
    m = _SINCE.match(text or "")
    if m:
        return int((now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]) * 1000)
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"--since {text!r}: give a duration (30m, 1h, 2d) or an ISO time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1000)


# --- the collector beside a daemon -----------------------------------------------------------


def add_run_options(p: argparse.ArgumentParser, lab: bool = False) -> None:
    if lab:
        p.add_argument("--flow-logs", metavar="DIR", default=None,
                       help="write Azure-format flow logs to DIR (default: /run/nsg-agent/lab/LAB.flowlogs)")
        p.add_argument("--no-flow-logs", action="store_true", help="do not collect flow logs")
    else:
        p.add_argument("--flow-logs", metavar="DIR", default=None,
                       help="write Azure-format flow logs (denied and allowed flows, one file per NIC "
                            "and hour) under DIR; see docs/flowlogs.md")
    p.add_argument("--flow-logs-max-size", metavar="SIZE", default=LAB_MAX_SIZE if lab else DEFAULT_MAX_SIZE,
                   help="bound on the flow-log directory's size; the oldest hours are removed first "
                        f"(default {LAB_MAX_SIZE if lab else DEFAULT_MAX_SIZE})")
    p.add_argument("--flow-logs-interval", metavar="SECONDS", type=float, default=300.0,
                   help="how often live allowed flows get a 'C' tuple with their counts (default 300, as Azure)")
    p.add_argument("--flow-logs-flush", metavar="SECONDS", type=float, default=5.0,
                   help="how often queued tuples are written (default 5)")


def identity_name(netns: str | None) -> str:
    host = socket.gethostname().split(".")[0] or "host"
    return f"{host}-{netns}" if netns else host


def start(args: argparse.Namespace, directory: str, netns: str | None,
          context: Callable[[], Any], metrics: Any = None, log: Any = None) -> Any:
    """Start writer and collector (sockets in ``netns``); returns the collector (close() it)."""
    from nsg_agent.flowlogs.collector import Collector
    from nsg_agent.flowlogs.format import Identity
    from nsg_agent.flowlogs.writer import Writer

    writer = Writer(directory, Identity(identity_name(netns)), max_bytes=parse_size(args.flow_logs_max_size),
                    flush_interval=args.flow_logs_flush).start()
    collector = Collector(writer, context, netns=netns, interval=args.flow_logs_interval, log=log)
    try:
        collector.start()
    except BaseException:
        writer.close()
        raise
    if metrics is not None:
        metrics.add_flow_logs(collector.stats)
    return collector


def stop(collector: Any) -> None:
    if collector is not None:
        collector.close()
        collector.writer.close()


class _CommitCache:
    """The status store's commit, re-read only when the file changed (a rename per write):
    the collector asks every two seconds, and a maximum-size rule index is megabytes."""

    def __init__(self, store: Any):
        self.store = store
        self.key: Any = None
        self.commit: Any = None

    def get(self) -> Any:
        try:
            st = self.store.path.stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        if key is None or key != self.key:
            self.commit = getattr(self.store.read(), "commit", None)
            self.key = key
        return self.commit


def host_context(store: Any, runner_netns: str | None) -> Callable[[], Any]:
    """The context of host mode: the status store's commit plus the NICs' interfaces."""
    from nsg_agent.flowlogs.context import context_from, read_interfaces
    from nsg_agent.host.netns import NetnsRunner

    runner = NetnsRunner(runner_netns, thread_name="flowlog-links")
    commits = _CommitCache(store)
    last: dict[str, Any] = {}

    def read() -> Any:
        commit = commits.get()
        if commit is None:
            return None
        links = runner.call(read_interfaces, timeout=10.0)
        key = (id(commit), repr(sorted(links.items())))
        if last.get("key") != key:
            last["key"], last["ctx"] = key, context_from(commit.rule_index, commit.summary, links)
        return last["ctx"]
    return read


def lab_context(lab: str, store: Any) -> Callable[[], Any]:
    """The context of a lab: the fabric's commit; MACs of the NICs' eth0 (read once per NIC)."""
    from nsg_agent.flowlogs.context import context_from
    from nsg_agent.lab import build

    macs: dict[tuple[str, str], str] = {}
    commits = _CommitCache(store)
    last: dict[str, Any] = {}

    def mac_of(netns: str) -> str:
        import subprocess

        try:
            out = subprocess.run(["ip", "-n", netns, "-j", "link", "show", "dev", "eth0"], capture_output=True,
                                 text=True, timeout=5).stdout
            return json.loads(out)[0].get("address", "")
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return ""

    def read() -> Any:
        commit = commits.get()
        if commit is None:
            return None
        plan = build.previous_plan(lab)
        found = {}
        for nic in (plan.nics if plan else ()):
            key = (nic.name, nic.netns)
            if key not in macs or not macs[key]:
                macs[key] = mac_of(nic.netns)
            found[nic.name] = macs[key]
        key = (id(commit), repr(sorted(found.items())))
        if last.get("key") != key:
            last["key"], last["ctx"] = key, context_from(commit.rule_index, commit.summary, macs=found)
        return last["ctx"]
    return read


# --- nsg-agent flows ---------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "flows", help="print flow logs as a table: what was allowed and denied, by which rule",
        description="Read the Azure-format flow logs that 'run --flow-logs DIR' writes and print "
                    "each flow tuple: time, NIC, direction, source -> destination, protocol, state "
                    "(begin/continue/end/denied), the NSG and rule that decided, packets and bytes "
                    "(source->destination / destination->source). See docs/flowlogs.md.")
    add_read_options(p, default_dir=True)
    p.set_defaults(func=cmd_flows)


def add_read_options(p: argparse.ArgumentParser, default_dir: bool) -> None:
    if default_dir:
        p.add_argument("--dir", metavar="DIR", default="/var/log/nsg-agent/flowlogs",
                       help="the flow-log directory (default /var/log/nsg-agent/flowlogs)")
    else:
        p.add_argument("--dir", metavar="DIR", default=None, help="the flow-log directory (default: the lab's)")
    p.add_argument("--nic", metavar="NIC", help="only this NIC's flows")
    p.add_argument("--denied", action="store_true", help="only denied flows (state D)")
    p.add_argument("--since", metavar="WHEN", help="only flows since WHEN: 30m, 1h, 2d, or an ISO time")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing flows as they are written")
    p.add_argument("--json", action="store_true", help="one JSON object per tuple (JSON lines)")


def cmd_flows(args: argparse.Namespace) -> int:
    return show(args, args.dir)


def show(args: argparse.Namespace, directory: str) -> int:
    from nsg_agent.flowlogs import reader

    if not Path(directory).is_dir():
        raise InvalidInput(f"{directory}: no flow-log directory (start the agent with --flow-logs DIR)")
    flt = reader.Filter(nic=args.nic, denied=args.denied,
                        since_ms=parse_since(args.since) if args.since else None)
    acls = reader.acls_of(directory)
    out = sys.stdout
    if not args.follow:
        tuples = reader.read(directory, flt)
        if args.json:
            for t in tuples:
                out.write(json.dumps(reader.as_dict(t, acls)) + "\n")
        else:
            out.write(reader.table([reader.row(t, acls) for t in tuples]) + "\n")
            denied = sum(1 for t in tuples if t.state == "D")
            out.write(f"{len(tuples)} flow tuples, {denied} denied\n")
        return 0
    try:
        header = False
        for t in reader.follow(directory, flt, stop_after=getattr(args, "follow_for", None)):
            acls = reader.acls_of(directory) if t.acl not in acls else acls
            if args.json:
                out.write(json.dumps(reader.as_dict(t, acls)) + "\n")
            else:
                if not header:
                    out.write("  ".join(reader.HEADER) + "\n")
                    header = True
                out.write("  ".join(reader.row(t, acls)) + "\n")
            out.flush()
    except KeyboardInterrupt:
        pass
    return 0
