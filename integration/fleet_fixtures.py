"""The fleet fixture: a real etcd and one agent per simulated host (docs/fleet.md).

Network safety (see ../shared/docs/design.md): etcd listens only on 127.0.0.1 (a free
port, its data in a temporary directory) and is stopped afterwards; every namespace is named
``nsgfe-<tag>-*`` and deleted in teardown whatever happened (nsg_agent.testing.Namespaces,
which kills what still runs inside first). The agents are processes in the root namespace (to
reach etcd on loopback) acting only through ``--netns nsgfe-...``: nothing is added to the
root namespace's firewall, addresses or routes.

Topology: a switch namespace (``nsgfe-<tag>-sw``, one bridge), one namespace per host
(``nsgfe-<tag>-h<N>``, its NIC ``eth0`` at 10.77.1.<10+N>/24 on the bridge), and a client
namespace (``nsgfe-<tag>-c``) holding 10.77.1.99 (inside the VNet) and 203.0.113.10 (an
"Internet" host, reached over the bridge through on-link routes inside the namespaces).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from host_helpers import NSG_AGENT, PYTHON, SERVER, AgentProcess, free_port, stop_process
from nsg_agent.testing import Namespaces

ETCD = "/usr/bin/etcd"
CLIENT_VNET = "10.77.1.99"
CLIENT_INTERNET = "203.0.113.10"


def host_addr(i: int) -> str:
    return f"10.77.1.{10 + i}"


class EtcdServer:
    """One etcd member on 127.0.0.1 (client and peer ports free ports), data in ``data_dir``."""

    def __init__(self, data_dir: Path, log: Path, *, scheme: str = "http", args: tuple[str, ...] = (),
                 ssl_context=None):
        self.data_dir = data_dir
        self.log = log
        self.port = free_port()
        self.peer = free_port()
        self.proc: subprocess.Popen | None = None
        self.scheme = scheme
        self.args = args
        self.ssl_context = ssl_context  # for the readiness check over https

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        peer = f"http://127.0.0.1:{self.peer}"
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [ETCD, "--name", "nsgfe", "--data-dir", str(self.data_dir),
                 "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"nsgfe={peer}", "--listen-metrics-urls", "",
                 "--log-level", "warn", "--logger", "zap", *self.args],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"etcd exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    pass
                req = urllib.request.Request(f"{self.url}/v3/kv/range", data=b'{"key":"AA=="}', method="POST")
                with urllib.request.urlopen(req, timeout=1, context=self.ssl_context) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError:
                return  # it answers (e.g. 401 with auth enabled)
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("etcd did not come up")

    def kill(self) -> None:
        """SIGKILL: an outage, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5)
        self.proc = None


@dataclass
class Fleet:
    tag: str
    etcd: EtcdServer
    hosts: list[str]
    tmp: Path
    ns: dict[str, str] = field(default_factory=dict)  # host -> namespace
    client_ns: str = ""
    switch_ns: str = ""
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    servers: list[subprocess.Popen] = field(default_factory=list)
    prefix: str = "/nsg-agent/"

    @property
    def state_dir(self) -> Path:
        return self.tmp / "run"

    def addr(self, host: str) -> str:
        return host_addr(self.hosts.index(host) + 1)

    def status(self, host: str) -> dict:
        try:
            return json.loads((self.state_dir / self.ns[host] / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def side(self, host: str) -> dict:
        try:
            return json.loads((self.state_dir / self.ns[host] / "source.json").read_text())
        except (OSError, ValueError):
            return {}

    def enforced_revision(self, host: str) -> int | None:
        return (self.status(host).get("commit") or {}).get("revision")

    def start_agent(self, host: str, *extra: str) -> AgentProcess:
        n = len([p for p in self.tmp.glob(f"agent-{host}-*.log")])
        log_path = self.tmp / f"agent-{host}-{n}.log"
        log = open(log_path, "w")
        proc = subprocess.Popen(
            [NSG_AGENT, "run", "--etcd", self.etcd.url, "--prefix", self.prefix, "--host", host,
             "--netns", self.ns[host], "--state-dir", str(self.state_dir),
             "--etcd-cache", str(self.tmp / "cache"), "--resync", "1",
             "--debounce", "0.05", "--report-ttl", "3", "--log-format", "json", "--log-level", "debug", *extra],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        agent = AgentProcess(proc, log_path)
        self.agents[host] = agent
        return agent

    def stop_agents(self) -> None:
        for a in self.agents.values():  # all at once, then wait: 50 agents stop in seconds
            if a.proc.poll() is None:
                a.proc.terminate()
        for a in self.agents.values():
            stop_process(a.proc)

    def publish(self, text: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        path = self.tmp / f"state-{secrets.token_hex(3)}.yaml"
        path.write_text(text)
        out = subprocess.run([NSG_AGENT, "publish", str(path), "--etcd", self.etcd.url, "--prefix", self.prefix,
                              "--json", *extra], capture_output=True, text=True, timeout=30)
        if check:
            assert out.returncode == 0, out.stdout + out.stderr
        return out

    def fleet_status(self) -> tuple[int, dict]:
        out = subprocess.run([NSG_AGENT, "fleet", "status", "--etcd", self.etcd.url, "--prefix", self.prefix,
                              "--json"], capture_output=True, text=True, timeout=30)
        try:
            return out.returncode, json.loads(out.stdout)
        except ValueError:
            return out.returncode, {"error": out.stderr}

    def client(self):
        from nsg_agent.sources.etcd import Etcd, EtcdConfig

        return Etcd(EtcdConfig.parse(self.etcd.url, self.prefix))

    def serve(self, ns: str, tcp: list[int]) -> None:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, PYTHON, "-c", SERVER, ",".join(map(str, tcp)), ""],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout.readline().strip() == "ready"


@contextlib.contextmanager
def make_fleet(n_hosts: int, *, tcp_ports: tuple[int, ...] = (8080, 5432), start_etcd: bool = True,
               tmp: Path | None = None) -> Iterator[Fleet]:
    """The namespaces, etcd and servers (agents are started by the caller: ``start_agent``)."""
    tag = secrets.token_hex(2)
    base = Path(tempfile.mkdtemp(prefix="nsgfe-")) if tmp is None else tmp
    base.mkdir(parents=True, exist_ok=True)
    data = base / "etcd"
    fleet = Fleet(tag, EtcdServer(data, base / "etcd.log"), [f"h{i}" for i in range(1, n_hosts + 1)], base)
    spaces = Namespaces(prefix="nsgfe")
    try:
        fleet.switch_ns = f"nsgfe-{tag}-sw"
        fleet.client_ns = f"nsgfe-{tag}-c"
        for ns in [fleet.switch_ns, fleet.client_ns] + [f"nsgfe-{tag}-{h}" for h in fleet.hosts]:
            spaces.add(ns)
        sw = fleet.switch_ns
        spaces.ip(sw, "link", "add", "br0", "type", "bridge")
        spaces.up(sw, "br0")

        def attach(ns: str, port: str, addrs: list[str], routes: list[str]) -> None:
            # created inside the switch namespace, the peer in ns: nothing in the root namespace
            spaces.veth(sw, port, ns, "eth0")
            spaces.ip(sw, "link", "set", port, "master", "br0")
            spaces.up(sw, port)
            for a in addrs:
                spaces.addr(ns, "eth0", a)
            spaces.up(ns, "eth0")
            for r in routes:
                spaces.route(ns, r, "eth0")

        for i, h in enumerate(fleet.hosts, 1):
            fleet.ns[h] = f"nsgfe-{tag}-{h}"
            attach(fleet.ns[h], f"p{i}", [f"{host_addr(i)}/24"], [f"{CLIENT_INTERNET}/32"])
        attach(fleet.client_ns, "pc", [f"{CLIENT_VNET}/24", f"{CLIENT_INTERNET}/32"], [])
        if tcp_ports:
            for h in fleet.hosts:
                fleet.serve(fleet.ns[h], list(tcp_ports))
        if start_etcd:
            fleet.etcd.start()
        yield fleet
    finally:
        # Ctrl-C during the teardown must not leave agents, etcd or namespaces behind
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        try:
            _teardown(fleet, spaces, base, tmp is None)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _teardown(fleet: Fleet, spaces: Namespaces, base: Path, own_tmp: bool) -> None:
    try:
        fleet.stop_agents()
        fleet.etcd.stop()
        for p in fleet.servers:
            for f in (p.stdin, p.stdout, p.stderr):
                try:
                    f.close()
                except OSError:
                    pass
            stop_process(p, grace=5)
    finally:
        try:
            spaces.teardown()  # the namespaces, after killing whatever still runs in them
        finally:
            if own_tmp and not os.environ.get("NSGFE_KEEP"):
                subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.fixture(scope="module")
def fleet3() -> Iterator[Fleet]:
    """Three hosts (h1 web, h2 db, h3 other), a client, etcd; agents started by the tests."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not os.path.exists(ETCD):
        pytest.skip("etcd not installed (scripts/install.sh installs etcd-server)")
    with make_fleet(3) as f:
        yield f
