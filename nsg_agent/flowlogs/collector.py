"""The flow-log collector: kernel feeds in, attributed flow tuples out to the writer.

* Denied: each NFLOG message (the ruleset's rate-limited ``log`` before a counted drop) is one
  ``D`` tuple. Its prefix is ``<I|O> <comment of the counted rule>``: the comment names NSG
  and rule (looked up in the commit's rule index for names the compiler shortened). The NIC
  is the one owning the destination address (inbound) or the source (outbound); in host
  mode, failing that, the one whose interface the packet came in on or went out of.
* Allowed: a conntrack NEW event whose ct mark has a rule id in a direction's slot is a ``B``
  tuple for that direction (two tuples when a lab connection passed two NICs). Every
  ``interval`` seconds a dump of the table writes ``C`` with the counts since the flow's
  previous tuple, and the DESTROY event writes ``E`` with the rest (conntrack accounting,
  ``net.netfilter.nf_conntrack_acct=1``, which the collector sets in the agent's namespace
  only). Ids map to rules through the commit's rule index (compiler/flowmark.py).

The handlers (:meth:`Collector.on_log`, :meth:`on_ct`, :meth:`on_dump`) are pure with respect
to the kernel and unit tested; :meth:`start` opens the sockets inside the namespace and runs
one reader thread per socket plus a ticker for the dumps.
"""

from __future__ import annotations

import errno
import ipaddress
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

from nsg_agent.compiler import flowmark
from nsg_agent.compiler.results import RuleIndex
from nsg_agent.flowlogs import netlink
from nsg_agent.flowlogs.format import NO_MAC, FlowEvent
from nsg_agent.flowlogs.writer import Writer

LETTER = {"Inbound": "I", "Outbound": "O"}
DEFAULT_INTERVAL = 300.0  # Azure's "C" interval (five minutes)
CONTEXT_TTL = 2.0
ENDED_KEPT = 4096  # ended conntrack ids remembered (a dump that overtakes their end is ignored)


@dataclass(frozen=True)
class NicInfo:
    name: str
    addresses: frozenset[str]
    mac: str = NO_MAC
    ifindexes: frozenset[int] = frozenset()


@dataclass(frozen=True)
class FlowContext:
    """What attribution needs: the enforced commit's rule index and the enforced NICs."""

    index: RuleIndex = field(default_factory=RuleIndex)  # the commit's
    nics: dict[str, NicInfo] = field(default_factory=dict)

    @cached_property
    def by_address(self) -> dict[str, NicInfo]:
        return {_norm(a): n for n in self.nics.values() for a in n.addresses}

    @cached_property
    def by_ifindex(self) -> dict[int, NicInfo]:
        return {i: n for n in self.nics.values() for i in n.ifindexes}

    @cached_property
    def by_comment(self) -> dict[str, tuple[str, str]]:
        out = {}
        for (_, comment), ref in self.index.items():
            out[comment] = (ref.nsg, ref.rule or comment)
        return out

    @cached_property
    def ids(self) -> dict[tuple[str, int], tuple[str, str]]:
        return flowmark.ids_to_rules(self.index)


def _norm(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


@dataclass
class _Flow:
    sides: list[tuple[str, NicInfo | None, str, str]]  # (direction letter, NIC, nsg, rule)
    orig: netlink.CtTuple
    reported: tuple[int, int, int, int] = (0, 0, 0, 0)


class Collector:
    def __init__(self, writer: Writer, context: Callable[[], FlowContext | None], *,
                 netns: str | None = None, interval: float = DEFAULT_INTERVAL, group: int = flowmark.NFLOG_GROUP,
                 clock: Callable[[], float] = time.time, log: Any = None):
        self.writer = writer
        self._context_fn = context
        self.netns = netns
        self.interval = interval
        self.group = group
        self.clock = clock
        self.log = log
        self.flows: dict[int, _Flow] = {}
        self._ended: dict[int, None] = {}  # conntrack ids whose E tuple is written (insertion order)
        self.overruns = 0  # ENOBUFS: the kernel dropped messages for us (never packets)
        self.unattributed = 0
        self._ctx: FlowContext | None = None
        self._ctx_at = -1e9
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[Any] = []
        self.runner: Any = None

    # context ------------------------------------------------------------------------------
    def context(self) -> FlowContext | None:
        now = time.monotonic()
        if self._ctx is None or now - self._ctx_at > CONTEXT_TTL:
            try:
                ctx = self._context_fn()
            except Exception as e:  # noqa: BLE001 - keep the last context on a read error
                self._warn("flowlog.context_failed", error=str(e))
                ctx = self._ctx
            self._ctx, self._ctx_at = ctx, now
        return self._ctx

    def _warn(self, event: str, **kw: Any) -> None:
        if self.log is not None:
            self.log.warning(event, **kw)

    # handlers -----------------------------------------------------------------------------
    def on_log(self, msg: netlink.LogMessage, now: float | None = None) -> FlowEvent | None:
        parsed = flowmark.parse_prefix(msg.prefix)
        pkt = msg.packet
        if parsed is None or pkt is None:
            return None
        direction, comment = parsed
        ctx = self.context() or FlowContext()
        nsg, rule = ctx.by_comment.get(comment) or flowmark.split_comment(comment)
        nic = ctx.by_address.get(pkt.dst if direction == "Inbound" else pkt.src)
        if nic is None:
            dev = msg.indev if direction == "Inbound" else msg.outdev
            nic = ctx.by_ifindex.get(dev) if dev is not None else None
        when = msg.time if msg.time else (now if now is not None else self.clock())
        event = FlowEvent(int(when * 1000), nic.name if nic else "", nsg, rule, pkt.src, pkt.dst, pkt.sport,
                          pkt.dport, pkt.protocol, LETTER[direction], "D", mac=nic.mac if nic else NO_MAC)
        self.writer.submit(event)
        return event

    def _sides(self, entry: netlink.CtEntry, ctx: FlowContext) -> list[tuple[str, NicInfo | None, str, str]]:
        sides = []
        for direction, rule_id in sorted(flowmark.decode_mark(entry.mark).items()):
            named = ctx.ids.get((direction, rule_id))
            if named is None:
                self.unattributed += 1
                named = ("", "Unattributed")
            assert entry.orig is not None
            nic = ctx.by_address.get(_norm(entry.orig.dst if direction == "Inbound" else entry.orig.src))
            sides.append((LETTER[direction], nic, named[0], named[1]))
        return sides

    def _emit(self, flow: _Flow, state: str, counts: tuple[int, int, int, int], now: float) -> list[FlowEvent]:
        out = []
        o = flow.orig
        for letter, nic, nsg, rule in flow.sides:
            e = FlowEvent(int(now * 1000), nic.name if nic else "", nsg, rule, o.src, o.dst, o.sport, o.dport,
                          o.protocol, letter, state, *counts, mac=nic.mac if nic else NO_MAC)
            self.writer.submit(e)
            out.append(e)
        return out

    def on_ct(self, entry: netlink.CtEntry, now: float | None = None) -> list[FlowEvent]:
        now = self.clock() if now is None else now
        if entry.orig is None or entry.id is None:
            return []
        totals = (entry.packets_orig, entry.bytes_orig, entry.packets_reply, entry.bytes_reply)
        with self._lock:
            flow = self.flows.get(entry.id)
            if entry.kind == "new":
                self._ended.pop(entry.id, None)  # an id the kernel gives again: a new flow
                if flow is not None or not flowmark.decode_mark(entry.mark):
                    return []
                ctx = self.context() or FlowContext()
                flow = self.flows[entry.id] = _Flow(self._sides(entry, ctx), entry.orig)
                return self._emit(flow, "B", (0, 0, 0, 0), now)
            if entry.kind == "destroy":
                self._ended_now(entry.id)
                if flow is None:
                    if not flowmark.decode_mark(entry.mark):
                        return []
                    flow = _Flow(self._sides(entry, self.context() or FlowContext()), entry.orig)
                else:
                    del self.flows[entry.id]
                return self._emit(flow, "E", _minus(totals, flow.reported), now)
            # a dump entry: continuing counts
            if flow is None:
                if not flowmark.decode_mark(entry.mark) or entry.id in self._ended:
                    # a flow whose end was already written (its DESTROY event overtook the
                    # dump that still listed it): counting it again would count it twice
                    return []
                flow = self.flows[entry.id] = _Flow(self._sides(entry, self.context() or FlowContext()),
                                                    entry.orig)
            delta = _minus(totals, flow.reported)
            if not any(delta):
                return []
            flow.reported = totals
            return self._emit(flow, "C", delta, now)

    def _ended_now(self, ct_id: int) -> None:
        """Remember that ``ct_id``'s E tuple is written (bounded: the most recent ones)."""
        self._ended[ct_id] = None
        while len(self._ended) > ENDED_KEPT:
            del self._ended[next(iter(self._ended))]

    def on_dump(self, entries: list[netlink.CtEntry], now: float | None = None) -> list[FlowEvent]:
        """C tuples for live flows; flows gone from the table without a DESTROY event (lost
        in an overrun) end with what was last counted."""
        now = self.clock() if now is None else now
        out: list[FlowEvent] = []
        seen = set()
        for entry in entries:
            if entry.id is not None:
                seen.add(entry.id)
            out += self.on_ct(entry, now)
        with self._lock:
            for ct_id in [i for i in self.flows if i not in seen]:
                self._ended_now(ct_id)
                out += self._emit(self.flows.pop(ct_id), "E", (0, 0, 0, 0), now)
        return out

    def stats(self) -> dict:
        s = self.writer.stats()
        s["dropped"]["kernel"] = self.overruns
        s["flows"] = len(self.flows)
        s["unattributed"] = self.unattributed
        return s

    # kernel I/O ---------------------------------------------------------------------------
    def start(self) -> "Collector":
        from nsg_agent.host.netns import NetnsRunner

        self.runner = NetnsRunner(self.netns, thread_name=f"flowlog-{self.netns or 'host'}")
        try:
            self.runner.call(netlink.set_sysctl, "net.netfilter.nf_conntrack_acct", "1")
            log_sock = self.runner.call(netlink.open_nflog, self.group)
            self._sockets.append(log_sock)
            ct_sock = self.runner.call(netlink.open_ct_events)
            self._sockets.append(ct_sock)
        except BaseException:
            self.close()
            raise
        for target, args, name in ((self._read, (log_sock, self._on_log_bytes), "flowlog-nflog"),
                                   (self._read, (ct_sock, self._on_ct_bytes), "flowlog-conntrack"),
                                   (self._tick, (), "flowlog-ticker")):
            t = threading.Thread(target=target, args=args, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5.0)
        for s in self._sockets:
            s.close()
        self._sockets.clear()
        if self.runner is not None:
            self.runner.close()

    def _on_log_bytes(self, message: bytes) -> None:
        msg = netlink.parse_log(message)
        if msg is not None:
            self.on_log(msg)

    def _on_ct_bytes(self, message: bytes) -> None:
        entry = netlink.parse_ct(message)
        if entry is not None:
            self.on_ct(entry)

    def _read(self, sock: Any, handle: Callable[[bytes], None]) -> None:
        sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                if self._stop.is_set():
                    return
                self._warn("flowlog.read_failed", error=str(e))
                time.sleep(1.0)
                continue
            for _, _, message in netlink.split(data):
                try:
                    handle(message)
                except Exception as e:  # noqa: BLE001 - one bad message must not stop the reader
                    self._warn("flowlog.message_failed", error=str(e))

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.dump_now()

    def dump_now(self) -> list[FlowEvent]:
        try:
            entries = self.runner.call(netlink.dump_conntrack, timeout=60.0)
        except Exception as e:  # noqa: BLE001
            self._warn("flowlog.dump_failed", error=str(e))
            return []
        return self.on_dump(entries)


def _minus(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return tuple(max(0, x - y) for x, y in zip(a, b))  # type: ignore[return-value]
