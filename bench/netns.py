"""Throwaway network namespaces for the benchmarks, always removed.

Every namespace and interface is named ``nsgb-...``. The namespaces and veths are made by
nsg_agent.testing.Namespaces (a registry: each end of a veth is created directly inside its
namespace, so nothing is ever added to the root namespace). The ``Lab`` context manager
removes what it created on exit, on exceptions, on SIGINT/SIGTERM and at interpreter exit:
processes it started are stopped by pid first, then the registry kills whatever still runs in
its namespaces and deletes them. ``sweep()`` removes ``nsgb-`` namespaces left over by a
crashed run (our prefix only).

This module, like the registry, uses the ``ip`` command rather than netlink: it is a harness at
the edge, and the commands printed on failure are easy to replay by hand.
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

from nsg_agent.host import netns as host_netns
from nsg_agent.testing import Namespaces

PREFIX = "nsgb-"
_REGISTRY_PREFIX = PREFIX.rstrip("-")  # Namespaces takes the prefix without its dash
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
    return host_netns.list_netns()


def _kill_ns_pids(ns: str) -> None:
    for pid in host_netns.pids_in(ns, descendants=True):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def delete_ns(ns: str) -> None:
    """Delete one benchmark namespace that no ``Lab`` of this process made (a leftover); a
    Lab removes its own on close."""
    if not ns.startswith(PREFIX):
        raise HarnessError(f"refusing to delete {ns!r}: not a benchmark namespace")
    _kill_ns_pids(ns)
    run("ip", "netns", "delete", ns, check=False)


def sweep() -> list[str]:
    """Remove benchmark namespaces left behind by an earlier, crashed run."""
    return Namespaces.sweep(_REGISTRY_PREFIX)


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

    processes: list[subprocess.Popen] = field(default_factory=list)
    spaces: Namespaces = field(default_factory=lambda: Namespaces(prefix=_REGISTRY_PREFIX))
    _closed: bool = False

    @property
    def namespaces(self) -> list[str]:
        """The namespaces this lab made and has not removed yet, oldest first."""
        return list(self.spaces.names)

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
        try:
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
        finally:
            self.spaces.teardown()  # whatever still runs inside is killed, then the namespaces go

    # --- building ---------------------------------------------------------------------
    def netns(self, name: str, sysctls: dict[str, str] | None = None) -> str:
        """A fresh ``nsgb-<name>`` namespace (``lo`` up, ``sysctls`` set); one of the same name
        is replaced (made earlier by this lab, or left by a crashed run)."""
        ns = PREFIX + name
        if len(ns) > 15:
            raise HarnessError(f"namespace name {ns!r} longer than 15 characters")
        if ns in self.spaces:
            self.spaces.remove(ns)
        elif host_netns.exists(ns):
            delete_ns(ns)
        return self.spaces.add(ns, sysctls=sysctls)

    def pair(self, index: int, client_addr: str, server_addr: str, prefixlen: int) -> Pair:
        # Many short connections from one client: use every ephemeral port and reuse
        # TIME_WAIT ports (the server closes first, so TIME_WAIT mostly sits there).
        somaxconn = {"net.core.somaxconn": "4096"}
        c = self.netns(f"c{index}", sysctls={"net.ipv4.ip_local_port_range": "1024 65000",
                                             "net.ipv4.tcp_tw_reuse": "1", **somaxconn})
        s = self.netns(f"s{index}", sysctls=somaxconn)
        cif, sif = f"{PREFIX}c{index}", f"{PREFIX}s{index}"
        self.spaces.veth(c, cif, s, sif)
        for ns, ifname, addr in ((c, cif, client_addr), (s, sif, server_addr)):
            self.spaces.addr(ns, ifname, f"{addr}/{prefixlen}")
            self.spaces.up(ns, ifname)
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
