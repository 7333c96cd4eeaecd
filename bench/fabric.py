"""One dataplane figure through the lab fabric (``nsg-agent lab``): new connections per second
from an external host to a NIC, with the maximum NSG on the NIC vs. the same lab without it.

Two labs are built side by side from the same file (``nsgbench-nsg`` with the NSG on the
server NIC, ``nsgbench-open`` with the NSG detached), so both rulesets are loaded once and the
rounds interleave. The lab names its namespaces ``nsgl-<lab>-...``; both labs are always taken
down again with ``nsg-agent lab down``.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path
from typing import Callable

from bench import netns
from bench.generate import PORT_LAST, SERVER_NIC, Generated

LABS = {"nsg": "nsgbench-nsg", "open": "nsgbench-open"}


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([netns.python(), "-m", "nsg_agent.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=netns.ROOT)


def lab_state(gen: Generated, with_nsg: bool) -> dict:
    """The policy for a lab: only the server NIC (a namespace per NIC would be hundreds), the
    client as an external host; ASG rules keep their groups (now without members)."""
    st = copy.deepcopy(gen.state)
    st["networkInterfaces"] = [n for n in st["networkInterfaces"] if n["name"] == SERVER_NIC]
    if not with_nsg:
        st["networkInterfaces"][0].pop("networkSecurityGroup", None)
    st["lab"] = {"externalHosts": [{"name": "client", "address": gen.client_address}]}
    return st


def down_all() -> None:
    for name in LABS.values():
        _cli("lab", "down", "--name", name, timeout=120)


def run(lab: netns.Lab, gen: Generated, tmpdir: Path, rounds: int, seconds: float,
        log: Callable[[str], None]) -> dict:
    out: dict = {"rates": {k: [] for k in LABS}, "p50": {k: [] for k in LABS}, "p99": {k: [] for k in LABS},
                 "up_seconds": {}, "rules": {}, "errors": []}
    down_all()
    try:
        for key, name in LABS.items():
            path = tmpdir / f"{name}.json"
            if gen.service_tags is not None:
                (tmpdir / f"{name}-servicetags.json").write_text(json.dumps(gen.service_tags))
            st = lab_state(gen, key == "nsg")
            if gen.service_tags is not None:
                st["serviceTags"] = {"files": [f"{name}-servicetags.json"]}
            path.write_text(json.dumps(st))
            t0 = time.monotonic()
            proc = _cli("lab", "up", str(path), "--name", name, "--json")
            out["up_seconds"][key] = time.monotonic() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"lab up {name} failed: {proc.stderr.strip()[-500:]}")
            out["rules"][key] = json.loads(proc.stdout).get("rules", {})
            log(f"  lab {name} up in {out['up_seconds'][key]:.1f} s: {out['rules'][key]}")
        ns = {k: (f"nsgl-{n}-n0", f"nsgl-{n}-h0") for k, n in LABS.items()}
        for k, (server_ns, client_ns) in ns.items():
            if server_ns not in netns.namespaces() or client_ns not in netns.namespaces():
                raise RuntimeError(f"lab {LABS[k]}: namespaces {server_ns}/{client_ns} not found")
            lab.spawn(server_ns, netns.python(), "-m", "bench.loadgen", "server", "--port", str(PORT_LAST),
                      "--workers", "2")
        time.sleep(1.0)
        keys = list(LABS)
        for r in range(rounds + 1):  # round 0 is a warm-up
            order = keys if r % 2 == 0 else keys[::-1]
            for k in order:
                server_ns, client_ns = ns[k]
                proc = netns.in_ns(client_ns, netns.python(), "-m", "bench.loadgen", "client", "--host",
                                   gen.server_address, "--port", str(PORT_LAST), "--duration",
                                   str(seconds if r else min(1.0, seconds)), "--workers", "2",
                                   check=False, timeout=seconds + 30)
                netns.in_ns(f"nsgl-{LABS[k]}-fab", "conntrack", "-F", check=False)
                try:
                    res = json.loads(proc.stdout)
                except json.JSONDecodeError:
                    out["errors"].append(f"round {r} {k}: {proc.stderr.strip()[-200:]}")
                    continue
                if r:
                    out["rates"][k].append(res["rate"])
                    out["p50"][k].append(res["connect_p50_us"])
                    out["p99"][k].append(res["connect_p99_us"])
                    if res["errors"]:
                        out["errors"].append(f"round {r} {k}: {res['errors']} failed connections")
    finally:
        for p in list(lab.processes):
            lab.stop(p)
        down_all()
    return out
