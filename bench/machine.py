"""What the benchmark ran on: CPU, cores, kernel, nft, Python, iperf3, git revision."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from bench.netns import ROOT


def _out(*cmd: str) -> str:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def record() -> dict[str, str]:
    mem_kb = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = line.split()[1]
    except OSError:
        pass
    dirty = _out("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no")
    return {
        "CPU": cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": f"{int(mem_kb) // 1024} MiB" if mem_kb else "unknown",
        "kernel": platform.release(),
        "nft": _out("nft", "--version") or "unknown",
        "python": platform.python_version(),
        "iperf3": (_out("iperf3", "--version").splitlines() or ["unknown"])[0],
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "git": (_out("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD") or "unknown")
               + (" (+ uncommitted changes)" if dirty else ""),
    }


def _cpu_times() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def wait_quiet(min_idle: float = 0.85, limit: float = 30.0) -> tuple[float, float]:
    """Wait (at most ``limit`` s) until the CPUs were at least ``min_idle`` idle over one
    second: the kernel tears namespaces (and their big nftables tables) down asynchronously
    after they are deleted, and that work must not land in the next phase's timings.
    Returns (seconds waited, idle fraction of the last second)."""
    import time

    start = time.monotonic()
    idle_frac = 0.0
    while True:
        i0, t0 = _cpu_times()
        time.sleep(1.0)
        i1, t1 = _cpu_times()
        idle_frac = (i1 - i0) / max(t1 - t0, 1)
        waited = time.monotonic() - start
        if idle_frac >= min_idle or waited >= limit:
            return waited, idle_frac
