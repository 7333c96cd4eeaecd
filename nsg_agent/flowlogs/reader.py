"""Reading flow-log directories back: ``nsg-agent flows`` (a table, or JSON lines)."""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from nsg_agent.flowlogs.format import Tuple, tuples_of
from nsg_agent.flowlogs.writer import log_files, read_acls

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 47: "gre", 4: "ipip", 50: "esp", 51: "ah", 132: "sctp"}
STATE_WORDS = {"B": "begin", "C": "continue", "E": "end", "D": "denied"}


@dataclass(frozen=True)
class Filter:
    nic: str | None = None
    denied: bool = False
    since_ms: int | None = None

    def keep(self, t: Tuple) -> bool:
        if self.nic and t.nic.lower() != self.nic.lower():
            return False
        if self.denied and t.state != "D":
            return False
        return self.since_ms is None or t.time_ms >= self.since_ms


def _hour_of(path: Path) -> float | None:
    """The epoch second an hour file starts at (from its y=/m=/d=/h= path)."""
    try:
        y, mo, d, h = (int(p.split("=", 1)[1]) for p in path.parts[-7:-3])
    except (ValueError, IndexError):
        return None
    return calendar.timegm((y, mo, d, h, 0, 0))


def read_file(path: Path) -> list[Tuple]:
    try:
        return tuples_of(json.loads(path.read_bytes()))
    except (OSError, ValueError):
        return []  # removed by the disk bound meanwhile, or not ours


def read(directory: str | Path, flt: Filter = Filter()) -> list[Tuple]:
    """Every tuple in the directory that passes the filter, in time order."""
    out = []
    for path in log_files(Path(directory)):
        start = _hour_of(path)
        if flt.since_ms is not None and start is not None and (start + 3600 + 60) * 1000 < flt.since_ms:
            continue  # the whole hour is older (a minute's slack for records flushed late)
        out += [t for t in read_file(path) if flt.keep(t)]
    return sorted(out, key=lambda t: (t.time_ms, t.nic, t.direction))


def read_from(path: Path, offset: int) -> tuple[list[Tuple], int]:
    """The tuples of the records appended since ``offset`` and the new offset. The writer puts
    each record on a line of its own (``{"records":[`` / record / ``,record`` ... / ``]}``) and
    only ever rewrites the final ``]}``, so everything up to the last newline is final."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    parts = data.split(b"\n")
    out: list[Tuple] = []
    for line in parts[:-1]:
        line = line.lstrip(b",")
        if line.startswith(b'{"time"'):
            try:
                out += tuples_of({"records": [json.loads(line)]})
            except ValueError:
                pass
    return out, offset + len(data) - len(parts[-1])


def follow(directory: str | Path, flt: Filter = Filter(), poll: float = 1.0,
           stop_after: float | None = None) -> Iterator[Tuple]:
    """Tuples as they are written, from the start of the files present (each file is read
    incrementally: only what was appended since the last look)."""
    offsets: dict[Path, int] = {}
    started = time.monotonic()
    while True:
        batch = []
        files = log_files(Path(directory))
        for path in files:
            tuples, offsets[path] = read_from(path, offsets.get(path, 0))
            batch += tuples
        for gone in set(offsets) - set(files):  # removed by the disk bound
            del offsets[gone]
        for t in sorted(batch, key=lambda t: t.time_ms):
            if flt.keep(t):
                yield t
        if stop_after is not None and time.monotonic() - started > stop_after:
            return
        time.sleep(poll)


def _endpoint(ip: str, port: int, proto: int) -> str:
    if proto not in (6, 17, 132, 136):
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def as_dict(t: Tuple, acls: dict[str, str]) -> dict:
    return {"time": t.time_ms, "nic": t.nic, "direction": "Inbound" if t.direction == "I" else "Outbound",
            "source": t.src, "sourcePort": t.sport, "destination": t.dst, "destinationPort": t.dport,
            "protocol": PROTOCOLS.get(t.protocol, str(t.protocol)), "state": t.state,
            "nsg": acls.get(t.acl, t.acl), "rule": t.rule, "packetsS2D": t.packets_s2d, "bytesS2D": t.bytes_s2d,
            "packetsD2S": t.packets_d2s, "bytesD2S": t.bytes_d2s, "macAddress": t.mac}


HEADER = ("TIME (UTC)", "NIC", "DIR", "SOURCE -> DESTINATION", "PROTO", "STATE", "RULE", "PKTS >/<", "BYTES >/<")


def row(t: Tuple, acls: dict[str, str]) -> tuple[str, ...]:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t.time_ms / 1000)) + f".{t.time_ms % 1000:03d}"
    nsg = acls.get(t.acl, t.acl[:8])
    counts = t.state in ("C", "E")
    return (when, t.nic or "-", "in" if t.direction == "I" else "out",
            f"{_endpoint(t.src, t.sport, t.protocol)} -> {_endpoint(t.dst, t.dport, t.protocol)}",
            PROTOCOLS.get(t.protocol, str(t.protocol)), STATE_WORDS[t.state],
            f"{nsg}: {t.rule}" if nsg and nsg != "platform" else t.rule,
            f"{t.packets_s2d}/{t.packets_d2s}" if counts else "-",
            f"{t.bytes_s2d}/{t.bytes_d2s}" if counts else "-")


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [HEADER, *rows]]
    return "\n".join(lines)


def acls_of(directory: str | Path) -> dict[str, str]:
    return read_acls(directory)
