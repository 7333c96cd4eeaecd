"""nsg_agent.host.packets with real packets: what each answer means, in two namespaces joined by
a veth (the lab probe, the integration prober and the benchmark prober all send through it).

Network safety: namespaces ``nsgpk-<tag>-a`` / ``-b`` made and removed by Namespaces; VNet-style
addresses 10.92.1.x and 2001:db8:92::x on the veth only; nothing in the root namespace.
"""

from __future__ import annotations

import secrets
import socket
import threading
from typing import Iterator

import pytest

from nsg_agent.host import netns as host_netns
from nsg_agent.host import packets
from nsg_agent.testing import Namespaces

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root_nft_guard")]

A4, B4, NOBODY4 = "10.92.1.1", "10.92.1.2", "10.92.1.99"
A6, B6 = "2001:db8:92::1", "2001:db8:92::2"
TCP_PORT, UDP_PORT, CLOSED_PORT = 7201, 7202, 7203


class Echo:
    """TCP and UDP echo servers living in namespace ``ns`` (sockets made there), one thread each."""

    def __init__(self, ns: str):
        self.tcp = [host_netns.socket_in(ns, f, socket.SOCK_STREAM) for f in (socket.AF_INET, socket.AF_INET6)]
        self.udp = host_netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
        for s, addr in zip(self.tcp, ((B4, TCP_PORT), (B6, TCP_PORT))):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
            s.listen(8)
            s.settimeout(0.2)
        self.udp.bind((B4, UDP_PORT))
        self.udp.settimeout(0.2)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._tcp, args=(s,), daemon=True) for s in self.tcp]
        self.threads.append(threading.Thread(target=self._udp, daemon=True))
        for t in self.threads:
            t.start()

    def _tcp(self, server: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = server.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    data = conn.recv(64)
                    if data:
                        conn.sendall(data)
                except OSError:
                    pass

    def _udp(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.udp.recvfrom(2048)
            except (socket.timeout, OSError):
                continue
            self.udp.sendto(data, addr)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(2)
        for s in (*self.tcp, self.udp):
            s.close()


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[str, str]]:
    tag = secrets.token_hex(3)
    with Namespaces("nsgpk") as ns:
        a, b = ns.add(f"nsgpk-{tag}-a"), ns.add(f"nsgpk-{tag}-b")
        for name in (a, b):
            ns.sysctl(name, {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"})
        ns.veth(a, "pka", b, "pkb")
        ns.addr(a, "pka", f"{A4}/24")
        ns.addr(b, "pkb", f"{B4}/24")
        ns.ip(a, "addr", "add", f"{A6}/64", "dev", "pka", "nodad")
        ns.ip(b, "addr", "add", f"{B6}/64", "dev", "pkb", "nodad")
        ns.up(a, "pka")
        ns.up(b, "pkb")
        echo = Echo(b)
        try:
            # a fresh link's IPv6 neighbour discovery can hold the very first packet back
            for _ in range(30):
                if packets.tcp(A6, B6, TCP_PORT, timeout=0.2, netns=a, echo=b"warm"):
                    break
            yield a, b
        finally:
            echo.close()


def test_tcp_answers(pair):
    a, _ = pair
    ok = packets.tcp(A4, B4, TCP_PORT, timeout=1.0, netns=a, echo=b"ping")
    assert ok.verdict == "allowed" and ok and ok.through and ok.sport
    refused = packets.tcp(A4, B4, CLOSED_PORT, timeout=1.0, netns=a)
    assert refused.verdict == "refused" and refused.through and not refused
    lost = packets.tcp(A4, NOBODY4, TCP_PORT, timeout=0.3, netns=a)  # no one answers ARP
    assert lost.verdict in ("denied", "error") and not lost.through


def test_tcp_over_ipv6(pair):
    a, _ = pair
    assert packets.tcp(A6, B6, TCP_PORT, timeout=1.0, netns=a, echo=b"six").verdict == "allowed"


def test_udp_answers(pair):
    a, _ = pair
    assert packets.udp(A4, B4, UDP_PORT, timeout=1.0, netns=a).verdict == "allowed"
    refused = packets.udp(A4, B4, CLOSED_PORT, timeout=1.0, netns=a)
    assert refused.verdict == "refused" and refused.through


def test_icmp_answers(pair):
    a, _ = pair
    assert packets.icmp(A4, B4, timeout=1.0, netns=a).verdict == "allowed"
    assert not packets.icmp(A4, NOBODY4, timeout=0.3, netns=a).through


def test_a_drop_is_denied_not_refused(pair):
    """What the firewall does: the peer's nftables drops port 7201 and the answer says denied."""
    a, b = pair
    from nsg_agent.kernel.backend import NftBackend

    table = {"family": "inet", "name": "nsg_agent"}
    chain = {"family": "inet", "table": "nsg_agent", "name": "input", "type": "filter", "hook": "input",
             "prio": 0, "policy": "accept"}
    rule = {"family": "inet", "table": "nsg_agent", "chain": "input",
            "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                                "right": TCP_PORT}}, {"drop": None}]}
    backend = NftBackend(b)
    try:
        backend.replace([{"add": {"table": table}}, {"add": {"chain": chain}}, {"add": {"rule": rule}}])
        dropped = packets.tcp(A4, B4, TCP_PORT, timeout=0.3, netns=a)
        assert dropped.verdict == "denied" and not dropped.through
    finally:
        backend.delete_table()
        backend.close()
    assert packets.tcp(A4, B4, TCP_PORT, timeout=1.0, netns=a, echo=b"back").verdict == "allowed"
