"""Inspection commands: ``validate``, ``effective-rules`` and ``verify``.

These are the Network Watcher equivalents of §8 of the semantics: they load a desired-state
file (or an Azure export), resolve it with the pure semantics engine and print what it
means. Nothing here touches the kernel.

Exit codes (see nsg_agent.cli): 0 ok / allowed, 1 denied (verify), 2 invalid input.
"""

from __future__ import annotations

import argparse
import csv
import io
import ipaddress
import json
import re
import sys
from typing import TYPE_CHECKING, Any, Iterable

from nsg_agent.cli.inputs import add_files
from nsg_agent.desired.vocabulary import Direction, LevelKind, Protocol
from nsg_agent.errors import LoadError, Problem
from nsg_agent.semantics.policy import AddressTerm, Flow, LevelDecision, NicPolicy, ResolvedRule, Verdict

if TYPE_CHECKING:
    from nsg_agent.desired.loader import LoadedState

# The loader, the model (pydantic) and the semantics engine are imported where a command
# runs, not here: building the parser (and so `--help`) must stay fast.

from nsg_agent.errors import EXIT_DENY, EXIT_INVALID, EXIT_OK

LEVEL_TITLE = {LevelKind.SUBNET: "subnet NSG", LevelKind.NIC: "NIC NSG"}
PORT_PROTOCOL_NUMBERS = {6, 17}
PROTOCOL_NAMES = {6: "Tcp", 17: "Udp", 1: "Icmp", 58: "Icmp", 50: "Esp", 51: "Ah"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate", help="check a desired-state file (or an Azure export) and summarise it",
        description="Load and validate FILE. Prints OK and a summary, or every problem "
                    "(file:line: field path: message). Exit 0 if valid, 2 if not.")
    add_files(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_validate)

    p = subparsers.add_parser(
        "schema", help="print the desired-state JSON Schema (for editors and CI checks)",
        description="Print the JSON Schema of the desired-state file, generated from the "
                    "models the loader validates with. Point an editor at it, e.g. with the "
                    "YAML language server: '# yaml-language-server: $schema=nsg-agent.schema.json'.")
    p.set_defaults(func=cmd_schema)

    p = subparsers.add_parser(
        "effective-rules", help="a NIC's effective security rules, like the Azure portal's",
        description="The aggregate rule list of one NIC, per direction and level (inbound: "
                    "subnet NSG then NIC NSG; outbound: NIC NSG then subnet NSG), default rules "
                    "included. Tags and ASGs are shown by name; --expand lists their prefixes. "
                    "JSON follows Azure's NetworkInterfaceEffectiveNSGList shape (tag and ASG "
                    "terms always carry expanded*AddressPrefix there, as in Azure).")
    add_files(p)
    p.add_argument("--nic", required=True, metavar="NAME", help="network interface name")
    p.add_argument("--direction", type=_direction, metavar="Inbound|Outbound",
                   help="only this direction (default: both)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--json", dest="format", action="store_const", const="json",
                   help="same as --format json")
    p.add_argument("--expand", action="store_true",
                   help="expand service tags, VirtualNetwork/Internet and ASGs into prefixes")
    g = p.add_argument_group("hit counters from the live kernel")
    g.add_argument("--live", action="store_true",
                   help="show each rule's packets and bytes as the kernel counted them (needs root)")
    g.add_argument("--netns", metavar="NAME", default=None, help="with --live: the enforced namespace")
    g.add_argument("--state-dir", metavar="DIR", default=None,
                   help="with --live: where the status files live (default /run/nsg-agent)")
    p.set_defaults(func=cmd_effective_rules)

    p = subparsers.add_parser(
        "verify", help="IP flow verify: is this flow allowed for this NIC, and by which rule?",
        description="Evaluate one flow (a new connection, as Network Watcher's IP flow verify "
                    "does) against a NIC's NSGs. Prints Allow or Deny and the decision at each "
                    "level. Exit 0 allow, 1 deny, 2 invalid input. For TCP and UDP give ports "
                    "(IP:PORT, or [IPv6]:PORT).")
    add_files(p)
    p.add_argument("--nic", required=True, metavar="NAME")
    p.add_argument("--direction", required=True, type=_direction, metavar="Inbound|Outbound")
    p.add_argument("--protocol", required=True, metavar="P",
                   help="tcp, udp, icmp, esp, ah (any case) or an IANA number 0-255")
    p.add_argument("--local", required=True, metavar="IP[:PORT]", help="the NIC's own address")
    p.add_argument("--remote", required=True, metavar="IP[:PORT]", help="the other end")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    from nsg_agent.cli import kernelcheck

    kernelcheck.add_arguments(p)
    p.set_defaults(func=cmd_verify)


def _direction(text: str) -> Direction:
    for d in Direction:
        if d.value.lower() == text.strip().lower():
            return d
    raise argparse.ArgumentTypeError(f"{text!r} is not Inbound or Outbound")


# --- validate ------------------------------------------------------------------------------


def summary(loaded: LoadedState) -> dict[str, Any]:
    """Counts of what a loaded file contains (used by ``validate``)."""
    s = loaded.state
    return {
        "virtualNetworks": len(s.virtualNetworks),
        "subnets": sum(len(v.subnets) for v in s.virtualNetworks),
        "networkInterfaces": len(s.networkInterfaces),
        "networkSecurityGroups": len(s.networkSecurityGroups),
        "securityRules": sum(len(n.securityRules) for n in s.networkSecurityGroups),
        "applicationSecurityGroups": len(s.applicationSecurityGroups),
        "serviceTags": len(loaded.tags.tags),
        "serviceTagFiles": len(loaded.tag_files),
        "externalHosts": len(s.lab.externalHosts),
    }


_SUMMARY_LABELS = (
    ("virtualNetworks", "virtual networks"),
    ("subnets", "subnets"),
    ("networkInterfaces", "network interfaces"),
    ("networkSecurityGroups", "network security groups"),
    ("securityRules", "security rules"),
    ("applicationSecurityGroups", "application security groups"),
    ("serviceTags", "service tags"),
    ("externalHosts", "lab external hosts"),
)


def cmd_schema(args: argparse.Namespace) -> int:
    from nsg_agent.desired.model import desired_state_schema

    _print_json(desired_state_schema())
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from nsg_agent.cli.inputs import files_label, load_inputs

    label = files_label(args.file)
    try:
        loaded = load_inputs(args)
    except LoadError as e:
        if args.json:
            _print_json({"ok": False, "file": label, "files": list(args.file),
                         "problems": [p.as_dict() for p in e.problems]})
        else:
            n = len(e.problems)
            print(f"INVALID {label}: {n} problem{'s' if n != 1 else ''}")
            for p in e.problems:
                print(f"  {p}")
        return EXIT_INVALID
    counts = summary(loaded)
    if args.json:
        _print_json({"ok": True, "file": label, "files": [str(f) for f in loaded.files], "kind": loaded.kind,
                     "sha256": loaded.sha256,
                     "counts": counts, "warnings": [w.as_dict() for w in loaded.warnings]})
        return EXIT_OK
    print(f"OK {label} ({loaded.kind})")
    rows = [[label, str(counts[key])] for key, label in _SUMMARY_LABELS]
    if counts["serviceTagFiles"] and loaded.kind != "service-tags":
        rows[6][1] += f" (from {counts['serviceTagFiles']} file{'s' if counts['serviceTagFiles'] != 1 else ''})"
    print(render_table(None, rows, indent=2))
    if loaded.warnings:
        print(f"{len(loaded.warnings)} warning{'s' if len(loaded.warnings) != 1 else ''}:")
        for w in loaded.warnings:
            print(f"  {w}")
    else:
        print("no warnings")
    return EXIT_OK


# --- effective-rules ----------------------------------------------------------------------


def _load_policy(args: argparse.Namespace, nic_name: str) -> tuple[LoadedState, NicPolicy] | int:
    from nsg_agent.cli.inputs import load_inputs
    from nsg_agent.semantics.resolver import find_nic, resolve

    loaded = load_inputs(args)  # LoadError -> exit 2 in nsg_agent.cli
    policy = resolve(loaded.state, loaded.tags)
    try:
        return loaded, find_nic(policy, nic_name)
    except KeyError as e:
        _error(str(e.args[0]))
        return EXIT_INVALID


def address_text(term: AddressTerm) -> str:
    """How a rule side reads in a table: '*', a tag, 'ASG WebServers', or the prefixes."""
    if term.any:
        return "*"
    if term.label.startswith("asg:"):
        return ", ".join("ASG " + part[4:] for part in term.label.split(","))
    return term.label.replace(",", ", ")


def _is_named(term: AddressTerm) -> bool:
    """A tag or ASG (its prefixes are not what the user wrote)."""
    from nsg_agent.desired.model import looks_like_address

    if term.any:
        return False
    return term.label.startswith("asg:") or not all(looks_like_address(x) for x in term.label.split(","))


def _expanded(term: AddressTerm) -> list[str]:
    return ["0.0.0.0/0", "::/0"] if term.any else [str(p) for p in term.prefixes]


def _protocol_text(p: Protocol) -> str:
    return "Any" if p is Protocol.ANY else p.value


def _rule_cells(rule: ResolvedRule, expand: bool) -> list[str]:
    def side(term: AddressTerm) -> str:
        text = address_text(term)
        if expand and _is_named(term):
            prefixes = _expanded(term)
            text += "\n" + ("\n".join("  " + p for p in prefixes) if prefixes else "  (no addresses)")
        return text

    name = rule.name + (" (default)" if rule.default else "")
    return [str(rule.priority), name, side(rule.source), str(rule.source_ports),
            side(rule.destination), str(rule.destination_ports), _protocol_text(rule.protocol),
            rule.access.value]


RULE_HEADERS = ["Priority", "Name", "Source", "Source ports", "Destination",
                "Destination ports", "Protocol", "Access"]


def _directions(args: argparse.Namespace) -> tuple[Direction, ...]:
    return (args.direction,) if args.direction else (Direction.INBOUND, Direction.OUTBOUND)


def _level_order(direction: Direction) -> tuple[LevelKind, LevelKind]:
    return ((LevelKind.SUBNET, LevelKind.NIC) if direction is Direction.INBOUND
            else (LevelKind.NIC, LevelKind.SUBNET))


def cmd_effective_rules(args: argparse.Namespace) -> int:
    found = _load_policy(args, args.nic)
    if isinstance(found, int):
        return found
    loaded, nic = found
    hits = live_hits(args, nic) if getattr(args, "live", False) else None
    if args.format == "json":
        body = effective_json(loaded, nic, _directions(args))
        if hits is not None:
            _attach_hits(body, nic, hits)
        _print_json(body)
    elif args.format == "csv":
        _emit(effective_csv(nic, _directions(args), args.expand))
    else:
        _emit(effective_table(nic, _directions(args), args.expand, loaded, hits) + "\n")
    return EXIT_OK


def live_hits(args: argparse.Namespace, nic: NicPolicy) -> dict:
    """(level kind, nsg, direction, flow-log rule name) -> (packets, bytes, NICs sharing)
    from the kernel's counters and the enforced commit's rule index."""
    import os

    from nsg_agent.daemon.status import DEFAULT_STATE_DIR, StatusStore
    from nsg_agent.errors import OperationFailed
    from nsg_agent.kernel import counters
    from nsg_agent.kernel.backend import NftBackend

    if os.geteuid() != 0:
        raise OperationFailed("effective-rules --live reads the kernel's counters: run it as root")
    commit = StatusStore(args.state_dir or os.environ.get("NSG_AGENT_STATE_DIR", DEFAULT_STATE_DIR),
                         args.netns).read().commit
    if commit is None:
        raise OperationFailed(f"nothing is enforced in {args.netns or 'this namespace'} (no commit recorded)")
    backend = NftBackend(args.netns)
    try:
        kernel = backend.counters()
    finally:
        backend.close()
    return counters.for_nic(kernel, commit.rule_index, nic.nic)


def _hit(hits: dict | None, kind: LevelKind, rule: ResolvedRule) -> tuple[int, int, tuple[str, ...]] | None:
    if hits is None:
        return None
    return hits.get((kind.value, rule.nsg, rule.direction.value, rule.log_name), (0, 0, ()))


def _attach_hits(body: dict, nic: NicPolicy, hits: dict) -> None:
    """effective-rules --json --live: each rule gets "hits" (an extension of Azure's shape)."""
    for entry, kind in zip(body["value"], [lv.kind for lv in _entry_levels(nic)]):
        for r in entry["effectiveSecurityRules"]:
            name = r["name"].split("/", 1)[1]
            log = ("DefaultRule_" if r["name"].startswith("default") else "UserRule_") + name
            nsg = entry["networkSecurityGroup"]["id"].rsplit("/", 1)[-1]
            p, b, shared = hits.get((kind.value, nsg, r["direction"], log), (0, 0, ()))
            r["hits"] = {"packets": p, "bytes": b, "sharedWith": [n for n in shared if n != nic.nic]}


def _entry_levels(nic: NicPolicy) -> list:
    """The levels in effective_nsg_list's entry order (subnet NSG first, then NIC NSG)."""
    out = []
    for kind in (LevelKind.SUBNET, LevelKind.NIC):
        found = [lv for lv in nic.inbound + nic.outbound if lv.kind is kind]
        if found:
            out.append(found[0])
    return out


def effective_table(nic: NicPolicy, directions: Iterable[Direction], expand: bool,
                    loaded: LoadedState | None = None, hits: dict | None = None) -> str:
    addrs = ", ".join(str(a) for a in nic.addresses)
    out = [f"Effective security rules of NIC {nic.nic} ({addrs}; subnet {nic.subnet})"]
    for direction in directions:
        out.append("")
        out.append(direction.value)
        by_kind = {lv.kind: lv for lv in nic.levels(direction)}
        for kind in _level_order(direction):
            lv = by_kind.get(kind)
            where = f"subnet {nic.subnet}" if kind is LevelKind.SUBNET else f"NIC {nic.nic}"
            if lv is None:
                out.append(f"  {LEVEL_TITLE[kind]}: none on {where} (this level allows everything)")
                continue
            out.append(f"  {LEVEL_TITLE[kind]} {lv.nsg} (on {where})")
            rows = [_rule_cells(r, expand) for r in lv.rules]
            headers = RULE_HEADERS
            if hits is not None:
                headers = RULE_HEADERS + ["Packets", "Bytes"]
                shared: set[str] = set()
                for row, r in zip(rows, lv.rules):
                    p, b, users = _hit(hits, kind, r)  # type: ignore[misc]
                    row += [str(p), str(b)]
                    shared.update(u for u in users if u != nic.nic)
                if shared:
                    out.append(f"    (counters of this NSG's chains are shared with {', '.join(sorted(shared))})")
            out.append(render_table(headers, rows, indent=4))
    notes = platform_notes(nic, directions)
    if notes:
        out.append("")
        out.append("Platform (emulated, evaluated before the NSGs):")
        out += [f"  - {n}" for n in notes]
    return "\n".join(out)


PLATFORM_TEXT = {
    "BlockOutboundSmtp": "outbound SMTP (TCP 25) to Internet is blocked by the platform",
    "PlatformExemption": "platform address: exempt from NSG rules",
    "BlockGre": "GRE (IP protocol 47) is dropped by the platform inside a VNet",
    "BlockIpInIp": "IP-in-IP (IP protocol 4) is dropped by the platform inside a VNet",
    "BlockMulticast": "multicast is dropped by the platform inside a VNet",
    "BlockBroadcast": "broadcast is dropped by the platform inside a VNet",
}


def platform_notes(nic: NicPolicy, directions: Iterable[Direction]) -> list[str]:
    notes = []
    if nic.platform_drops:
        broadcast = next((d.destination for d in nic.platform_drops if d.rule.name == "BlockBroadcast"), None)
        where = ", ".join(str(p) for p in broadcast.prefixes) if broadcast is not None else ""
        notes.append("GRE (47), IP-in-IP (4), multicast (224.0.0.0/4, ff00::/8 but ICMPv6) and broadcast "
                     f"({where}) are dropped in both directions (platform.platformDrops)")
    if Direction.OUTBOUND not in tuple(directions):
        return notes
    if nic.smtp_block is not None:
        notes.append("outbound TCP port 25 (SMTP) to Internet is blocked (platform.outboundSmtp: blocked)")
    if nic.platform_exempt is not None:
        notes.append("outbound to 168.63.129.16 and 169.254.169.254 is exempt from NSG rules, "
                     "except rules with AzurePlatformDNS / AzurePlatformIMDS / AzurePlatformLKM")
    return notes


def effective_json(loaded: LoadedState, nic: NicPolicy, directions: Iterable[Direction]) -> dict[str, Any]:
    """Azure's NetworkInterfaceEffectiveNSGList body (nsg_agent.semantics.answers)."""
    from nsg_agent.semantics import answers
    from nsg_agent.semantics.resolver import Resolver

    return answers.effective_nsg_list(loaded.state, Resolver(loaded.state, loaded.tags), nic, directions)


def effective_csv(nic: NicPolicy, directions: Iterable[Direction], expand: bool) -> str:
    from nsg_agent.semantics.resolver import effective_rules

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["direction", "level", "nsg", "priority", "name", "source", "sourcePorts",
              "destination", "destinationPorts", "protocol", "access", "default"]
    if expand:
        header += ["expandedSource", "expandedDestination"]
    w.writerow(header)
    for direction in directions:
        for lv, r in effective_rules(nic, direction):
            row = [direction.value, lv.kind.value, lv.nsg, r.priority, r.name,
                   address_text(r.source), str(r.source_ports), address_text(r.destination),
                   str(r.destination_ports), _protocol_text(r.protocol), r.access.value,
                   "yes" if r.default else "no"]
            if expand:
                row += [" ".join(_expanded(r.source)), " ".join(_expanded(r.destination))]
            w.writerow(row)
    return buf.getvalue()


# --- verify ------------------------------------------------------------------------------


class BadArgument(ValueError):
    pass


def parse_endpoint(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]:
    """'10.0.0.4', '10.0.0.4:80', '[2001:db8::1]:443' or '2001:db8::1'."""
    s = text.strip()
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", s)
    if m:
        host, port = m.group(1), m.group(2)
    elif s.count(":") == 1:
        host, port = s.split(":")
    else:
        host, port = s, None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise BadArgument(f"{text!r} is not IP or IP:PORT") from None
    if port is not None:
        if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
            raise BadArgument(f"port in {text!r} must be 0-65535")
        return addr, int(port)
    return addr, None


def parse_flow(args: argparse.Namespace) -> Flow:
    from nsg_agent.semantics.resolver import protocol_number

    if args.protocol.strip() in ("*", "any", "all", "Any", "All"):
        raise BadArgument("a flow has one protocol: give tcp, udp, icmp, esp, ah or a number, not '*'")
    try:
        proto = protocol_number(args.protocol)
    except ValueError as e:
        raise BadArgument(str(e)) from None
    local, lport = parse_endpoint(args.local)
    remote, rport = parse_endpoint(args.remote)
    if local.version != remote.version:
        raise BadArgument("local and remote addresses must both be IPv4 or both IPv6")
    if proto in PORT_PROTOCOL_NUMBERS and (lport is None or rport is None):
        raise BadArgument(f"{PROTOCOL_NAMES[proto]} needs ports: --local IP:PORT --remote IP:PORT")
    if proto not in PORT_PROTOCOL_NUMBERS and (lport is not None or rport is not None):
        raise BadArgument(f"protocol {args.protocol} has no ports; give addresses only")
    return Flow(args.direction, proto, local, remote, lport, rport)


def _decision_json(d: LevelDecision) -> dict[str, Any]:
    from nsg_agent.semantics import answers

    return {
        "level": d.kind.value if d.kind is not None else "platform",
        "nsg": d.nsg,
        "ruleName": answers.rule_name(d.rule) if d.rule is not None else None,
        "priority": d.rule.priority if d.rule is not None and not d.rule.platform else None,
        "default": bool(d.rule is not None and d.rule.default),
        "access": d.access.value,
    }


def _decision_text(d: LevelDecision) -> str:
    if d.kind is None:
        rule = d.rule
        what = PLATFORM_TEXT.get(rule.name if rule else "", rule.name if rule else "")
        return f"platform: {what} -> {d.access.value}"
    title = LEVEL_TITLE[d.kind]
    if d.nsg is None:
        return f"{title}: none (allows everything) -> {d.access.value}"
    if d.rule is None:
        return f"{title} {d.nsg}: no rule matched -> {d.access.value}"
    kind = "default rule" if d.rule.default else "rule"
    return f"{title} {d.nsg}: {kind} {d.rule.name} (priority {d.rule.priority}) -> {d.access.value}"


def _endpoint_text(addr, port) -> str:
    if port is None:
        return str(addr)
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def verdict_json(loaded: LoadedState, nic: NicPolicy, flow: Flow, verdict: Verdict) -> dict[str, Any]:
    from nsg_agent.semantics import answers

    out = answers.ip_flow_verify(loaded.state, nic, flow, verdict, [_decision_json(d) for d in verdict.path])
    out["nic"] = nic.nic
    out["flow"] = {"direction": flow.direction.value, "protocol": flow.protocol,
                   "localIPAddress": str(flow.local), "localPort": flow.local_port,
                   "remoteIPAddress": str(flow.remote), "remotePort": flow.remote_port}
    return out


def cmd_verify(args: argparse.Namespace) -> int:
    from nsg_agent.semantics.resolver import evaluate, resolve

    try:
        flow = parse_flow(args)
    except BadArgument as e:
        _error(str(e))
        return EXIT_INVALID
    found = _load_policy(args, args.nic)
    if isinstance(found, int):
        return found
    loaded, nic = found
    if flow.local not in nic.addresses:
        _error(f"--local {flow.local} is not an address of NIC {nic.nic} "
               f"({', '.join(str(a) for a in nic.addresses)})")
        return EXIT_INVALID
    verdict = evaluate(nic, flow)
    if getattr(args, "kernel", False):
        from nsg_agent.cli import kernelcheck

        policy = resolve(loaded.state, loaded.tags)
        if args.json:
            return kernelcheck.run(args, loaded, policy, nic, flow, verdict, verdict_json(loaded, nic, flow, verdict))
        _print_verify_text(loaded, nic, flow, verdict)
        return kernelcheck.run(args, loaded, policy, nic, flow, verdict, None)
    if args.json:
        _print_json(verdict_json(loaded, nic, flow, verdict))
    else:
        _print_verify_text(loaded, nic, flow, verdict)
    return EXIT_OK if verdict.allowed else EXIT_DENY


def _print_verify_text(loaded: LoadedState, nic: NicPolicy, flow: Flow, verdict: Verdict) -> None:
    from nsg_agent.semantics import answers

    proto = PROTOCOL_NAMES.get(flow.protocol, f"protocol {flow.protocol}")
    src, sport, dst, dport = flow.oriented()
    deciding = verdict.deciding
    by = ""
    if deciding is not None and deciding.rule is not None:
        by = f" by rule {deciding.rule.name}" + (f" of NSG {deciding.nsg}" if deciding.nsg else "")
    elif deciding is not None:
        by = " (no NSG applies)"
    print(f"{verdict.access.value}{by}")
    print(f"  {flow.direction.value} {proto} {_endpoint_text(src, sport)} -> "
          f"{_endpoint_text(dst, dport)} at NIC {nic.nic}")
    for i, d in enumerate(verdict.path, 1):
        print(f"  {i}. {_decision_text(d)}")
    decided = {(d.kind, d.nsg) for d in verdict.path}
    for lv in nic.levels(flow.direction):
        if (lv.kind, lv.nsg) not in decided and not verdict.allowed:
            print(f"     ({LEVEL_TITLE[lv.kind]} {lv.nsg} not evaluated: already denied)")
    answer = answers.ip_flow_verify(loaded.state, nic, flow, verdict, [])
    if "azure" in answer:
        azure = answer["azure"]
        if "error" in azure:
            print(f"  note: Azure's IP flow verify answers the error {azure['error']['code']} "
                  "(no NSG on this NIC or its subnet); the data plane allows the flow")
        else:
            print(f"  note: Azure's IP flow verify considers NSGs only and answers {azure['access']} "
                  f"by {azure['ruleName']}")
    for note in answer.get("notes", []):
        print(f"  note: {note}")


# --- output helpers ------------------------------------------------------------------------


def render_table(headers: list[str] | None, rows: list[list[str]], indent: int = 0) -> str:
    """Aligned columns; a cell may span several lines (expanded prefixes)."""
    all_rows = ([headers] if headers else []) + rows
    if not all_rows:
        return ""
    split = [[str(c).split("\n") for c in row] for row in all_rows]
    ncol = max(len(r) for r in split)
    widths = [max((max(len(x) for x in r[i]) for r in split if i < len(r)), default=0)
              for i in range(ncol)]
    pad = " " * indent
    lines = []
    for ri, row in enumerate(split):
        height = max(len(c) for c in row)
        for h in range(height):
            cells = [(row[i][h] if i < len(row) and h < len(row[i]) else "").ljust(widths[i])
                     for i in range(ncol)]
            lines.append((pad + "  ".join(cells)).rstrip())
        if headers and ri == 0:
            lines.append(pad + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _print_json(obj: Any) -> None:
    _emit(json.dumps(obj, indent=2) + "\n")


def _emit(text: str) -> None:
    """Write to stdout now (a closed pipe surfaces here; nsg_agent.cli ends quietly on it)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _error(message: str) -> None:
    print(f"nsg-agent: {message}", file=sys.stderr)


__all__ = ["register", "summary", "effective_json", "effective_table", "effective_csv",
           "verdict_json", "parse_endpoint", "render_table", "Problem"]
