"""Where the agent's memory goes at a given policy: run in a fresh process by bench.control.

    python -m bench.memprobe STATE.json NETNS MODE [--tracemalloc]

Runs the daemon's apply path once (load, resolve, compile, serialize, replace into the
``nsgb-`` namespace NETNS, then the same replace again over the existing table as on every
change; garbage collector paused as in nsg_agent/daemon/reconciler.py) and prints one JSON
object: VmRSS and VmHWM (KiB, /proc/self/status) after each step and after the final
collection, with everything the daemon keeps (file, policy, commands, payload) still alive.

With --tracemalloc the kernel step is skipped and Python's own allocations are traced
instead: the traced size after each step and the allocation sites holding the most memory
once compile and serialize are done (tracemalloc slows Python several times over; it is a
separate run so the RSS figures above stay undisturbed).
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def main(argv: list[str]) -> int:
    path, ns, mode = Path(argv[0]), argv[1], argv[2]
    trace = "--tracemalloc" in argv[3:]
    if trace:
        import tracemalloc

        tracemalloc.start(1)
    from nsg_agent.compiler import HostPlacement, compile_ruleset
    from nsg_agent.daemon.targets import host_interfaces
    from nsg_agent.desired import loader
    from nsg_agent.kernel.backend import NftBackend, batch_payload
    from nsg_agent.semantics import resolver as semantics

    out: dict = {"steps": [], "trace": trace}

    def mark(step: str, t0: float) -> None:
        row = {"step": step, "seconds": round(time.perf_counter() - t0, 3),
               "rss_kb": status_kb("VmRSS"), "hwm_kb": status_kb("VmHWM")}
        if trace:
            cur, peak = tracemalloc.get_traced_memory()
            row.update(traced_kb=cur // 1024, traced_peak_kb=peak // 1024)
        out["steps"].append(row)

    mark("imports", time.perf_counter())
    gc.disable()
    t0 = time.perf_counter()
    loaded = loader.load(path)
    mark("load", t0)
    t0 = time.perf_counter()
    policy = semantics.resolve(loaded.state, loaded.tags)
    mark("resolve", t0)
    t0 = time.perf_counter()
    rs = compile_ruleset(policy, HostPlacement(interfaces=host_interfaces(policy)), mode=mode)
    mark("compile", t0)
    t0 = time.perf_counter()
    commands = list(rs.commands)
    payload = batch_payload(commands)
    mark("serialize", t0)
    if trace:
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")])
        top = []
        for stat in snap.statistics("lineno")[:12]:
            frame = stat.traceback[0]
            where = frame.filename.replace(ROOT + "/", "")
            if "/lib/python3" in where:
                where = "stdlib/" + where.split("/lib/python3", 1)[1].split("/", 1)[1]
            top.append({"where": f"{where}:{frame.lineno}", "kb": stat.size // 1024, "count": stat.count})
        out["top"] = top
        out["payload_kb"] = len(payload) // 1024
    else:
        backend = NftBackend(netns=ns)
        try:
            t0 = time.perf_counter()
            backend.replace(commands, payload=payload)
            mark("replace", t0)
            # What the daemon does on every change: the same batch over the existing table.
            t0 = time.perf_counter()
            backend.replace(commands, payload=payload)
            mark("replace again", t0)
        finally:
            backend.close()
        out["payload_kb"] = len(payload) // 1024
    gc.enable()
    t0 = time.perf_counter()
    gc.collect()
    mark("collect", t0)
    # keep everything the daemon keeps alive until the last figure is taken
    out["kept"] = [type(x).__name__ for x in (loaded, policy, rs, payload)]
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
