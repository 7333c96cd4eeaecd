"""Real packets, one bounded exchange each: a TCP connection, a UDP echo, an ICMP echo.

The lab's probe matrix (nsg_agent.lab.probe), the integration tests' prober and the
benchmark's save-to-enforced prober all send through these three, so "allowed" means the same
everywhere. Each returns an :class:`Answer`:

  allowed   the exchange completed (connected; the echo came back)
  refused   the packet got through and the destination said no (a TCP reset, ICMP port
            unreachable): the firewall let it pass
  denied    nothing came back within the timeout (dropped on the way)
  error     the exchange could not be attempted (no route, address not local, ...)

``netns``: make the socket in that namespace (nsg_agent.host.netns.socket_in; the socket keeps
living there whatever thread uses it); None: in the calling thread's namespace. ``src`` is the
address to send from (bound before sending); both IPv4 and IPv6 addresses work.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass

from nsg_agent.host import netns as host_netns

ALLOWED, REFUSED, DENIED, ERROR = "allowed", "refused", "denied", "error"


@dataclass(frozen=True)
class Answer:
    verdict: str  # allowed / refused / denied / error
    sport: int | None = None  # the source port used (TCP, UDP)
    detail: str = ""  # why, when not allowed

    @property
    def through(self) -> bool:
        """Did the packet pass the firewall (a reset or port unreachable is an answer too)?"""
        return self.verdict in (ALLOWED, REFUSED)

    def __bool__(self) -> bool:
        return self.verdict == ALLOWED


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _socket(netns: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    if netns is None:
        return socket.socket(family, kind, proto)
    return host_netns.socket_in(netns, family, kind, proto)


def _nonce() -> bytes:
    return b"nsg-agent-probe " + os.urandom(8).hex().encode()


def tcp(src: str | None, dst: str, port: int, *, timeout: float, netns: str | None = None,
        echo: bytes | None = None, reset: bool = True) -> Answer:
    """Connect to ``dst``:``port``; with ``echo``, also send it and wait for the same bytes
    back. ``reset``: close with a reset (no TIME_WAIT, so a matrix of probes may reuse any
    port at once) instead of an orderly close."""
    with _socket(netns, _family(dst), socket.SOCK_STREAM) as s:
        if src is not None:
            s.bind((src, 0))
        sport = s.getsockname()[1] if src is not None else None
        s.settimeout(timeout)
        try:
            s.connect((dst, port))
        except socket.timeout:
            return Answer(DENIED, sport, "connect timed out")
        except ConnectionRefusedError:
            return Answer(REFUSED, sport, "connection refused (a reset came back)")
        except OSError as e:
            return Answer(ERROR, sport, f"connect: {e.strerror or e}")
        if sport is None:
            sport = s.getsockname()[1]
        try:
            if echo is not None:
                deadline = time.monotonic() + timeout
                s.sendall(echo)
                got = b""
                while len(got) < len(echo):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return Answer(DENIED, sport, "connected, but no echo")
                    s.settimeout(left)
                    chunk = s.recv(len(echo) - len(got))
                    if not chunk:
                        return Answer(DENIED, sport, "connected, but closed before the echo")
                    got += chunk
                if got != echo:
                    return Answer(ERROR, sport, "a different answer came back")
        except socket.timeout:
            return Answer(DENIED, sport, "connected, but no echo")
        except OSError as e:
            return Answer(DENIED, sport, f"connected, then: {e.strerror or e}")
        finally:
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return Answer(ALLOWED, sport)


def udp(src: str | None, dst: str, port: int, *, timeout: float, netns: str | None = None,
        payload: bytes | None = None) -> Answer:
    """Send one datagram (a fresh nonce unless ``payload``) and wait for it to come back."""
    data = payload if payload is not None else _nonce()
    with _socket(netns, _family(dst), socket.SOCK_DGRAM) as s:
        if src is not None:
            s.bind((src, 0))
        try:
            s.connect((dst, port))  # connected: an ICMP port unreachable is reported as such
        except OSError as e:
            return Answer(ERROR, None, f"udp: {e.strerror or e}")
        sport = s.getsockname()[1]
        deadline = time.monotonic() + timeout
        try:
            s.send(data)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return Answer(DENIED, sport, "no answer")
                s.settimeout(left)
                if s.recv(2048) == data:
                    return Answer(ALLOWED, sport)
        except socket.timeout:
            return Answer(DENIED, sport, "no answer")
        except ConnectionRefusedError:
            return Answer(REFUSED, sport, "port unreachable came back")
        except OSError as e:
            return Answer(ERROR, sport, f"udp: {e.strerror or e}")


def icmp_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of an ICMP message."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def icmp(src: str | None, dst: str, *, timeout: float, netns: str | None = None) -> Answer:
    """One ICMP echo request (a raw socket, like ``ping -c1 -W<timeout>`` without the ping
    binary); allowed when the reply with our identifier and payload arrives. IPv4."""
    ident = int.from_bytes(os.urandom(2), "big")
    payload = _nonce()
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    packet = struct.pack("!BBHHH", 8, 0, icmp_checksum(header + payload), ident, 1) + payload
    with _socket(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        try:
            if src is not None:
                s.bind((src, 0))
            s.sendto(packet, (dst, 0))
        except OSError as e:
            return Answer(ERROR, None, f"icmp: {e.strerror or e}")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return Answer(DENIED, None, "no echo reply")
            s.settimeout(left)
            try:
                data, addr = s.recvfrom(2048)
            except socket.timeout:
                return Answer(DENIED, None, "no echo reply")
            except OSError as e:
                return Answer(ERROR, None, f"icmp: {e.strerror or e}")
            ihl = (data[0] & 0x0F) * 4
            if len(data) < ihl + 8 or addr[0] != dst:
                continue
            kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if kind == 0 and rid == ident and data[ihl + 8:] == payload:
                return Answer(ALLOWED)
