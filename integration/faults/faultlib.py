"""The fault suite's tools: namespaces, the daemon as a subprocess, what the kernel enforces,
and the summary printed at the end of the run.

Network safety: every namespace is ``nsgf-*`` (host_helpers.make_host_pair with the suite's
prefix) and deleted in a ``finally``; nothing runs in or touches the root namespace (the
agent acts through ``--netns``; ``root_nft_guard`` checks the root's tables). Every process
started here is bounded in time and stopped by its pid in a ``finally``; processes fed hostile
input run under an address-space limit, so a loader without item 1's bounds cannot take the
machine's memory with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from host_helpers import NSG_AGENT, AgentProcess, HostPair, host_policy, run, stop_process

PREFIX = "nsgf"
AS_LIMIT = 2 << 30  # bytes of address space for any process fed hostile input

# --- the summary ------------------------------------------------------------------------------

SUMMARY: dict[str, dict[str, Any]] = {}


def record(section: str, **counts: Any) -> None:
    """Add to the summary printed after the run (integers add up, other values replace)."""
    row = SUMMARY.setdefault(section, {})
    for k, v in counts.items():
        row[k] = row.get(k, 0) + v if isinstance(v, int) and not isinstance(v, bool) else v


def summary_lines() -> list[str]:
    if not SUMMARY:
        return []
    lines = ["fault suite summary (zeros where zeros are promised):"]
    for section, row in SUMMARY.items():
        lines.append(f"  {section}: " + ", ".join(f"{k}={v}" for k, v in row.items()))
    return lines


# --- limits -----------------------------------------------------------------------------------


def limited() -> None:
    """preexec_fn: cap the child's address space (hostile input must not eat the host)."""
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


# --- the daemon ---------------------------------------------------------------------------------


class Agents:
    """Starts ``nsg-agent run --netns`` processes; each stopped (SIGTERM, then SIGKILL) by
    pid at the end, whatever happened."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started: list[AgentProcess] = []

    def start(self, config: Path, netns: str, state_dir: Path, *extra: str, resync: float = 0.5) -> AgentProcess:
        log_path = self.workdir / f"agent-{len(self.started)}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [NSG_AGENT, "run", "--config", str(config), "--netns", netns, "--state-dir", str(state_dir),
                 "--resync", str(resync), "--debounce", "0.1", "--no-link-events", *extra],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=limited)
        agent = AgentProcess(proc, log_path)
        self.started.append(agent)
        return agent

    def close(self) -> None:
        for a in self.started:
            stop_process(a.proc, grace=3)


def wait_event(agent: AgentProcess, names: tuple[str, ...], after: int, timeout: float) -> dict | None:
    """The first event named one of ``names`` beyond the first ``after`` log events."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evs = agent.events()[after:]
        hit = next((e for e in evs if e.get("event") in names), None)
        if hit is not None:
            return hit
        if agent.proc.poll() is not None:
            return None
        time.sleep(0.02)
    return None


# --- what the kernel enforces -------------------------------------------------------------------


@dataclass
class Table:
    name: str
    stamp: str | None = None
    live: bool = False  # some base chain has rules (an inert table has none)
    rules: int = 0  # without the stamp rule
    elements: dict[str, int] = field(default_factory=dict)  # named set/map -> element count


def ruleset(ns: str) -> dict:
    return json.loads(run("ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset", timeout=60).stdout or "{}")


def tables(ns: str, listing: dict | None = None) -> dict[tuple[str, str], Table]:
    """Every table of the namespace: (family, name) -> what it holds."""
    listing = ruleset(ns) if listing is None else listing
    out: dict[tuple[str, str], Table] = {}
    base: dict[tuple[str, str, str], bool] = {}
    for item in listing.get("nftables", []):
        kind = next(iter(item))
        obj = item[kind]
        if kind == "table":
            out[(obj["family"], obj["name"])] = Table(obj["name"])
        elif kind == "chain" and "hook" in obj:
            base[(obj["family"], obj["table"], obj["name"])] = False
        elif kind in ("set", "map"):
            out[(obj["family"], obj["table"])].elements[obj["name"]] = len(obj.get("elem", []))
        elif kind == "rule":
            t = out[(obj["family"], obj["table"])]
            if obj.get("chain") == "nsg_stamp":
                t.stamp = (obj.get("comment") or "").removeprefix("nsg-agent ruleset ")
                continue
            t.rules += 1
            if (obj["family"], obj["table"], obj["chain"]) in base:
                t.live = True
    return out


def enforced(ns: str, ts: dict[tuple[str, str], Table] | None = None) -> tuple[set[str | None], list[str]]:
    """The ruleset digests the namespace's live agent tables carry (one table, or during a
    replace both nsg_agent and nsg_agent_hold: then a packet must pass both), and what is
    wrong (no live table at all). ``ts``: tables() already read."""
    ts = tables(ns) if ts is None else ts
    live = [t for k, t in ts.items() if k[0] == "inet" and k[1] in ("nsg_agent", "nsg_agent_hold") and t.live]
    return {t.stamp for t in live}, ([] if live else ["no live agent table: nothing enforced"])


@dataclass
class Compiled:
    """What a desired-state file compiles to (the same digest the agent stamps)."""

    digest: str
    rules: int
    elements: dict[str, int]


def compiled(path: Path, mode: str = "classify") -> Compiled:
    from nsg_agent.daemon.status import set_sizes
    from nsg_agent.daemon.targets import compile_host, host_interfaces
    from nsg_agent.desired import loader
    from nsg_agent.kernel.backend import batch_payload
    from nsg_agent.semantics import resolver as semantics

    loaded = loader.load(path)
    policy = semantics.resolve(loaded.state, loaded.tags)
    rs = compile_host(policy, host_interfaces(policy), mode)
    digest = hashlib.sha256(batch_payload(list(rs.commands))).hexdigest()
    return Compiled(digest, rs.summary.rules, set_sizes(rs.commands))


def complete(ns: str, expected: dict[str, Compiled]) -> tuple[set[str], list[str]]:
    """The names in ``expected`` the kernel's live tables enforce, each checked whole (its
    rule and element counts equal that compile: never partial), and any problems."""
    ts = tables(ns)
    _, problems = enforced(ns, ts)
    names: set[str] = set()
    for k, t in ts.items():
        if k[0] != "inet" or k[1] not in ("nsg_agent", "nsg_agent_hold") or not t.live:
            continue
        name = next((n for n, c in expected.items() if c.digest == t.stamp), None)
        if name is None:
            problems.append(f"{t.name}: stamp {t.stamp!r} is none of {sorted(expected)}")
            continue
        names.add(name)
        c = expected[name]
        if t.rules != c.rules or t.elements != c.elements:
            problems.append(f"{t.name} partial: {t.rules} rules / {sum(t.elements.values())} elements, "
                            f"{c.rules} / {sum(c.elements.values())} compiled")
    return names, problems


def read_record(state_dir: Path, ns: str) -> tuple[dict | None, dict | None]:
    """(status.json, intent.json) as the agent left them (None when absent)."""
    def load(p: Path) -> dict | None:
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            return None
    return load(state_dir / ns / "status.json"), load(state_dir / ns / "intent.json")


def record_problems(state_dir: Path, ns: str, live: set[str | None]) -> tuple[bool, list[str]]:
    """Is the record true (its commit is what the kernel enforces), or marked unverified with
    the kernel holding the commit, the pending ruleset or both? (unverified?, problems).
    ``live``: the digests of the live agent tables."""
    status, intent = read_record(state_dir, ns)
    commit = ((status or {}).get("commit") or {}).get("ruleset_sha256")
    if intent is None:
        if live != {commit}:
            return False, [f"the record says {str(commit)[:12]}, the kernel enforces "
                           f"{sorted(str(d)[:12] for d in live)}, and nothing marks it unverified"]
        return False, []
    if not live <= {commit, intent.get("ruleset_sha256")}:
        return True, [f"unverified record, but the kernel ({sorted(str(d)[:12] for d in live)}) holds "
                      "other than the commit or the pending ruleset"]
    return True, []


def poll(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def big_policy(pair: HostPair, rules: int, *, extra: str = "") -> str:
    """host_policy plus ``rules`` generated inbound Deny rules with 20 prefixes each (all
    outside the test's addresses), so a full replace carries a few thousand map elements:
    the size at which the replace window used to drop allowed SYNs."""
    lines = []
    for i in range(rules):
        prefixes = ", ".join(f"11.{i % 250}.{j}.0/24" for j in range(20))
        lines.append(f"      - {{name: gen-{i}, priority: {300 + i}, direction: Inbound, access: Deny, protocol: Tcp,\n"
                     f"          sourceAddressPrefixes: [{prefixes}], sourcePortRange: \"*\",\n"
                     f"          destinationAddressPrefix: \"*\", destinationPortRange: \"{10000 + i}\"}}\n")
    return host_policy(pair, extra="".join(lines) + extra)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def content(ns: str, table: str, family: str = "inet", listing: dict | None = None) -> str:
    """A table as text without handles and counter values: chains, rules in order, sets and
    maps with their elements. Equal texts: equal tables, down to elements."""
    listing = ruleset(ns) if listing is None else listing
    items = []
    for item in listing.get("nftables", []):
        kind = next(iter(item))
        obj = item[kind]
        if kind == "metainfo" or obj.get("family") != family or (obj.get("table") or obj.get("name")) != table:
            continue
        if kind == "table" and obj.get("name") != table:
            continue
        obj = {k: v for k, v in obj.items() if k != "handle"}
        if kind == "rule":
            obj["expr"] = [{"counter": None} if isinstance(e, dict) and "counter" in e else e for e in obj["expr"]]
        if "elem" in obj:
            obj["elem"] = sorted(json.dumps(e, sort_keys=True) for e in obj["elem"])
        items.append(json.dumps({kind: obj}, sort_keys=True))
    return "\n".join(items)


def bench_state(pair: HostPair, rules: int, seed: int = 1) -> tuple[dict, Any]:
    """A generated policy (bench.generate: interval maps and sets of a few thousand elements
    at 200 rules) for the pair's server NIC, and its probe flows. Adds the generator's
    addresses to the pair's veth (10.70.0.10/16 on the server, 10.70.200.1/16, an Internet
    client, on the peer): on-link only, nothing routed."""
    from bench.generate import CLIENT_ADDRESS, SERVER_ADDRESS, Scale, generate

    g = generate(Scale(rules=rules, prefixes=50, nics=2, asgs=2, seed=seed))
    for ns, ifname, addr in ((pair.srv, pair.srv_if, SERVER_ADDRESS), (pair.cli, pair.cli_if, CLIENT_ADDRESS)):
        r = run("ip", "-n", ns, "addr", "add", f"{addr}/16", "dev", ifname, check=False)
        assert r.returncode == 0 or "already assigned" in r.stderr or "exists" in r.stderr, r.stderr
    return g.state_with_interface(pair.srv_if), g


def nft_script(ns: str, script: str) -> None:
    """Someone else's nft commands in the namespace, one transaction (``nft -f -``)."""
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                       capture_output=True, timeout=30)
    assert r.returncode == 0, f"{script}\n{r.stderr}"
