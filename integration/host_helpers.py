"""Fixtures for the root-only integration tests: throwaway namespaces, servers, probes.

Network safety (see ../shared/docs/design.md): every namespace and veth created here is
named ``nsgh-*`` / ``nsgh*`` (host-mode tests), lives only inside those namespaces, and is
deleted in teardown whatever happened (nsg_agent.testing.Namespaces, which also kills the
processes still running inside). Nothing is added to the root namespace; the
``root_nft_guard`` fixture proves no nftables table appears there.

Addresses: the enforced NIC ("srv") is 10.50.1.4/24; the peer namespace ("cli") holds
10.50.1.5/24 (same VNet) and 203.0.113.10/32 (an "Internet" host, reached over the same veth
through an on-link host route inside the namespaces).

The lab helper keeps its own fixtures in integration/lab_fixtures.py; they are loaded here
when that file exists.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from nsg_agent.host import packets
from nsg_agent.testing import Namespaces

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
PYTHON = str(VENV / "bin" / "python") if (VENV / "bin" / "python").exists() else sys.executable
NSG_AGENT = str(VENV / "bin" / "nsg-agent")
IS_ROOT = os.geteuid() == 0

SRV_ADDR = "10.50.1.4"
CLI_VNET_ADDR = "10.50.1.5"
CLI_INTERNET_ADDR = "203.0.113.10"




def run(*cmd: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, timeout=timeout)


def stop_process(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace`` s: a process under test never outlives its test."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def root_tables() -> str:
    return run("nft", "list", "tables").stdout


@pytest.fixture
def root_nft_guard() -> Iterator[None]:
    """Asserts the root namespace's nftables tables are the same after the test, and that
    the agent's table never appears there."""
    before = root_tables()
    assert "nsg_agent" not in before
    yield
    after = root_tables()
    assert "nsg_agent" not in after, "the agent's table leaked into the root namespace"
    assert after == before


@dataclass
class HostPair:
    """Two namespaces joined by a veth: ``srv`` (the enforced NIC) and ``cli`` (the peer)."""

    srv: str
    cli: str
    srv_if: str
    cli_if: str
    srv_addr: str = SRV_ADDR
    cli_vnet: str = CLI_VNET_ADDR
    cli_internet: str = CLI_INTERNET_ADDR


@pytest.fixture
def host_pair() -> Iterator[HostPair]:
    """Fresh ``nsgh-s<id>`` / ``nsgh-c<id>`` namespaces with a veth pair; always deleted."""
    with make_host_pair() as pair:
        yield pair


@contextlib.contextmanager
def make_host_pair(prefix: str = "nsgh", **addresses: str) -> Iterator[HostPair]:
    """The context manager behind ``host_pair`` (for module-scoped fixtures). ``prefix``
    names the namespaces (``<prefix>-s<id>``) and interfaces (``<prefix>s<id>``): the fault
    suite uses its own, ``nsgf``. ``addresses``: srv_addr, cli_vnet, cli_internet, when a
    suite needs its own plan. Processes still running in the namespaces at exit are killed."""
    tag = secrets.token_hex(3)
    pair = HostPair(srv=f"{prefix}-s{tag}", cli=f"{prefix}-c{tag}", srv_if=f"{prefix}s{tag}",
                    cli_if=f"{prefix}c{tag}", **addresses)
    # The registry removes both namespaces (and kills what still runs in them) whatever happens,
    # and makes the veth inside srv with its peer in cli: nothing ever exists in the root ns.
    with Namespaces(prefix=prefix) as ns:
        ns.add(pair.srv)
        ns.add(pair.cli)
        ns.veth(pair.srv, pair.srv_if, pair.cli, pair.cli_if)
        ns.addr(pair.srv, pair.srv_if, f"{pair.srv_addr}/24")
        ns.addr(pair.cli, pair.cli_if, f"{pair.cli_vnet}/24")
        ns.addr(pair.cli, pair.cli_if, f"{pair.cli_internet}/32")
        ns.up(pair.srv, pair.srv_if)
        ns.up(pair.cli, pair.cli_if)
        ns.route(pair.srv, f"{pair.cli_internet}/32", pair.srv_if)
        yield pair


# --- servers and probes ------------------------------------------------------------------------

SERVER = r"""
import socket, sys, threading
tcp = [int(p) for p in sys.argv[1].split(",") if p]
udp = [int(p) for p in sys.argv[2].split(",") if p]
def serve_conn(c):
    c.settimeout(60)
    try:
        while True:
            data = c.recv(4096)
            if not data:
                break
            c.sendall(data)
    except OSError:
        pass
    finally:
        c.close()
def serve_tcp(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve_conn, args=(c,), daemon=True).start()
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # linux/in.h; Python 3.11 does not name it
def serve_udp(s):
    # Answer from the address the datagram was sent to (as a connected client expects, and
    # as conntrack sees one flow), not from whichever address routing would pick.
    s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    while True:
        data, anc, _, addr = s.recvmsg(4096, socket.CMSG_SPACE(12))
        info = [c for lvl, kind, c in anc if lvl == socket.IPPROTO_IP and kind == IP_PKTINFO]
        to = info[0][8:12] if info else bytes(4)  # struct in_pktinfo: ifindex, spec_dst, addr
        s.sendmsg([data], [(socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + to + bytes(4))], 0, addr)
for p in tcp:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p)); s.listen(64)
    threading.Thread(target=serve_tcp, args=(s,), daemon=True).start()
for p in udp:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", p))
    threading.Thread(target=serve_udp, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()  # exit when the test closes our stdin
"""


@pytest.fixture
def echo_server() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start TCP/UDP echo servers inside a namespace (``ip netns exec``); all killed after."""
    procs: list[subprocess.Popen] = []

    def start(ns: str, tcp: list[int], udp: list[int]) -> subprocess.Popen:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, PYTHON, "-c", SERVER, ",".join(map(str, tcp)), ",".join(map(str, udp))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.poll() is not None else line
        return proc

    try:
        yield start
    finally:
        for p in procs:
            for f in (p.stdin, p.stdout, p.stderr):
                try:
                    f.close()
                except OSError:
                    pass
            stop_process(p, grace=5)


def tcp_echo(src: str, dst: str, port: int, timeout: float) -> bool:
    """Connect from src to dst:port (in the calling thread's namespace), send one request and
    read the echo: True when it all worked."""
    return bool(packets.tcp(src, dst, port, timeout=timeout, echo=b"ping", reset=False))


class Prober:
    """Real packets from inside one namespace (nsg_agent.host.packets, the lab probe's own):
    sockets made in a thread that entered it."""

    def __init__(self, ns: str):
        from nsg_agent.host.netns import NetnsRunner

        self.ns = ns
        self.runner = NetnsRunner(ns, thread_name=f"probe-{ns}")

    def close(self) -> None:
        self.runner.close()

    def tcp(self, src: str, dst: str, port: int, timeout: float = 0.6) -> bool:
        """Connect from src to dst:port and get one echo back."""
        return self.runner.call(tcp_echo, src, dst, port, timeout, timeout=timeout * 4 + 5)

    def udp(self, src: str, dst: str, port: int, timeout: float = 0.6) -> bool:
        """One datagram from src to dst:port, echoed back."""
        return bool(self.runner.call(lambda: packets.udp(src, dst, port, timeout=timeout, payload=b"ping"),
                                     timeout=timeout * 4 + 5))

    def icmp(self, src: str, dst: str, timeout: float = 0.6) -> bool:
        """One ICMP echo request from src to dst; True if the matching reply arrives."""
        return bool(self.runner.call(lambda: packets.icmp(src, dst, timeout=timeout), timeout=timeout * 4 + 5))

    def open_tcp(self, src: str, dst: str, port: int, timeout: float = 1.0) -> socket.socket:
        """An established connection (created in the namespace, usable from any thread)."""
        def go() -> socket.socket:
            s = socket.socket()
            s.settimeout(timeout)
            s.bind((src, 0))
            s.connect((dst, port))
            return s
        return self.runner.call(go, timeout=timeout + 5)




def echo(sock: socket.socket) -> bool:
    """Does one request/response still pass on this connection?"""
    try:
        sock.sendall(b"ping")
        return sock.recv(16) == b"ping"
    except OSError:
        return False


@pytest.fixture
def prober() -> Iterator[Callable[[str], Prober]]:
    made: list[Prober] = []

    def make(ns: str) -> Prober:
        p = Prober(ns)
        made.append(p)
        return p

    try:
        yield make
    finally:
        for p in made:
            p.close()


# --- the daemon as a subprocess -----------------------------------------------------------------


class AgentProcess:
    def __init__(self, proc: subprocess.Popen, log_path: Path):
        self.proc = proc
        self.log_path = log_path

    def events(self) -> list[dict]:
        import json

        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "<non-json>", "line": line})
        return out

    def wait_for(self, event: str, count: int = 1, timeout: float = 15.0, **fields: object) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e.get("event") == event
                     and all(e.get(k) == v for k, v in fields.items())]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} #{count} {fields} within {timeout}s; log:\n{self.log_path.read_text()[-4000:]}")


@pytest.fixture
def agent_daemon(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start ``nsg-agent run`` (in the root namespace, acting only via --netns); always
    stopped (SIGTERM, then SIGKILL) afterwards."""
    started: list[AgentProcess] = []

    def start(config: Path, netns: str, *extra: str) -> AgentProcess:
        log_path = tmp_path / f"agent-{len(started)}.log"
        log = open(log_path, "w")
        proc = subprocess.Popen(
            [NSG_AGENT, "run", "--config", str(config), "--netns", netns,
             "--state-dir", str(tmp_path / "run"), "--resync", "0.5", "--debounce", "0.1", *extra],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        agent = AgentProcess(proc, log_path)
        started.append(agent)
        return agent

    try:
        yield start
    finally:
        for a in started:
            stop_process(a.proc)


def poll(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> float | None:
    """Seconds until ``predicate()`` held, or None if it never did within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    return None


# --- the desired state used by the host-mode tests ------------------------------------------


def host_policy(pair: HostPair, *, web_access: str = "Allow", flush: bool = False, extra: str = "") -> str:
    """One NIC ("srv", the pair's srv address, 10.50.1.4 by default, on the srv veth) with an NSG:

    inbound  100 web        Tcp from Internet to port 8080   ``web_access``
             110 deny-8081  Tcp from *        to port 8081   Deny
             120 dns-udp    Udp from Internet to port 5353   Allow
    outbound 100 deny-9001  Tcp to Internet port 9001        Deny
    plus Azure's defaults (VNet allowed both ways, Internet outbound allowed, rest denied).
    """
    import ipaddress

    # the pair's own address plan (the default 10.50.1.4; a suite with its own, e.g. 10.88.1.4)
    vnet = ipaddress.ip_network(f"{pair.srv_addr}/16", strict=False)
    subnet = ipaddress.ip_network(f"{pair.srv_addr}/24", strict=False)
    return f"""\
virtualNetworks:
  - name: vnet
    addressSpace: [{vnet}]
    subnets:
      - name: web
        addressPrefix: {subnet}
networkInterfaces:
  - name: srv
    subnet: vnet/web
    ipAddresses: [{pair.srv_addr}]
    networkSecurityGroup: srv-nsg
    interface: {pair.srv_if}
networkSecurityGroups:
  - name: srv-nsg
    flushConnection: {str(flush).lower()}
    securityRules:
      - {{name: web, priority: 100, direction: Inbound, access: {web_access}, protocol: Tcp,
          sourceAddressPrefix: Internet, sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "8080"}}
      - {{name: deny-8081, priority: 110, direction: Inbound, access: Deny, protocol: Tcp,
          sourceAddressPrefix: "*", sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "8081"}}
      - {{name: dns-udp, priority: 120, direction: Inbound, access: Allow, protocol: Udp,
          sourceAddressPrefix: Internet, sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "5353"}}
      - {{name: deny-9001, priority: 100, direction: Outbound, access: Deny, protocol: Tcp,
          sourceAddressPrefix: "*", sourcePortRange: "*", destinationAddressPrefix: Internet, destinationPortRange: "9001"}}
{extra}"""


def write_atomically(path: Path, text: str) -> None:
    """Replace a file the way editors do (write a temporary file, rename it over)."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def free_port() -> int:
    """A TCP port free on loopback now (for a test's metrics or etcd listener)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    """The agent's /metrics on loopback: (sample name, sorted labels) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}
