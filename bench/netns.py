"""Throwaway network namespaces for the benchmarks, always removed.

Every namespace and interface is named ``nsgb-...``. Interfaces are created directly inside
their namespaces (``ip link add ... netns``), so nothing is ever added to the root namespace.
The ``Lab`` context manager removes what it created on exit, on exceptions, on SIGINT/SIGTERM
and at interpreter exit; processes it started inside a namespace are stopped by pid first.
``sweep()`` removes ``nsgb-`` namespaces left over by a crashed run (our prefix only).

This module uses the ``ip`` command rather than netlink: it is a harness at the edge, and the
commands printed on failure are easy to replay by hand.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "nsgb-"
ROOT = Path(__file__).resolve().parent.parent


class HarnessError(RuntimeError):
    pass


def run(*args: str, check: bool = True, timeout: float = 60, capture: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=capture, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise HarnessError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def in_ns(ns: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", ns, *args, **kw)


def namespaces() -> list[str]:
    out = run("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_ns_pids(ns: str) -> None:
    pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def delete_ns(ns: str) -> None:
    if not ns.startswith(PREFIX):
        raise HarnessError(f"refusing to delete {ns!r}: not a benchmark namespace")
    _kill_ns_pids(ns)
    run("ip", "netns", "delete", ns, check=False)


def sweep() -> list[str]:
    """Remove benchmark namespaces left behind by an earlier, crashed run."""
    stale = [ns for ns in namespaces() if ns.startswith(PREFIX)]
    for ns in stale:
        delete_ns(ns)
    return stale


@dataclass
class Pair:
    """A client and a server namespace joined by one veth; the server is the receiver."""

    index: int
    client_ns: str
    server_ns: str
    client_if: str
    server_if: str
    client_addr: str
    server_addr: str


@dataclass
class Lab:
    """Owns namespaces and background processes; cleans up whatever happens."""

    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    _closed: bool = False

    def __enter__(self) -> "Lab":
        atexit.register(self.close)
        self._old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._old:
            signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        for s, h in getattr(self, "_old", {}).items():
            signal.signal(s, h)

    def _on_signal(self, signum, frame) -> None:
        self.close()
        raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for p in self.processes:
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
        for p in self.processes:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for ns in reversed(self.namespaces):
            delete_ns(ns)
        self.namespaces.clear()

    # --- building ---------------------------------------------------------------------
    def netns(self, name: str) -> str:
        ns = PREFIX + name
        if len(ns) > 15:
            raise HarnessError(f"namespace name {ns!r} longer than 15 characters")
        if ns in namespaces():
            delete_ns(ns)
        run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        in_ns(ns, "ip", "link", "set", "lo", "up")
        return ns

    def pair(self, index: int, client_addr: str, server_addr: str, prefixlen: int) -> Pair:
        c, s = self.netns(f"c{index}"), self.netns(f"s{index}")
        cif, sif = f"{PREFIX}c{index}", f"{PREFIX}s{index}"
        run("ip", "link", "add", cif, "netns", c, "type", "veth", "peer", "name", sif, "netns", s)
        for ns, ifname, addr in ((c, cif, client_addr), (s, sif, server_addr)):
            in_ns(ns, "ip", "addr", "add", f"{addr}/{prefixlen}", "dev", ifname)
            in_ns(ns, "ip", "link", "set", ifname, "up")
        # Many short connections from one client: use every ephemeral port and reuse
        # TIME_WAIT ports (the server closes first, so TIME_WAIT mostly sits there).
        in_ns(c, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000")
        in_ns(c, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
        for ns in (c, s):
            in_ns(ns, "sysctl", "-qw", "net.core.somaxconn=4096")
        _wait_link(s, sif)
        return Pair(index, c, s, cif, sif, client_addr, server_addr)

    def spawn(self, ns: str | None, *args: str, **kw) -> subprocess.Popen:
        """Start a background process (in ``ns`` if given); stopped on close."""
        cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
        kw.setdefault("cwd", ROOT)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(cmd, **kw)
        self.processes.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def _wait_link(ns: str, ifname: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = in_ns(ns, "ip", "-o", "link", "show", ifname).stdout
        if "LOWER_UP" in out:
            return
        time.sleep(0.05)
    raise HarnessError(f"{ifname} in {ns} did not come up")


def nft_load(ns: str, json_text: str, tmpdir: Path) -> float:
    """Load a JSON ruleset with the nft CLI inside ``ns``; returns seconds taken."""
    path = tmpdir / f"{ns}-ruleset.json"
    path.write_text(json_text)
    t0 = time.perf_counter()
    in_ns(ns, "nft", "-j", "-f", str(path), timeout=600)
    return time.perf_counter() - t0


def python() -> str:
    return sys.executable
