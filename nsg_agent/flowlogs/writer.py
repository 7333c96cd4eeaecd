"""Flow-log files: one per NIC and hour, Azure's layout, bounded on disk, never blocking.

Layout (Azure's blob path without the container and resource-ID prefix, since one directory
holds one agent's logs):

    DIR/y=2026/m=12/d=01/h=11/m=00/macAddress=00224871C205/PT1H.json
    DIR/acls.json        aclID -> NSG name (the records carry name-based UUIDs, as Azure's GUIDs)

Each PT1H.json is always a complete JSON document ``{"records":[...]}``: a record is appended
by overwriting the closing ``]}`` (as Azure appends blocks to the hour's blob), so a reader
never sees half a file.

Producers (the NFLOG and conntrack readers) call :meth:`Writer.submit`, which never blocks:
events go to a bounded queue, and when it is full the event is dropped and counted
(``dropped["queue"]``). A thread takes events off the queue and every ``flush_interval``
seconds writes one record per NIC. Before each write the directory's total size is kept
under ``max_bytes`` by deleting the oldest hour files first; if the record still does not fit
(the current hour alone fills the bound) it is dropped and counted (``dropped["disk"]``).
Write errors (a full disk) are counted too (``dropped["error"]``); nothing propagates into the
dataplane or the daemon.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

from nsg_agent.flowlogs.format import FlowEvent, Identity, acl_id, build_records, normalize_mac

FILE_NAME = "PT1H.json"
ACLS_FILE = "acls.json"
DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_QUEUE = 65536
DEFAULT_FLUSH = 5.0
_OPEN, _CLOSE = b'{"records":[\n', b"\n]}"


def hour_dir(root: Path, seconds: float, mac: str) -> Path:
    t = time.gmtime(seconds)
    return (root / f"y={t.tm_year:04d}" / f"m={t.tm_mon:02d}" / f"d={t.tm_mday:02d}" / f"h={t.tm_hour:02d}"
            / "m=00" / f"macAddress={normalize_mac(mac)}")


def log_files(root: Path) -> list[Path]:
    """Every PT1H.json under ``root``, oldest hour first (the path sorts by time)."""
    return sorted(root.glob(f"y=*/m=*/d=*/h=*/m=00/macAddress=*/{FILE_NAME}"),
                  key=lambda p: (p.parts[-7:-2], p.parts[-2]))


def append_record(path: Path, record: dict) -> int:
    """Append one record to an hour file (created if missing); the bytes the file grew by."""
    data = json.dumps(record, separators=(",", ":")).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "r+b") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(size - len(_CLOSE))
            if f.read(len(_CLOSE)) != _CLOSE:
                raise ValueError(f"{path} does not end a records array")
            f.seek(size - len(_CLOSE))
            f.write(b"\n," + data + _CLOSE)
            return len(data) + 2
    except FileNotFoundError:
        with open(path, "xb") as f:
            f.write(_OPEN + data + _CLOSE)
        return len(_OPEN) + len(data) + len(_CLOSE)


class Writer:
    def __init__(self, directory: str | os.PathLike, identity: Identity, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 queue_size: int = DEFAULT_QUEUE, flush_interval: float = DEFAULT_FLUSH,
                 clock: Callable[[], float] = time.time):
        self.root = Path(directory)
        self.identity = identity
        self.max_bytes = max_bytes
        self.flush_interval = flush_interval
        self.clock = clock
        self.queue: queue.Queue[FlowEvent] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self.written: dict[str, int] = {s: 0 for s in ("B", "C", "E", "D")}
        self.dropped: dict[str, int] = {"queue": 0, "disk": 0, "error": 0}
        self.records = 0
        self._acls: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        self._acls = self._read_acls()

    # producers ---------------------------------------------------------------------------
    def submit(self, event: FlowEvent) -> bool:
        try:
            self.queue.put_nowait(event)
            return True
        except queue.Full:
            with self._lock:
                self.dropped["queue"] += 1
            return False

    def stats(self) -> dict:
        with self._lock:
            return {"written": dict(self.written), "dropped": dict(self.dropped), "records": self.records,
                    "queued": self.queue.qsize()}

    # the writing thread -----------------------------------------------------------------
    def start(self) -> "Writer":
        self._thread = threading.Thread(target=self._run, name="flowlog-writer", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()  # what is still queued

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self.flush()

    def drain(self) -> list[FlowEvent]:
        events = []
        while True:
            try:
                events.append(self.queue.get_nowait())
            except queue.Empty:
                return events

    def flush(self) -> int:
        """Write what is queued (one record per NIC); the tuples written."""
        events = self.drain()
        if not events:
            return 0
        now = self.clock()
        written = 0
        by_mac: dict[str, list[FlowEvent]] = {}
        for e in events:
            by_mac.setdefault(normalize_mac(e.mac), []).append(e)
        for mac, evs in sorted(by_mac.items()):
            for record in build_records(evs, self.identity, now):
                count = sum(len(g["flowTuples"]) for f in record["flowRecords"]["flows"] for g in f["flowGroups"])
                try:
                    self._note_acls(evs)
                    if self._write(hour_dir(self.root, now, mac) / FILE_NAME, record):
                        with self._lock:
                            self.records += 1
                            for f in record["flowRecords"]["flows"]:
                                for g in f["flowGroups"]:
                                    for text in g["flowTuples"]:
                                        state = text.split(",")[7]
                                        self.written[state] = self.written.get(state, 0) + 1
                        written += count
                    else:
                        with self._lock:
                            self.dropped["disk"] += count
                except (OSError, ValueError):
                    with self._lock:
                        self.dropped["error"] += count
        return written

    # disk bound -------------------------------------------------------------------------
    def usage(self) -> int:
        return sum(p.stat().st_size for p in log_files(self.root) if p.exists())

    def _write(self, path: Path, record: dict) -> bool:
        need = len(json.dumps(record, separators=(",", ":"))) + len(_OPEN) + len(_CLOSE)
        files = log_files(self.root)
        total = sum(p.stat().st_size for p in files)
        for old in files:
            if total + need <= self.max_bytes:
                break
            if old == path:
                continue
            total -= old.stat().st_size
            old.unlink()
            _prune(old.parent, self.root)
        if total + need > self.max_bytes:
            return False
        append_record(path, record)
        return True

    # aclID -> NSG name ------------------------------------------------------------------
    def _read_acls(self) -> dict[str, str]:
        try:
            data = json.loads((self.root / ACLS_FILE).read_text())
            return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _note_acls(self, events: list[FlowEvent]) -> None:
        new = {acl_id(e.nsg): e.nsg or "platform" for e in events if acl_id(e.nsg) not in self._acls}
        if not new:
            return
        self._acls.update(new)
        tmp = self.root / f".{ACLS_FILE}.tmp"
        tmp.write_text(json.dumps(self._acls, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.root / ACLS_FILE)


def _prune(directory: Path, root: Path) -> None:
    """Remove empty directories from ``directory`` up to (not including) ``root``."""
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def read_acls(root: str | os.PathLike) -> dict[str, str]:
    try:
        data = json.loads((Path(root) / ACLS_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
