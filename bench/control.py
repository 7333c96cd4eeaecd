"""Control-plane measurements: compile, apply, changes, file save -> enforced, daemon RSS.

Everything is applied inside throwaway ``nsgb-`` namespaces through the agent's own backend
(nsg_agent.kernel.backend.NftBackend), the way the daemon's apply path does it (nsg_agent/daemon/reconciler.py): load,
resolve, compile, serialize the batch once (nsg_agent.kernel.backend.batch_payload), then one transaction
replacing the table (no separate dry run, no read-back), with the cyclic garbage collector
paused from load to replace. A change (ASG membership, service-tag file) is that same full
rebuild and swap, in one long-lived process like the daemon (so the loader's caches, e.g.
service-tag files by (path, sha256), work as they do there); each step is timed on its own.
"""

from __future__ import annotations

import copy
import cProfile
import io
import json
import os
import pstats
import select
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench import netns
from bench.generate import LINK_PREFIXLEN, PORT_FLIP, SERVER_NIC, Generated
from nsg_agent.desired import loader
from nsg_agent.semantics import resolver as semantics

STEPS = ("load", "resolve", "compile", "serialize", "replace")
APPLY_STEPS = ("compile", "serialize", "replace")  # "compile + apply"
# An ASG or tag change, the daemon's way: a delta against the table the kernel holds.
CHANGE_STEPS = ("load", "resolve", "compile", "diff", "apply", "serialize")
CHANGE_ENFORCED_STEPS = ("load", "resolve", "compile", "diff", "apply")  # until the kernel has it
CHANGE_APPLY_STEPS = ("compile", "diff", "apply")


@dataclass
class Timings:
    """step -> seconds per repetition."""

    steps: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, step: str, seconds: float) -> None:
        self.steps.setdefault(step, []).append(seconds)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _daemon_memo() -> tuple[Any, Any]:
    """What the daemon keeps from one reload to the next (its source's load memo and its
    pipeline memo): the bench's reloads carry the same, as the daemon's do."""
    from nsg_agent.daemon.pipeline import Memo
    from nsg_agent.desired.memo import LoadMemo

    return LoadMemo(), Memo()


DAEMON_MEMO = _daemon_memo()


def pipeline(path: Path, mode: str, interfaces: dict[str, str], backend: Any, t: Timings,
             previous: list[dict] | None = None) -> Any:
    """load -> resolve -> compile -> serialize -> replace, each step timed into ``t``; the
    garbage collector paused meanwhile and one collection afterwards, as in the daemon.
    With ``previous`` (the commands the kernel holds) it applies like the daemon's edits:
    diff (nsg_agent.kernel.delta) -> apply (one transaction of the delta; the whole table
    when there is no delta), and records in ``t.info["how"]`` which it was."""
    import gc

    from nsg_agent.compiler import HostPlacement, compile_ruleset
    from nsg_agent.kernel.backend import batch_payload
    from nsg_agent.kernel.delta import delta

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        loaded, s = _timed(lambda: loader.load(path, memo=DAEMON_MEMO[0]))
        t.add("load", s)
        policy, s = _timed(lambda: semantics.resolve(loaded.state, loaded.tags, memo=DAEMON_MEMO[1].terms))
        t.add("resolve", s)
        rs, s = _timed(lambda: compile_ruleset(policy, HostPlacement(interfaces=interfaces), mode=mode,
                                               elements=DAEMON_MEMO[1].elements))
        t.add("compile", s)
        if backend is not None and previous is None:
            commands = list(rs.commands)
            payload, s = _timed(lambda: batch_payload(commands))  # the daemon hashes it
            t.add("serialize", s)
            _, s = _timed(lambda: backend.replace(commands, payload=payload))
            t.add("replace", s)
        elif backend is not None:  # the daemon's edit path: the batch serialized after
            commands = list(rs.commands)
            diff, s = _timed(lambda: delta(previous, commands))
            t.add("diff", s)
            if diff is not None:
                _, s = _timed(lambda: backend.transact(diff))
            else:
                _, s = _timed(lambda: backend.replace(commands, payload=batch_payload(commands)))
            t.add("apply", s)
            _, s = _timed(lambda: batch_payload(commands))
            t.add("serialize", s)
            t.info.setdefault("how", []).append(
                f"delta of {len(diff)} commands" if diff is not None else "replace")
    finally:
        if was_enabled:
            gc.enable()
            gc.collect()
    return rs


def compile_apply(lab: netns.Lab, gen: Generated, tmpdir: Path, mode: str, reps: int,
                  log: Callable[[str], None]) -> Timings:
    """Full table: the first apply into an empty namespace, then ``reps`` replacements."""
    from nsg_agent.kernel.backend import NftBackend

    ifname = "nsgb-s0"
    path = gen.write(tmpdir / f"cp-{mode}", name="max", interface=ifname)
    ns = lab.netns(f"cp{tmpdir.name[:3]}{mode[0]}")
    backend = NftBackend(netns=ns)
    try:
        first = Timings()
        rs = pipeline(path, mode, {SERVER_NIC: ifname}, backend, first)
        t = Timings(info={"first_apply": {k: v[0] for k, v in first.steps.items()},
                          "summary": _summary_info(rs)})
        for _ in range(reps):
            pipeline(path, mode, {SERVER_NIC: ifname}, backend, t)
        log(f"  {mode}: compile {min(t.steps['compile']):.2f} s, serialize+replace "
            f"{min(a + b for a, b in zip(t.steps['serialize'], t.steps['replace'])):.2f} s")
        return t
    finally:
        backend.close()


def _summary_info(rs: Any) -> dict[str, Any]:
    s = rs.summary  # the compiler's Summary; its levels in their status-file shape
    levels = {name: {k: v for k, v in lv.to_json().items()
                     if k in ("direction", "mode", "fallback", "elements", "classes", "rules")}
              for name, lv in s.levels.items()}
    return {"rules": s.rules, "set_elements": s.set_elements, "chains": s.chains,
            "modes_used": list(s.modes_used), "levels": levels, "json_bytes": len(rs.to_json())}


def change(lab: netns.Lab, gen: Generated, tmpdir: Path, kind: str, mode: str, reps: int,
           log: Callable[[str], None]) -> Timings:
    """An ASG membership change or a service-tag file change, applied the daemon's way: full
    load, resolve and compile, then a delta against the table the kernel holds.

    Each repetition toggles the change (on, off, on, ...) so every apply changes the table."""
    from nsg_agent.kernel.backend import NftBackend

    ifname = "nsgb-s0"
    work = tmpdir / f"change-{kind}"
    path = gen.write(work, name="state", interface=ifname)
    state = json.loads(path.read_text())
    ns = lab.netns(f"ch{kind[0]}")
    backend = NftBackend(netns=ns)
    t = Timings()
    try:
        base_rs = pipeline(path, mode, {SERVER_NIC: ifname}, backend, Timings())
        held = base_rs.commands
        digests = {base_rs.to_json().__hash__()}
        if kind == "asg":
            nic, group = _asg_toggle(state)
            t.info["change"] = f"NIC {nic['name']} joins/leaves ASG {group} (referenced by rules)"
        else:
            tag_path = work / state["serviceTags"]["files"][0]
            tags = json.loads(tag_path.read_text())
            target = _referenced_tag(gen, tags)
            # A prefix the earlier rules do not already decide, so the table really changes
            # (checked by compiling, untimed).
            base_json = base_rs.to_json()
            original = list(target["properties"]["addressPrefixes"])
            extra = None
            for candidate in TAG_CANDIDATES:
                target["properties"]["addressPrefixes"] = original + [candidate]
                _atomic_write(tag_path, json.dumps(tags, indent=1))
                if pipeline(path, mode, {SERVER_NIC: ifname}, None, Timings()).to_json() != base_json:
                    extra = candidate
                    break
            target["properties"]["addressPrefixes"] = original
            _atomic_write(tag_path, json.dumps(tags, indent=1))
            if extra is None:
                raise ValueError(f"no prefix added to {target['name']} changes the table")
            t.info["change"] = f"service tag {target['name']} gains/loses one prefix ({extra})"
        for r in range(reps):
            on = r % 2 == 0
            if kind == "asg":
                groups = [g for g in nic["applicationSecurityGroups"] if g != group]
                nic["applicationSecurityGroups"] = sorted(groups + [group]) if on else groups
                _atomic_write(path, json.dumps(state, indent=1))
            else:
                prefixes = [p for p in target["properties"]["addressPrefixes"] if p != extra]
                target["properties"]["addressPrefixes"] = prefixes + [extra] if on else prefixes
                _atomic_write(tag_path, json.dumps(tags, indent=1))
            rs = pipeline(path, mode, {SERVER_NIC: ifname}, backend, t, previous=held)
            held = rs.commands
            digests.add(rs.to_json().__hash__())
        t.info["distinct_tables"] = len(digests)
        total = [sum(t.steps[s][i] for s in CHANGE_APPLY_STEPS) for i in range(reps)]
        log(f"  {kind} change: compile+apply median {sorted(total)[len(total) // 2] * 1000:.0f} ms")
        return t
    finally:
        backend.close()


def element_scaling(lab: netns.Lab, gen: Generated, tmpdir: Path, mode: str, fractions: tuple[float, ...],
                    reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    """nft's cost against element count: the SAME compiled table with its named sets' and
    maps' elements cut to a fraction (chains and rules unchanged), timed two ways through
    nsg_agent.kernel.backend: loaded into a namespace without our table (the table deleted first, untimed),
    and loaded again over the identical table (what the daemon's every change does).
    Returns {"rows": [(fraction, elements, rules, [load s], [replace s])], "load": (µs per
    element, fixed s), "replace": (µs per element, fixed s), "list_s": seconds to list the full
    table (what nft reads back from the kernel)}."""
    from nsg_agent.compiler import HostPlacement, compile_ruleset
    from nsg_agent.kernel.backend import NftBackend, batch_payload

    path = gen.write(tmpdir / f"elements-{mode}", name="state", interface="nsgb-s0")
    loaded = loader.load(path)
    rs = compile_ruleset(semantics.resolve(loaded.state, loaded.tags),
                         HostPlacement(interfaces={SERVER_NIC: "nsgb-s0"}), mode=mode)
    ns = lab.netns("elem")
    backend = NftBackend(netns=ns)
    rows = []
    list_s = float("nan")
    nft_cli: dict[str, dict[str, float]] = {}
    try:
        for f in fractions:
            commands, count = _cut_elements(rs.commands, f)
            payload = batch_payload(commands)
            loads, replaces = [], []
            for _ in range(reps):
                backend.delete_table()
                _, s = _timed(lambda: backend.replace(commands, payload=payload))
                loads.append(s)
                _, s = _timed(lambda: backend.replace(commands, payload=payload))
                replaces.append(s)
            rows.append((f, count, sum(1 for c in commands if "rule" in c.get("add", {})), loads, replaces))
            log(f"  elements x{f:g}: {count:,} elements, load {min(loads):.2f} s, replace {min(replaces):.2f} s")
        _, list_s = _timed(lambda: backend.list_table())
        batch = tmpdir / f"elements-{mode}" / "batch.json"
        batch.write_bytes(batch_payload(rs.commands))
        backend.delete_table()
        nft_cli = {"load": nft_cli_rusage(ns, batch), "replace": nft_cli_rusage(ns, batch)}
        log("  nft -j -f alone: load {wall:.2f} s (user {user:.2f}, kernel {sys:.2f}), peak RSS "
            "{maxrss_mib:.0f} MiB".format(**nft_cli["load"]))
    finally:
        backend.close()
    return {"nft_cli": nft_cli, "rows": rows, "load": _fit([r[1] for r in rows], [_median(r[3]) for r in rows]),
            "replace": _fit([r[1] for r in rows], [_median(r[4]) for r in rows]), "list_s": list_s}


def nft_cli_rusage(ns: str, batch: Path) -> dict[str, float]:
    """The nft command alone loading ``batch`` into namespace ``ns``: wall seconds, user and
    kernel CPU seconds and peak RSS (MiB) of the nft process, from wait4's rusage. What any
    tool built on libnftables pays for this table, whatever it does around it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "nft", "-j", "-f", str(batch)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"nft -j -f {batch} failed in {ns}: {err.strip()[:300]}")
    return {"wall": wall, "user": usage.ru_utime, "sys": usage.ru_stime, "maxrss_mib": usage.ru_maxrss / 1024}


def _median(values: list[float]) -> float:
    v = sorted(values)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2


def _fit(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a*x + b: (a in µs per element, b in s)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else float("nan")
    return slope * 1e6, my - slope * mx


def _cut_elements(commands: list[dict], fraction: float) -> tuple[list[dict], int]:
    """A copy of ``commands`` whose named sets and maps keep the first ``fraction`` of their
    elements (intervals stay disjoint; rules still refer to the same sets)."""
    out, count = [], 0
    for c in commands:
        body = c.get("add", {})
        kind = "set" if "set" in body else "map" if "map" in body else None
        if kind and "elem" in body[kind]:
            obj = dict(body[kind])
            elems = obj.pop("elem")
            elems = elems[: int(len(elems) * fraction)]
            if elems:
                obj["elem"] = elems
            count += len(elems)
            c = {"add": {kind: obj}}
        out.append(c)
    return out, count


def memory_profile(gen: Generated, tmpdir: Path, ns: str, mode: str, trace: bool,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """bench.memprobe in a fresh process: RSS after each step of the apply path, or (trace)
    tracemalloc's view of where Python's memory sits."""
    path = gen.write(tmpdir / f"mem-{mode}", name="state", interface="nsgb-s0")
    proc = subprocess.run([netns.python(), "-m", "bench.memprobe", str(path), ns, mode]
                          + (["--tracemalloc"] if trace else []),
                          cwd=netns.ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.memprobe failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    last = out["steps"][-1]
    log(f"  memory ({'tracemalloc' if trace else 'RSS'}): VmHWM {last['hwm_kb'] / 1024:.0f} MiB")
    return out


# Prefixes tried for the service-tag change, in order (documentation and shared ranges).
TAG_CANDIDATES = ("2001:db8:ffff::/48", "198.51.100.128/25", "203.0.113.128/25", "100.64.0.0/16",
                  "100.65.0.0/16", "100.66.0.0/16")


def _asg_toggle(state: dict) -> tuple[dict, str]:
    rules = state["networkSecurityGroups"][0]["securityRules"]
    used = [g for r in rules for g in r.get("sourceApplicationSecurityGroups", [])]
    if not used:
        raise ValueError("the policy has no ASG rules")
    group = used[0]
    for nic in state["networkInterfaces"]:
        if nic["name"] != SERVER_NIC and group not in nic["applicationSecurityGroups"] \
                and len(nic["applicationSecurityGroups"]) < 20:
            return nic, group
    raise ValueError("no NIC to move")


def _referenced_tag(gen: Generated, tags: dict) -> dict:
    used = {r["sourceAddressPrefix"].lower() for r in gen.rules if "sourceAddressPrefix" in r}
    for v in tags["values"]:
        if v["name"].lower() in used:
            return v
    raise ValueError("no service tag is referenced by a rule")


def _atomic_write(path: Path, text: str) -> None:
    """Save the way editors do: write a temporary file, then rename it over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def profile_pipeline(gen: Generated, tmpdir: Path, mode: str, top: int = 12) -> tuple[str, list]:
    """cProfile of load + resolve + compile (no kernel): the functions where time goes."""
    from nsg_agent.compiler import HostPlacement, compile_ruleset

    path = gen.write(tmpdir / "profile", name="max", interface="nsgb-s0")
    prof = cProfile.Profile()
    prof.enable()
    loaded = loader.load(path)
    policy = semantics.resolve(loaded.state, loaded.tags)
    compile_ruleset(policy, HostPlacement(interfaces={SERVER_NIC: "nsgb-s0"}), mode=mode)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    text = out.getvalue()
    out2 = io.StringIO()
    pstats.Stats(prof, stream=out2).sort_stats("tottime").print_stats(top)
    return _trim_profile(text) + "\n" + _trim_profile(out2.getvalue()), hotspots(stats)


def hotspots(stats: pstats.Stats, n: int = 6) -> list[tuple[str, float, float]]:
    """The project's functions (and stdlib ipaddress) with the most self time:
    (where, self seconds, cumulative seconds)."""
    root = str(netns.ROOT) + "/"
    rows = []
    for (file, line, func), (_cc, _nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if file.startswith(root + "nsg_agent/"):
            rows.append((f"{file[len(root):]}:{line} {func}", tt, ct))
        elif file.endswith("/ipaddress.py"):  # the stdlib prefix arithmetic the project calls
            rows.append((f"ipaddress.py:{line} {func}", tt, ct))
    rows.sort(key=lambda r: -r[1])
    return rows[:n]


def _trim_profile(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    head = [ln for ln in lines[:start] if "function calls" in ln or "Ordered by" in ln]
    root = str(netns.ROOT) + "/"
    return "\n".join(ln.replace(root, "") for ln in head + lines[start:])


# --- the daemon: file save -> enforced, and peak RSS ---------------------------------------


class Prober:
    """A persistent TCP prober in the client namespace (bench.probeloop), driven by stdin."""

    def __init__(self, lab: netns.Lab, ns: str, host: str, port: int):
        self.proc = lab.spawn(ns, netns.python(), "-m", "bench.probeloop", host, str(port),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def wait(self, verdict: str, timeout: float) -> float | None:
        """Monotonic time at which ``verdict`` ("Allow"/"Deny") was first seen, or None."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{verdict} {timeout}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout + 5)
        if not ready:
            return None
        line = self.proc.stdout.readline().strip()
        return None if line in ("", "timeout") else float(line)


def _phases(saves: list[tuple[float, float | None]], events: list[tuple[float, str]]) -> dict[str, list[float]]:
    """Per edit: save -> config.changed (file event), -> reconcile.start, -> config.applied,
    -> seen by the probe. Times are when the log line reached us (slightly late)."""
    out: dict[str, list[float]] = {"event": [], "to_reconcile": [], "reconcile": [], "to_probe": []}
    for saved, seen in saves:
        def first(name: str, after: float) -> float | None:
            return next((t for t, n in events if n == name and t >= after), None)
        changed = first("config.changed", saved)
        start = first("reconcile.start", changed) if changed else None
        applied = first("config.applied", start) if start else None
        if None in (changed, start, applied) or seen is None:
            continue
        out["event"].append(changed - saved)
        out["to_reconcile"].append(start - changed)
        out["reconcile"].append(applied - start)
        out["to_probe"].append(seen - applied)
    return out


@dataclass
class DaemonRun:
    phases: dict[str, list[float]] = field(default_factory=dict)
    # the daemon's own reconcile.timing events of the edits (outcome "applied"): phase -> ms
    timing: dict[str, list[float]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds
    misses: int = 0
    vmhwm_kb: int | None = None
    vmrss_kb: int | None = None
    startup_seconds: float | None = None
    note: str = ""


def _flip_rule(access: str, client: str) -> dict:
    return {"name": "bench-flip", "priority": 100, "direction": "Inbound", "access": access,
            "protocol": "Tcp", "sourceAddressPrefix": client, "sourcePortRange": "*",
            "destinationAddressPrefix": "*", "destinationPortRange": str(PORT_FLIP)}


def _with_flip(gen: Generated, interface: str, access: str, tag_files: dict | None) -> dict:
    state = copy.deepcopy(gen.state_with_interface(interface))
    if tag_files:
        state["serviceTags"] = tag_files
    rules = state["networkSecurityGroups"][0]["securityRules"]
    if len(rules) >= 1000:  # stay within Azure's limit: the flip rule replaces a middle rule
        rules = rules[:-2] + rules[-1:]
    state["networkSecurityGroups"][0]["securityRules"] = [_flip_rule(access, gen.client_address)] + rules
    return state


def _daemon_cmd(path: Path, ns: str, state_dir: Path, mode: str) -> list[str]:
    return [netns.python(), "-m", "nsg_agent.cli", "run", "--config", str(path), "--netns", ns,
            "--state-dir", str(state_dir), "--mode", mode, "--log-level", "debug"]


def _wait_event(proc: subprocess.Popen, event: str, timeout: float, seen: list[str]) -> bool:
    """Read the daemon's JSON log lines (stderr) until ``event`` appears."""
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stderr.readline()
        if not line:
            return False
        seen.append(line.rstrip())
        if f'"{event}"' in line:
            return True
    return False


def _proc_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def save_to_enforced(lab: netns.Lab, gen: Generated, tmpdir: Path, edits: int, index: int,
                     mode: str, log: Callable[[str], None], edit_timeout: float = 60.0) -> DaemonRun:
    """Run the daemon on the server namespace, flip port 7100's verdict ``edits`` times by
    saving the file, and time each save until a probe from the client sees the new verdict."""
    pair = lab.pair(index, gen.client_address, gen.server_address, LINK_PREFIXLEN)
    lab.spawn(pair.server_ns, netns.python(), "-m", "bench.loadgen", "server", "--port", str(PORT_FLIP),
              "--workers", "1")
    work = tmpdir / f"daemon-{index}"
    work.mkdir(parents=True, exist_ok=True)
    path = gen.write(work, name="state", interface=pair.server_if)
    tag_files = json.loads(path.read_text()).get("serviceTags")
    state = _with_flip(gen, pair.server_if, "Deny", tag_files)
    _atomic_write(path, json.dumps(state, indent=1))
    run = DaemonRun()
    t0 = time.monotonic()
    proc = lab.spawn(None, *_daemon_cmd(path, pair.server_ns, work / "state-dir", mode),
                     stderr=subprocess.PIPE, text=True)
    logs: list[str] = []
    if not _wait_event(proc, "config.applied", 300, logs):
        run.note = "daemon did not report config.applied: " + " | ".join(logs[-3:])[:500]
        log("  " + run.note)
        return run
    run.startup_seconds = time.monotonic() - t0
    prober = Prober(lab, pair.client_ns, pair.server_addr, PORT_FLIP)
    if prober.wait("Deny", edit_timeout) is None:
        run.note = "the initial Deny of the flip port was never observed"
        return run
    # Drain the daemon's log in the background (its pipe must never fill), keeping each
    # line's arrival time to split every edit's latency into the daemon's phases.
    import threading

    events: list[tuple[float, str]] = []

    timings: list[dict] = []

    def drain() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            for name in ("config.changed", "reconcile.start", "config.applied"):
                if f'"{name}"' in line:
                    events.append((time.monotonic(), name))
            if '"reconcile.timing"' in line:
                try:
                    timings.append(json.loads(line))
                except json.JSONDecodeError:
                    pass

    threading.Thread(target=drain, daemon=True).start()
    saves: list[tuple[float, float | None]] = []
    access = "Deny"
    for i in range(edits):
        access = "Allow" if access == "Deny" else "Deny"
        state = _with_flip(gen, pair.server_if, access, tag_files)
        text = json.dumps(state, indent=1)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        saved = time.monotonic()
        os.replace(tmp, path)
        # Wait as long as it takes (bounded): the next edit must start from the new verdict,
        # or it would be "seen" at once and look instantaneous.
        seen = prober.wait(access, edit_timeout)
        if seen is None:
            run.misses += 1
            run.note = f"edit {i + 1}: the new verdict was not seen within {edit_timeout:.0f} s; stopped"
            break
        run.latencies.append(seen - saved)
        saves.append((saved, seen))
        time.sleep(0.3)
    run.phases = _phases(saves, events)
    for ev in timings:
        if ev.get("outcome") == "applied" and ev.get("reason") != "startup":
            for k, v in ev.items():
                if k.endswith("_ms") and isinstance(v, (int, float)):
                    run.timing.setdefault(k[:-3], []).append(float(v))
    run.vmhwm_kb = _proc_kb(proc.pid, "VmHWM")
    run.vmrss_kb = _proc_kb(proc.pid, "VmRSS")
    lab.stop(proc)
    return run


def daemon_rss(lab: netns.Lab, gen: Generated, tmpdir: Path, mode: str, settle: float,
               log: Callable[[str], None]) -> DaemonRun:
    """Peak RSS (VmHWM) of the daemon enforcing ``gen`` after startup and one resync."""
    ns = lab.netns("rss")
    work = tmpdir / "rss"
    path = gen.write(work, name="state", interface="nsgb-s0")
    run = DaemonRun()
    t0 = time.monotonic()
    proc = lab.spawn(None, *_daemon_cmd(path, ns, work / "state-dir", mode), stderr=subprocess.PIPE, text=True)
    logs: list[str] = []
    ok = _wait_event(proc, "config.applied", 300, logs)
    if not ok:
        run.note = "daemon did not report config.applied: " + " | ".join(logs[-3:])[:500]
        lab.stop(proc)
        return run
    run.startup_seconds = time.monotonic() - t0
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    time.sleep(settle)  # at least one periodic resync (reads the table back)
    run.vmhwm_kb = _proc_kb(proc.pid, "VmHWM")
    run.vmrss_kb = _proc_kb(proc.pid, "VmRSS")
    lab.stop(proc)
    return run
