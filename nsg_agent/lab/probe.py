"""The lab's connectivity matrix: real packets between every NIC and host, compared cell by
cell with the semantics engine's prediction.

Planning is pure (``endpoints``, ``probe_ports``, ``plan_cells``, ``predict``, ``render``);
``run_probes`` sends the packets.

What a cell is: a source endpoint, a destination endpoint and a service (``tcp/<port>``,
``udp/<port>`` or ``icmp``). Every ordered pair of endpoints in which at least one side is a
NIC is probed (host to host traffic meets no NSG). A NIC is probed at its first address.

Prediction: a flow from A to B is allowed iff A's outbound (if A is a NIC) and B's inbound
(if B is a NIC) both allow it (``nsg_agent.semantics.resolver.evaluate``), with the real source port the
client used; and, for two NICs in VNets that are not peered, never (Azure has no route
between them).

Observation, in this process (no process per probe): sockets are opened inside the source
namespace by a thread that enters it (``nsg_agent.host.netns``):
  - TCP: connect from an ephemeral port; the handshake completing = allowed (the SYN-ACK
    coming back also proves the reply passes with no rule for it); timeout = denied.
  - UDP: a request with a nonce to an echo listener; the echo coming back = allowed.
  - ICMP: an echo request on a raw socket; the kernel's echo reply = allowed.
  - GRE (IP protocol 47, which Azure drops inside a VNet): one packet with a nonce on a raw
    socket; the destination's raw GRE socket receiving it = allowed.
Listeners (one TCP and one UDP socket per port per destination namespace, all served by
one selector thread) live in the destination namespaces for the duration of the run.

Bounded: each probe waits at most ``timeout`` seconds (default 0.5); at most ``workers``
probes run at once. A cell predicted allowed but seen denied is retried once with a longer
timeout, so that a packet lost to load is not reported as a mismatch; a cell seen allowed is
never retried (the packets did pass).
"""

from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

from nsg_agent.desired.vocabulary import Direction
from nsg_agent.host import netns as host_netns
from nsg_agent.host import packets
from nsg_agent.lab.topology import LabPlan
from nsg_agent.semantics.policy import Flow, LevelDecision, Policy, Verdict
from nsg_agent.semantics.resolver import evaluate, find_nic

EXTRA_PORTS = (8080, 9999, 5000, 12345, 31337)  # ports rules rarely mention
MAX_MENTIONED_PORTS = 12
PROTO_NUMBER = {"tcp": 6, "udp": 17, "icmp": 1, "gre": 47}
GRE_HEADER = struct.pack("!HH", 0, 0x0800)  # no flags, version 0, payload type IPv4


@dataclass(frozen=True)
class Endpoint:
    name: str
    kind: str  # "nic", "external" or "platform"
    address: str
    netns: str
    vnet: str | None = None

    @property
    def is_nic(self) -> bool:
        return self.kind == "nic"


@dataclass(frozen=True, order=True)
class Service:
    protocol: str  # "tcp", "udp", "icmp", "gre"
    port: int | None = None

    @property
    def label(self) -> str:
        return self.protocol if self.port is None else f"{self.protocol}/{self.port}"


@dataclass(frozen=True)
class Cell:
    source: Endpoint
    destination: Endpoint
    service: Service


@dataclass(frozen=True)
class Prediction:
    allowed: bool
    reason: str  # the deciding rule, e.g. "deny web-nsg (subnet, inbound at web1): DefaultRule_DenyAllInBound"


@dataclass
class Result:
    cell: Cell
    source_port: int | None
    predicted: Prediction
    observed: str  # "allowed", "denied", "refused" (a reset came back) or "error"
    detail: str = ""
    retried: bool = False

    @property
    def observed_allowed(self) -> bool:
        return self.observed in ("allowed", "refused")

    @property
    def match(self) -> bool:
        return self.observed != "error" and self.observed_allowed == self.predicted.allowed

    def as_dict(self) -> dict:
        c = self.cell
        return {
            "source": c.source.name, "source_kind": c.source.kind, "source_address": c.source.address,
            "destination": c.destination.name, "destination_kind": c.destination.kind,
            "destination_address": c.destination.address,
            "protocol": c.service.protocol, "port": c.service.port, "source_port": self.source_port,
            "predicted": "allowed" if self.predicted.allowed else "denied",
            "observed": self.observed, "match": self.match, "reason": self.predicted.reason,
            "detail": self.detail, "retried": self.retried,
        }


# --- planning (pure) ---------------------------------------------------------------------------


def endpoints(plan: LabPlan) -> list[Endpoint]:
    """NICs in file order, then external hosts, then the platform host."""
    out = [Endpoint(n.name, "nic", n.address, n.netns, n.vnet) for n in plan.nics]
    out += [Endpoint(h.name, h.kind, h.address, h.netns) for h in plan.hosts]
    return out


def mentioned_ports(policy: Policy) -> list[int]:
    """Destination ports of the TCP/UDP/any rules (user rules, not defaults): both ends of
    each range, sorted, at most MAX_MENTIONED_PORTS of them (the lowest)."""
    ports: set[int] = set()
    for nic in policy.nics.values():
        for lv in nic.inbound + nic.outbound:
            for rule in lv.rules:
                if rule.default or rule.destination_ports.any:
                    continue
                nums = rule.protocol.numbers
                if nums is not None and not nums & {6, 17}:
                    continue
                for lo, hi in rule.destination_ports.ranges:
                    ports.update({lo, hi})
    ports.discard(0)
    return sorted(ports)[:MAX_MENTIONED_PORTS]


def probe_ports(policy: Policy, extra: int = 2, has_hosts: bool = True) -> list[int]:
    """The ports to probe: those the rules mention, TCP 25 when the platform blocks outbound
    SMTP and there is an Internet host to send to, and ``extra`` ports no rule mentions."""
    ports = set(mentioned_ports(policy))
    if has_hosts and any(n.smtp_block is not None for n in policy.nics.values()):
        ports.add(25)
    added = 0
    for p in EXTRA_PORTS:
        if added >= extra:
            break
        if p not in ports:
            ports.add(p)
            added += 1
    return sorted(ports)


def services(ports: Iterable[int]) -> list[Service]:
    ports = sorted(set(ports))
    return ([Service("tcp", p) for p in ports] + [Service("udp", p) for p in ports]
            + [Service("icmp"), Service("gre")])


def plan_cells(eps: list[Endpoint], svcs: list[Service]) -> list[Cell]:
    """Every ordered pair of distinct endpoints with at least one NIC, times every service."""
    return [Cell(a, b, s) for a in eps for b in eps
            if a is not b and (a.is_nic or b.is_nic) for s in svcs]


def _describe(d: LevelDecision, where: str) -> str:
    if d.rule is None:
        return f"no NSG at the {d.kind.value if d.kind else 'platform'} level ({where})"
    owner = d.nsg or "platform"
    level = f"{d.kind.value}, " if d.kind is not None else ""
    return f"{owner} ({level}{where}): {d.rule.log_name}"


def _verdict_reason(v: Verdict, where: str) -> str:
    """A deny: the deciding rule. An allow: every rule that allowed it, level by level."""
    if not v.allowed:
        d = v.deciding
        return _describe(d, where) if d is not None else f"no NSG ({where})"
    ruled = [_describe(d, where) for d in v.path if d.rule is not None]
    return ", ".join(ruled) if ruled else f"no NSG ({where})"


def predict(policy: Policy, cell: Cell, source_port: int | None,
            isolated: Iterable[tuple[str, str]] = (),
            unrouted: Iterable[tuple[str, str, str]] = ()) -> Prediction:
    """Would Azure let this packet through? (see the module docstring)."""
    src, dst, svc = cell.source, cell.destination, cell.service
    if src.is_nic and dst.is_nic and src.vnet and dst.vnet:
        pairs = {(a.lower(), b.lower()) for a, b in isolated}
        if (src.vnet.lower(), dst.vnet.lower()) in pairs:
            return Prediction(False, f"no route: VNet {src.vnet} is not peered with {dst.vnet}")
    for nic_name, host_name, why in unrouted:
        if {nic_name.lower(), host_name.lower()} == {src.name.lower(), dst.name.lower()}:
            return Prediction(False, why)
    proto = PROTO_NUMBER[svc.protocol]
    sa, da = ipaddress.ip_address(src.address), ipaddress.ip_address(dst.address)
    allow_reasons = []
    if src.is_nic:
        v = evaluate(find_nic(policy, src.name),
                     Flow(Direction.OUTBOUND, proto, local=sa, remote=da,
                          local_port=source_port, remote_port=svc.port))
        where = f"outbound at {src.name}"
        if not v.allowed:
            return Prediction(False, "deny " + _verdict_reason(v, where))
        allow_reasons.append(_verdict_reason(v, where))
    if dst.is_nic:
        v = evaluate(find_nic(policy, dst.name),
                     Flow(Direction.INBOUND, proto, local=da, remote=sa,
                          local_port=svc.port, remote_port=source_port))
        where = f"inbound at {dst.name}"
        if not v.allowed:
            return Prediction(False, "deny " + _verdict_reason(v, where))
        allow_reasons.append(_verdict_reason(v, where))
    return Prediction(True, "allow " + "; ".join(allow_reasons))


# --- rendering (pure) ----------------------------------------------------------------------------


@dataclass
class Report:
    lab: str
    results: list[Result]
    services: list[Service]
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def mismatches(self) -> list[Result]:
        return [r for r in self.results if not r.match]

    def as_dict(self) -> dict:
        return {
            "lab": self.lab,
            "summary": {"cells": len(self.results), "mismatches": len(self.mismatches),
                        "allowed": sum(r.observed_allowed for r in self.results),
                        "denied": sum(not r.observed_allowed for r in self.results),
                        "services": [s.label for s in self.services],
                        "seconds": round(self.elapsed, 3)},
            "notes": self.notes,
            "cells": [r.as_dict() for r in self.results],
        }


def render(report: Report) -> str:
    """The matrix as text: one row per (source, destination), one column per service;
    cells ``allow``, ``deny[n]`` (n: the deciding rule in the legend) or ``MISMATCH[n]``."""
    legend: dict[str, int] = {}

    def ref(text: str) -> int:
        if text not in legend:
            legend[text] = len(legend) + 1
        return legend[text]

    rows: dict[tuple[str, str], dict[str, str]] = {}
    order: list[tuple[str, str]] = []
    for r in report.results:
        key = (r.cell.source.name, f"{r.cell.destination.name} {r.cell.destination.address}")
        if key not in rows:
            rows[key] = {}
            order.append(key)
        if not r.match:
            obs = r.observed + (f" ({r.detail})" if r.detail else "")
            predicted = "allowed" if r.predicted.allowed else "denied"
            txt = f"MISMATCH[{ref(f'MISMATCH predicted {predicted}, observed {obs} -- {r.predicted.reason}')}]"
        elif r.predicted.allowed:
            txt = "allow"
        else:
            reason = r.predicted.reason
            txt = f"deny[{ref(reason[len('deny '):] if reason.startswith('deny ') else reason)}]"
        rows[key][r.cell.service.label] = txt
    cols = [s.label for s in report.services]
    head = ["source", "destination"] + cols
    body = [[s, d] + [rows[(s, d)].get(c, "-") for c in cols] for s, d in order]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    prev_src = None
    for row in body:
        shown = list(row)
        if row[0] == prev_src:
            shown[0] = ""
        prev_src = row[0]
        lines.append("  ".join(v.ljust(w) for v, w in zip(shown, widths)).rstrip())
    if legend:
        lines.append("")
        for text, n in legend.items():
            lines.append(f"[{n}] {text}")
    n_mis = len(report.mismatches)
    lines.append("")
    lines.append(f"lab {report.lab}: {len(report.results)} probes with real packets, "
                 f"{sum(r.observed_allowed for r in report.results)} allowed, "
                 f"{sum(not r.observed_allowed for r in report.results)} denied, "
                 f"{n_mis} mismatch{'es' if n_mis != 1 else ''} with the prediction "
                 f"({report.elapsed:.1f} s)")
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


# --- packets ---------------------------------------------------------------------------------------


class Listeners:
    """TCP and UDP listeners on ``ports`` in each namespace, served by one thread: TCP
    connections are accepted and closed, UDP datagrams echoed back. A raw GRE socket in each
    namespace records the nonces of the GRE packets that arrive (GRE has no answer)."""

    def __init__(self, namespaces: Iterable[str], ports: Iterable[int]):
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.busy: dict[tuple[str, str, int], str] = {}  # (netns, proto, port) -> why
        self.gre_seen: set[bytes] = set()
        self.gre_arrived = threading.Condition()
        self._wake_r, self._wake_w = socket.socketpair()
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            for ns in sorted(set(namespaces)):
                g = host_netns.socket_in(ns, socket.AF_INET, socket.SOCK_RAW, PROTO_NUMBER["gre"])
                g.setblocking(False)
                self.socks.append(g)
                self.sel.register(g, selectors.EVENT_READ, "gre")
                for port in sorted(set(ports)):
                    for proto, kind in (("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)):
                        s = host_netns.socket_in(ns, socket.AF_INET, kind)
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        try:
                            s.bind(("0.0.0.0", port))
                        except OSError as e:
                            s.close()
                            self.busy[(ns, proto, port)] = e.strerror or str(e)
                            continue
                        if proto == "tcp":
                            s.listen(512)
                        s.setblocking(False)
                        self.socks.append(s)
                        self.sel.register(s, selectors.EVENT_READ, proto)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._serve, name="lab-listeners", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            for key, _ in self.sel.select():
                if key.data is None:
                    return
                s: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    if key.data == "tcp":
                        conn, _ = s.accept()
                        conn.close()
                    elif key.data == "gre":
                        data = s.recv(2048)
                        ihl = (data[0] & 0x0F) * 4
                        with self.gre_arrived:
                            self.gre_seen.add(data[ihl + len(GRE_HEADER):])
                            self.gre_arrived.notify_all()
                    else:
                        data, peer = s.recvfrom(2048)
                        s.sendto(data, peer)
                except OSError:
                    continue

    def close(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        t = getattr(self, "_thread", None)
        if t is not None:
            t.join(2)
        for s in self.socks:
            s.close()
        self._wake_r.close()
        self._wake_w.close()
        self.sel.close()

    def __enter__(self) -> "Listeners":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _probe_icmp(src: Endpoint, dst: Endpoint, timeout: float) -> tuple[str, int | None, str]:
    a = packets.icmp(src.address, dst.address, timeout=timeout, netns=src.netns)
    return a.verdict, a.sport, a.detail


def _probe_tcp(src: Endpoint, dst: Endpoint, port: int, timeout: float) -> tuple[str, int | None, str]:
    a = packets.tcp(src.address, dst.address, port, timeout=timeout, netns=src.netns)
    return a.verdict, a.sport, a.detail


def _probe_udp(src: Endpoint, dst: Endpoint, port: int, timeout: float) -> tuple[str, int | None, str]:
    a = packets.udp(src.address, dst.address, port, timeout=timeout, netns=src.netns)
    return a.verdict, a.sport, a.detail


def _probe_gre(src: Endpoint, dst: Endpoint, timeout: float,
               listeners: "Listeners") -> tuple[str, int | None, str]:
    """One GRE packet (IP protocol 47) with a nonce; allowed when the destination's raw GRE
    socket saw it."""
    nonce = b"nsg-lab-probe " + os.urandom(8).hex().encode()
    with host_netns.socket_in(src.netns, socket.AF_INET, socket.SOCK_RAW, PROTO_NUMBER["gre"]) as s:
        s.bind((src.address, 0))
        s.sendto(GRE_HEADER + nonce, (dst.address, 0))
    deadline = time.monotonic() + timeout
    with listeners.gre_arrived:
        while nonce not in listeners.gre_seen:
            left = deadline - time.monotonic()
            if left <= 0:
                return "denied", None, "the GRE packet did not arrive"
            listeners.gre_arrived.wait(left)
        listeners.gre_seen.discard(nonce)
    return "allowed", None, ""


def probe_one(cell: Cell, timeout: float, listeners: "Listeners | None" = None) -> tuple[str, int | None, str]:
    svc = cell.service
    if svc.protocol == "gre":
        if listeners is None:
            return "error", None, "GRE needs the lab's listeners"
        return _probe_gre(cell.source, cell.destination, timeout, listeners)
    if svc.protocol == "tcp":
        return _probe_tcp(cell.source, cell.destination, svc.port or 0, timeout)
    if svc.protocol == "udp":
        return _probe_udp(cell.source, cell.destination, svc.port or 0, timeout)
    return _probe_icmp(cell.source, cell.destination, timeout)


def run_probes(policy: Policy, plan: LabPlan, ports: list[int] | None = None, *,
               timeout: float = 0.5, retry_timeout: float = 1.5, workers: int = 48,
               only: Iterable[str] | None = None) -> Report:
    """Probe the whole matrix of ``plan`` with real packets and compare with ``policy``.
    ``only`` restricts the endpoints (by name) taking part."""
    t0 = time.monotonic()
    eps = endpoints(plan)
    if only is not None:
        wanted = {n.lower() for n in only}
        eps = [e for e in eps if e.name.lower() in wanted]
    if ports is None:
        ports = probe_ports(policy, has_hosts=any(h.kind == "external" for h in plan.hosts))
    svcs = services(ports)
    cells = plan_cells(eps, svcs)
    isolated = plan.isolation
    results: list[Result] = []
    notes: list[str] = []
    with Listeners({c.destination.netns for c in cells}, ports) as lst:
        for (ns, proto, port), why in sorted(lst.busy.items()):
            notes.append(f"{proto}/{port} already in use in {ns} ({why}): an existing listener answers")

        def work(cell: Cell) -> Result:
            obs, sport, detail = probe_one(cell, timeout, lst)
            if cell.service.protocol == "udp" and (cell.destination.netns, "udp", cell.service.port) in lst.busy:
                detail = (detail + "; " if detail else "") + "the lab's UDP echo could not listen here"
            pred = predict(policy, cell, sport, isolated, plan.unrouted)
            res = Result(cell, sport, pred, obs, detail)
            if pred.allowed and obs == "denied":
                obs2, sport2, detail2 = probe_one(cell, retry_timeout, lst)
                res = Result(cell, sport2, predict(policy, cell, sport2, isolated, plan.unrouted),
                             obs2, detail2, retried=True)
            return res

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(cells)))) as pool:
            results = list(pool.map(work, cells))
    return Report(lab=plan.lab, results=results, services=svcs, elapsed=time.monotonic() - t0,
                  notes=notes)


__all__ = [
    "Cell", "Endpoint", "Prediction", "Report", "Result", "Service", "endpoints",
    "mentioned_ports", "plan_cells", "predict", "probe_ports", "render", "run_probes", "services",
]
