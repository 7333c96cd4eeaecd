"""IP flow verify against the live kernel (``verify --kernel``): what the loaded ruleset, not
the model, decides for one flow.

The agent's table is read from the namespace it enforces (a full listing) and loaded, rule for
rule, into a throwaway namespace ``nsgv-<id>-r`` that has the NIC's interface name and address
(host placement) or routes between two endpoints (the lab's fabric placement). One real
packet of the flow (a TCP SYN, a UDP datagram, an ICMP echo request or a raw IP packet) is
sent there from a second throwaway namespace (``-s``, the remote end; ``-d`` the destination in
the fabric), with nftables tracing switched on for that flow only, and ``nft monitor trace``
reports every rule of ``inet nsg_agent`` the packet met and the verdict. Nothing is sent in
the enforced namespace and no rule is added there: a verify must not disturb what it
inspects. (libnftables' JSON API has no monitor, so the trace is read from the ``nft`` command,
in the throwaway namespace only.)

The answer names the rules by their comments (``<nsg>: UserRule_<name>``), so it can be put
beside the model's path: the same verdict through the same rules, or a mismatch (exit 4).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import select
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field

from nsg_agent.compiler.naming import TABLE_NAME, rule_comment
from nsg_agent.desired.vocabulary import Direction
from nsg_agent.errors import InvalidInput, OperationFailed
from nsg_agent.semantics.policy import Flow, Verdict

TRACE_TABLE = "nsgv_trace"
_LINE = re.compile(r"^trace id (\w+) (\w+) (\S+) (\S+) (rule|policy|verdict|packet:)\s*(.*)$")
_VERDICT = re.compile(r"\(verdict (\w+)(?: (\S+))?\)\s*$")
_COMMENT = re.compile(r'comment "((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class TraceEvent:
    table: str
    chain: str
    kind: str  # "rule" or "policy"
    verdict: str  # accept, drop, return, jump, goto, continue
    comment: str | None = None
    text: str = ""


@dataclass
class KernelAnswer:
    access: str  # "Allow" or "Deny"
    rules: list[str] = field(default_factory=list)  # comments of the deciding rules, in order
    events: list[TraceEvent] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"access": self.access, "rules": self.rules,
                "trace": [{"chain": e.chain, "kind": e.kind, "verdict": e.verdict, "comment": e.comment}
                          for e in self.events]}


def parse_trace(lines: list[str]) -> list[TraceEvent]:
    """The events of the first traced packet, in the agent's table."""
    first_id = None
    out = []
    for line in lines:
        m = _LINE.match(line.strip())
        if not m:
            continue
        trace_id, _family, table, chain, kind, rest = m.groups()
        if first_id is None and table == TABLE_NAME:
            first_id = trace_id
        if trace_id != first_id or table != TABLE_NAME or kind not in ("rule", "policy"):
            continue
        if kind == "policy":
            out.append(TraceEvent(table, chain, "policy", rest.split()[0] if rest else "accept"))
            continue
        v = _VERDICT.search(rest)
        c = _COMMENT.search(rest)
        out.append(TraceEvent(table, chain, "rule", v.group(1) if v else "continue",
                              c.group(1) if c else None, rest))
    return out


def answer(events: list[TraceEvent]) -> KernelAnswer:
    """The verdict the trace ends in, and the counted rules that decided (NSG and platform
    rules carry comments; structural jumps do not)."""
    decided = [e.comment for e in events if e.comment and e.verdict in ("accept", "drop", "return")
               and not e.comment.startswith("conntrack")]
    final = next((e.verdict for e in reversed(events) if e.verdict in ("accept", "drop")), None)
    if final is None:  # fell off every chain: the base chains' policy is accept
        final = "accept"
    return KernelAnswer("Allow" if final == "accept" else "Deny", decided, events)


def model_rules(verdict: Verdict) -> list[str]:
    """The model's path as the comments the compiler writes on those rules."""
    return [rule_comment(d.rule) for d in verdict.path if d.rule is not None]


# --- the throwaway namespaces ----------------------------------------------------------------


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip"] + (["-n", ns] if ns else []) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise OperationFailed(f"verify --kernel: {' '.join(cmd)}: {r.stderr.strip()}")


def _host_len(addr: ipaddress._BaseAddress) -> str:
    return f"{addr}/{32 if addr.version == 4 else 128}"


class Scratch:
    """Throwaway namespaces ``nsgv-<tag>-<role>``, removed on exit whatever happened (the
    agent's one registry of throwaway namespaces, nsg_agent.host.namespaces)."""

    def __init__(self) -> None:
        from nsg_agent.host.namespaces import Namespaces

        self.tag = secrets.token_hex(3)
        self.spaces = Namespaces("nsgv")

    def ns(self, role: str) -> str:
        name = self.spaces.add(f"nsgv-{self.tag}-{role}")
        try:  # addresses usable at once: no duplicate address detection to wait for
            self.spaces.sysctl(name, {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"})
        except OSError:
            pass  # a kernel without IPv6: nothing to wait for either
        return name

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        self.spaces.veth(ns_a, if_a, ns_b, if_b)
        self.spaces.up(ns_a, if_a)
        self.spaces.up(ns_b, if_b)

    def close(self) -> None:
        self.spaces.teardown()

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _addr(ns: str, ifname: str, addr) -> None:
    extra = ("nodad",) if addr.version == 6 else ()  # usable at once, no duplicate detection
    _ip("addr", "add", _host_len(addr), "dev", ifname, *extra, ns=ns)


def _route(ns: str, dst, ifname: str) -> None:
    _ip("-6" if dst.version == 6 else "-4", "route", "add", _host_len(dst), "dev", ifname, ns=ns)


def _nft(ns: str, text: str) -> None:
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, capture_output=True,
                       text=True, timeout=10)
    if r.returncode != 0:
        raise OperationFailed(f"verify --kernel: cannot set up tracing: {r.stderr.strip()}")


TRACE_CHAINS = (f"table inet {TRACE_TABLE} {{\n"
                f"  chain pre {{ type filter hook prerouting priority -400; policy accept; }}\n"
                f"  chain out {{ type filter hook output priority -400; policy accept; }}\n}}\n")


# --- one packet ------------------------------------------------------------------------------


def _send(ns: str, src, dst, protocol: int, sport: int | None, dport: int | None) -> None:
    """One packet of the flow from ``ns`` (its first packet: conntrack state new). A packet
    the output hook drops makes the send fail with EPERM: that is an answer, not an error."""
    try:
        _send_one(ns, src, dst, protocol, sport, dport)
    except PermissionError:
        pass


def _send_one(ns: str, src, dst, protocol: int, sport: int | None, dport: int | None) -> None:
    from nsg_agent.host import netns as host_netns
    from nsg_agent.host.packets import icmp_checksum

    family = socket.AF_INET if src.version == 4 else socket.AF_INET6
    if protocol == 6:
        s = host_netns.socket_in(ns, family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((str(src), sport or 0))
        s.setblocking(False)
        try:
            s.connect((str(dst), dport or 0))
        except (BlockingIOError, OSError):
            pass
        time.sleep(0.2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    elif protocol == 17:
        with host_netns.socket_in(ns, family, socket.SOCK_DGRAM) as s:
            s.bind((str(src), sport or 0))
            s.sendto(b"nsg-agent verify --kernel", (str(dst), dport or 0))
    elif protocol in (1, 58):
        icmp_type = 8 if protocol == 1 else 128
        hdr = struct.pack("!BBHHH", icmp_type, 0, 0, os.getpid() & 0xFFFF, 1)
        payload = b"nsg-agent verify --kernel"
        data = struct.pack("!BBHHH", icmp_type, 0, icmp_checksum(hdr + payload) if protocol == 1 else 0,
                           os.getpid() & 0xFFFF, 1) + payload  # ICMPv6: the kernel fills the checksum
        proto = socket.IPPROTO_ICMP if protocol == 1 else socket.IPPROTO_ICMPV6
        with host_netns.socket_in(ns, family, socket.SOCK_RAW, proto) as s:
            s.bind((str(src), 0))
            s.sendto(data, (str(dst), 0))
    else:
        with host_netns.socket_in(ns, family, socket.SOCK_RAW, protocol) as s:
            s.bind((str(src), 0))
            s.sendto(b"\x00\x00\x08\x00nsg-agent verify --kernel", (str(dst), 0))


def _monitor(ns: str) -> subprocess.Popen:
    # stdbuf: nft writes through stdio, fully buffered into a pipe; one line at a time instead
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "stdbuf", "-oL", "nft", "monitor", "trace"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    time.sleep(0.3)  # nft subscribes to the trace group as it starts
    return proc


def _read(proc: subprocess.Popen, seconds: float, stop: bool = True, quiet: float = 0.08) -> list[str]:
    """What the monitor prints: waits up to ``seconds`` for the first output, then until
    ``quiet`` seconds pass without more (one packet's events come together). Raw reads:
    select() cannot see lines a buffered reader already holds. ``stop`` ends the monitor."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], quiet if chunks else seconds)
        if not ready:
            break
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data)
    if stop:
        proc.terminate()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(2)
        proc.stdout.close()
    return b"".join(chunks).decode("utf-8", "replace").splitlines()


class Tracer:
    """The throwaway copy of one table, for tracing any number of flows through it.

    ``placement`` "host": namespace ``-r`` holds the table and the NIC's interface (named as
    in the table's ``iifname``/``oifname`` maps), ``-s`` is the remote end. "fabric": ``-r``
    holds the table and forwards between ``-s`` (sources) and ``-d`` (destinations), as the
    lab's fabric does (its maps key on addresses). Addresses are added as flows need them."""

    def __init__(self, listing: dict, placement: str, interface: str | None = None):
        from nsg_agent.host import netns as host_netns
        from nsg_agent.kernel.backend import NftBackend, listing_to_batch

        self.placement = placement
        self.sc = Scratch()
        self._added: set[tuple[str, str, str]] = set()
        try:
            self.r, self.s = self.sc.ns("r"), self.sc.ns("s")
            if placement == "host":
                if not interface:
                    raise InvalidInput("host placement needs the NIC's interface")
                self.r_if = interface
                self.sc.veth(self.r, interface, self.s, "vp0")
            else:
                self.d = self.sc.ns("d")
                self.sc.veth(self.r, "vs", self.s, "vp0")
                self.sc.veth(self.r, "vd", self.d, "vp0")
                host_netns.write_sysctls(self.r, {"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1",
                                              "net/ipv4/conf/vs/proxy_arp": "1", "net/ipv4/conf/vd/proxy_arp": "1"})
            backend = NftBackend(self.r)
            try:
                backend.replace(listing_to_batch(listing))
            finally:
                backend.close()
            _nft(self.r, TRACE_CHAINS)
            self.mon = _monitor(self.r)
            self._wait_for_monitor()
        except BaseException:
            self.sc.close()
            raise

    def _wait_for_monitor(self, timeout: float = 5.0) -> None:
        """nft monitor subscribes a moment after it starts: trace a canary packet (UDP to
        port 9 on loopback) until the monitor reports it, so no flow's trace is missed."""
        _nft(self.r, f"add rule inet {TRACE_TABLE} out meta l4proto udp udp dport 9 meta nftrace set 1\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _send(self.r, ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("127.0.0.1"), 17, 0, 9)
            if any("trace id" in line for line in _read(self.mon, 0.2, stop=False)):
                return
        raise OperationFailed("verify --kernel: nft monitor trace reports nothing")

    def _ensure(self, ns: str, ifname: str, addr, route_to, route_if: str) -> None:
        for key, fn in (((ns, "addr", str(addr)), lambda: _addr(ns, ifname, addr)),
                        ((ns, "route", str(route_to)), lambda: _route(ns, route_to, route_if))):
            if key not in self._added:
                fn()
                self._added.add(key)

    def trace(self, src, dst, protocol: int, sport: int | None, dport: int | None,
              outbound_from_r: bool = False) -> KernelAnswer:
        """One packet ``src -> dst``; in host placement ``outbound_from_r`` sends it from the
        NIC's side (an outbound flow), else to it."""
        if self.placement == "host":
            local, remote = (src, dst) if outbound_from_r else (dst, src)
            self._ensure(self.r, self.r_if, local, remote, self.r_if)
            self._ensure(self.s, "vp0", remote, local, "vp0")
            sender = self.r if outbound_from_r else self.s
        else:
            # each flow gets its endpoints afresh: an address that was the other end's in an
            # earlier flow must not linger (the packet would be delivered inside -s)
            for ns, here, there in ((self.s, src, dst), (self.d, dst, src)):
                _ip("addr", "flush", "dev", "vp0", ns=ns)
                _ip("route", "flush", "dev", "vp0", ns=ns)
                _addr(ns, "vp0", here)
                _route(ns, there, "vp0")
            for addr, ifname in ((src, "vs"), (dst, "vd")):  # the router: this flow's way
                _ip("-6" if addr.version == 6 else "-4", "route", "replace", _host_len(addr), "dev", ifname, ns=self.r)
            sender = self.s
        _nft(self.r, _trace_flow_rules(src, dst, protocol))  # trace this flow only
        _read(self.mon, 0.05, stop=False)  # anything left from an earlier flow
        events: list[TraceEvent] = []
        for _ in range(3):  # a first packet can wait for ARP/ND: send again if nothing came
            _send(sender, src, dst, protocol, sport, dport)
            events = parse_trace(_read(self.mon, 0.5, stop=False))
            if events:
                return answer(events)
        raise OperationFailed(f"verify --kernel: the packet {src} -> {dst} (protocol {protocol}) never "
                              "reached the copy of the table")

    def close(self) -> None:
        if self.mon.poll() is None:
            self.mon.terminate()
            try:
                self.mon.wait(2)
            except subprocess.TimeoutExpired:
                self.mon.kill()
                self.mon.wait(2)
        if self.mon.stdout is not None:
            self.mon.stdout.close()
        self.sc.close()

    def __enter__(self) -> "Tracer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _trace_flow_rules(src, dst, protocol: int) -> str:
    """Tracing switched on for exactly this flow's packets (replacing the previous flow's)."""
    fam = "ip" if src.version == 4 else "ip6"
    match = f"{fam} saddr {src} {fam} daddr {dst} meta l4proto {protocol} meta nftrace set 1"
    return (f"flush chain inet {TRACE_TABLE} pre\nflush chain inet {TRACE_TABLE} out\n"
            f"add rule inet {TRACE_TABLE} pre {match}\nadd rule inet {TRACE_TABLE} out {match}\n")


def trace_host(listing: dict, interface: str, flow: Flow) -> KernelAnswer:
    """Host placement: the flow's packet sent to the NIC's interface (inbound) or from it."""
    with Tracer(listing, "host", interface) as t:
        if flow.direction is Direction.INBOUND:
            return t.trace(flow.remote, flow.local, flow.protocol, flow.remote_port, flow.local_port)
        return t.trace(flow.local, flow.remote, flow.protocol, flow.local_port, flow.remote_port,
                       outbound_from_r=True)


def trace_fabric(listing: dict, src, dst, protocol: int, sport: int | None, dport: int | None) -> KernelAnswer:
    """Lab fabric placement: the table on a router between the two endpoints."""
    with Tracer(listing, "fabric") as t:
        return t.trace(src, dst, protocol, sport, dport)


def compare(model_allowed: bool, kernel: KernelAnswer, expected_rules: list[str]) -> list[str]:
    """Differences between the model's answer and the kernel's (empty: they agree): the
    verdict, and every rule the model decides through must be one the packet met."""
    problems = []
    model_access = "Allow" if model_allowed else "Deny"
    if model_access != kernel.access:
        problems.append(f"the model says {model_access}, the kernel {kernel.access}")
    missing = [r for r in expected_rules if r not in kernel.rules]
    if missing:
        problems.append("the kernel did not decide through " + ", ".join(missing)
                        + f" (it went through {', '.join(kernel.rules) or 'no counted rule'})")
    return problems
