"""The fleet's store: etcd, through its v3 JSON gateway (the one module that talks to etcd).

- :class:`Etcd`: a small client on etcd3gw's transport (API-path discovery, the TLS session,
  error mapping, leases) with several endpoints tried in turn, user/password authentication
  (a token, renewed when etcd says it expired), and a watch reader of our own: etcd3gw's
  ``Watcher`` ignores a watch cancelled for compaction and the end of the stream (see
  docs/fleet.md), both of which an agent must act on.
- :func:`publish`: a validated state written as ONE transaction: the changed keys put, the
  vanished ones deleted, the marker ``state/published`` rewritten, all under a
  compare-and-swap on the marker's revision (``--expect-revision``).
- :class:`EtcdSource`: the ``DesiredSource`` of ``nsg-agent run --etcd URL --host NAME``: a
  read is one range request over ``state/`` (one etcd revision: never half a publish),
  validated exactly like a file, then cut down to this host's part (sources.fleetstate); a
  watch from the revision of that read marks the daemon on each change. When etcd cannot be
  reached at start, the state last read (persisted with its revision) is served instead.
- :class:`AgentReport`: what this agent enforces, under ``agents/<host>`` bound to a lease, so
  a dead host's key disappears ``ttl`` seconds after its last keep-alive.
"""

from __future__ import annotations

import base64
import dataclasses
import getpass
import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from nsg_agent.desired.memo import LoadMemo
from nsg_agent.errors import InvalidInput, LoadError, OperationFailed, Problem
from nsg_agent.logging import get_logger
from nsg_agent.sources import fleetstate as fs
from nsg_agent.sources.base import Mark, Snapshot, SourceUnavailable, Stop

CONNECT_TIMEOUT = 2.0
REQUEST_TIMEOUT = 5.0
MAX_BACKOFF = 10.0
CACHE_NAME = "etcd-last-good.json"


class EtcdUnavailable(SourceUnavailable):
    """No endpoint answered (connection refused, timeout)."""


class EtcdRequestFailed(OperationFailed):
    """etcd answered with an error (permission denied, request too large, ...)."""


class Compacted(Exception):
    def __init__(self, compact_revision: int):
        super().__init__(f"watch start revision compacted (etcd keeps history from {compact_revision})")
        self.compact_revision = compact_revision


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def _range_end(prefix: str) -> str:
    """etcd's range end for 'every key with this prefix': the prefix with its last byte + 1."""
    b = bytearray(prefix.encode())
    while b and b[-1] == 0xFF:
        b.pop()
    b[-1] += 1
    return _b64(bytes(b))


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...]  # http(s)://host:port
    prefix: str = fs.DEFAULT_PREFIX
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    timeout: float = REQUEST_TIMEOUT

    @classmethod
    def parse(cls, urls: str, prefix: str = fs.DEFAULT_PREFIX, **kw: Any) -> "EtcdConfig":
        eps = []
        for u in [u.strip() for u in urls.split(",") if u.strip()]:
            parts = urlsplit(u if "://" in u else f"http://{u}")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidInput(f"--etcd {u!r}: expected http(s)://HOST:PORT[,...]")
            eps.append(f"{parts.scheme}://{parts.netloc}")
        if not eps:
            raise InvalidInput("--etcd: no endpoint given")
        return cls(tuple(eps), fs.normalize_prefix(prefix), **kw)

    def label(self) -> str:
        return f"{','.join(self.endpoints)}{self.prefix}"


class Etcd:
    """See the module docstring. Thread-safe for unary calls; each watch has its own stream."""

    def __init__(self, config: EtcdConfig):
        import etcd3gw  # imported here: only the fleet commands need it

        self.config = config
        self._lock = threading.Lock()
        self._clients = []
        for ep in config.endpoints:
            parts = urlsplit(ep)
            c = etcd3gw.Etcd3Client(host=parts.hostname, port=parts.port or (2379 if parts.scheme == "http" else 2379),
                                    protocol=parts.scheme, ca_cert=config.ca, cert_key=config.key,
                                    cert_cert=config.cert, timeout=(CONNECT_TIMEOUT, config.timeout))
            if config.ca:
                # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's CA: with
                # --etcd-ca, that CA alone is trusted (environment proxies are ignored too)
                c.session.trust_env = False
            self._clients.append(c)
        self._current = 0
        self._token: str | None = None

    # transport ---------------------------------------------------------------------------
    def _errors(self):
        from etcd3gw import exceptions

        return exceptions

    def _client(self):
        return self._clients[self._current]

    def _authenticate(self, client) -> None:
        if not self.config.user:
            return
        for c in self._clients:
            c.session.headers.pop("Authorization", None)
        resp = client.post(client.get_url("/auth/authenticate"),
                           json={"name": self.config.user, "password": self.config.password or ""})
        self._token = resp.get("token")
        for c in self._clients:
            c.session.headers["Authorization"] = self._token or ""

    def call(self, path: str, body: dict) -> dict:
        """POST one gateway request, trying each endpoint; raises EtcdUnavailable when none
        answers, EtcdRequestFailed when etcd refuses."""
        ex = self._errors()
        last: Exception | None = None
        n = len(self._clients)
        for i in range(n):
            idx = (self._current + i) % n
            client = self._clients[idx]
            try:
                if self.config.user and self._token is None:
                    self._authenticate(client)
                try:
                    out = client.post(client.get_url(path), json=body)
                except ex.Etcd3Exception as e:
                    if self.config.user and "token" in str(getattr(e, "detail_text", e)).lower():
                        self._authenticate(client)  # expired or revoked: once more with a new one
                        out = client.post(client.get_url(path), json=body)
                    else:
                        raise
                self._current = idx
                return out
            except (ex.ConnectionFailedError, ex.ConnectionTimeoutError) as e:
                last = e
                continue
            except ex.Etcd3Exception as e:
                text = getattr(e, "detail_text", None) or str(e)
                try:
                    text = json.loads(text).get("message", text)
                except (ValueError, AttributeError):
                    pass
                raise EtcdRequestFailed(f"etcd {client.base_url}: {text}") from None
            except OSError as e:
                last = e
                continue
        raise EtcdUnavailable(f"etcd unreachable ({', '.join(self.config.endpoints)}): {_short(last)}")

    # key-value ---------------------------------------------------------------------------
    def range(self, prefix: str, *, revision: int | None = None, keys_only: bool = False
              ) -> tuple[int, dict[str, tuple[bytes, int]]]:
        """Every key under ``prefix`` at one revision: (header revision, key -> (value,
        mod_revision)), keys relative to ``prefix``."""
        body: dict[str, Any] = {"key": _b64(prefix), "range_end": _range_end(prefix)}
        if revision:
            body["revision"] = revision
        if keys_only:
            body["keys_only"] = True
        resp = self.call("/kv/range", body)
        out = {}
        for kv in resp.get("kvs", []):
            key = _unb64(kv["key"]).decode()
            out[key[len(prefix):]] = (_unb64(kv.get("value")), int(kv.get("mod_revision", 0)))
        return int(resp["header"]["revision"]), out

    def get(self, key: str) -> tuple[int, tuple[bytes, int] | None]:
        resp = self.call("/kv/range", {"key": _b64(key)})
        kvs = resp.get("kvs", [])
        val = (_unb64(kvs[0].get("value")), int(kvs[0].get("mod_revision", 0))) if kvs else None
        return int(resp["header"]["revision"]), val

    def txn(self, compare: list[dict], success: list[dict], failure: list[dict] | None = None) -> dict:
        return self.call("/kv/txn", {"compare": compare, "success": success, "failure": failure or []})

    def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        return int(self.call("/kv/put", body)["header"]["revision"])

    def delete_prefix(self, prefix: str) -> int:
        return int(self.call("/kv/deleterange", {"key": _b64(prefix), "range_end": _range_end(prefix)})
                   .get("deleted", 0))

    def compact(self, revision: int) -> None:
        self.call("/kv/compaction", {"revision": revision, "physical": True})

    def lease_grant(self, ttl: int) -> int:
        return int(self.call("/lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def lease_keepalive(self, lease: int) -> int:
        """The lease's remaining TTL after the keep-alive (0: expired, gone)."""
        resp = self.call("/lease/keepalive", {"ID": lease})
        return int(resp.get("result", resp).get("TTL", 0))

    def lease_revoke(self, lease: int) -> None:
        self.call("/lease/revoke", {"ID": lease})

    # watch -------------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int, register: Callable[[Any], None] | None = None
              ) -> Iterator[dict]:
        """Watch responses for every key under ``prefix`` from ``start_revision``: dicts with
        ``revision`` (the header's) and ``events`` [(type, key relative, value)]. Raises
        :class:`Compacted` when etcd no longer has that revision, EtcdUnavailable when the
        stream cannot be opened or ends. ``register(response)`` receives the HTTP response so
        another thread can close it (that ends the iteration)."""
        ex = self._errors()
        body = {"create_request": {"key": _b64(prefix), "range_end": _range_end(prefix),
                                   "start_revision": start_revision, "progress_notify": True}}
        n = len(self._clients)
        resp = None
        last: Exception | None = None
        for i in range(n):
            idx = (self._current + i) % n
            client = self._clients[idx]
            try:
                if self.config.user and self._token is None:
                    self._authenticate(client)
                resp = client.session.post(client.get_url("/watch"), json=body, stream=True,
                                           timeout=(CONNECT_TIMEOUT, None))
                if resp.status_code != 200:
                    if "token" in resp.text:
                        self._token = None  # expired: the next attempt authenticates again
                    raise EtcdRequestFailed(f"etcd {client.base_url}: watch refused: {resp.text[:200]}")
                self._current = idx
                break
            except (OSError, ex.Etcd3Exception, _requests_errors()) as e:
                last, resp = e, None
        if resp is None:
            raise EtcdUnavailable(f"etcd unreachable ({', '.join(self.config.endpoints)}): {_short(last)}")
        if register is not None:
            register(resp)
        buf = b""
        try:
            for chunk in resp.iter_content(chunk_size=None):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "error" in msg:
                        text = str(msg["error"].get("message", msg["error"]))
                        if "token" in text:
                            self._token = None  # expired: the next attempt authenticates again
                        raise EtcdRequestFailed(f"etcd watch: {text}")
                    result = msg.get("result", {})
                    if result.get("canceled"):
                        if int(result.get("compact_revision", 0) or 0):
                            raise Compacted(int(result["compact_revision"]))
                        raise EtcdUnavailable(f"etcd cancelled the watch: {result.get('cancel_reason', '')}")
                    header_rev = int(result.get("header", {}).get("revision", 0) or 0)
                    events = []
                    for e in result.get("events", []):
                        kv = e.get("kv", {})
                        key = _unb64(kv.get("key")).decode()[len(prefix):]
                        events.append((e.get("type", "PUT"), key, _unb64(kv.get("value")),
                                       int(kv.get("mod_revision", 0) or 0)))
                    yield {"revision": header_rev, "events": events, "created": bool(result.get("created"))}
        except (OSError, _requests_errors(), ValueError) as e:
            raise EtcdUnavailable(f"etcd watch stream ended: {_short(e)}") from None
        finally:
            resp.close()
        raise EtcdUnavailable("etcd watch stream ended")

    def close(self) -> None:
        for c in self._clients:
            try:
                c.session.close()
            except Exception:  # noqa: BLE001
                pass


def shutdown_stream(resp: Any) -> None:
    """End a streaming response another thread is reading: shut its socket down (closing the
    response from here would wait for the reader's lock)."""
    if resp is None:
        return
    try:
        sock = resp.raw._fp.fp.raw._sock  # http.client's socket under urllib3
    except AttributeError:
        sock = getattr(getattr(resp.raw, "_connection", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _requests_errors():
    import requests

    return requests.exceptions.RequestException


def _short(e: BaseException | None) -> str:
    if e is None:
        return "no endpoint"
    text = f"{e} {getattr(e, 'detail_text', '') or ''}".strip() or type(e).__name__
    import re

    tls = re.search(r"certificate verify failed: ([^'\"()]+)", text) or re.search(r"\[SSL: ([A-Z_]+)\]", text)
    if tls:
        return f"TLS: {tls.group(1).strip()}"
    for marker in ("Connection refused", "timed out", "Name or service not known", "Connection reset"):
        if marker in text:
            return marker.lower()
    return text[:200]


# --- publish -----------------------------------------------------------------------------------


@dataclass
class PublishResult:
    revision: int | None  # the state's new revision (None: dry run or nothing to do)
    previous: int  # the marker's revision before (0: nothing published yet)
    diff: fs.KeyDiff
    old: dict[str, bytes]
    succeeded: bool = True
    conflict_revision: int | None = None  # with succeeded False: who won
    bytes_written: int = 0
    keys_total: int = 0


def read_state(etcd: Etcd) -> tuple[int, dict[str, bytes], int]:
    """(header revision, relative keys -> values, the marker's mod_revision or 0)."""
    header, kvs = etcd.range(etcd.config.prefix + fs.STATE)
    keys = {fs.STATE + k: v for k, (v, _) in kvs.items()}
    marker = kvs.get("published")
    return header, keys, marker[1] if marker else 0


def publish(etcd: Etcd, new: dict[str, bytes], *, expect_revision: int | None = None, dry_run: bool = False,
            sources: list[str] | None = None, force: bool = False) -> PublishResult:
    """Write ``new`` (relative state keys from fleetstate.encode) in one transaction. The
    compare is on the marker's mod_revision: ``expect_revision`` when given (0: nothing may
    be published yet), else the revision this call read (the diff is computed against it).
    ``force``: write every key even when unchanged (the marker is always rewritten)."""
    prefix = etcd.config.prefix
    _, old, current = read_state(etcd)
    d = fs.diff(old, new)
    if force:
        d = fs.KeyDiff(dict(new), d.delete, 0)
    result = PublishResult(None, current, d, old, keys_total=len(new))
    if expect_revision is not None and expect_revision != current:
        result.succeeded, result.conflict_revision = False, current
        return result
    if dry_run:
        return result
    marker = {"format": fs.FORMAT, "sha256": fs.state_digest(new), "keys": len(new), "at": time.time(),
              "by": f"{getpass.getuser()}@{socket.gethostname()}", "sources": sources or [],
              "changed": len(d.put), "deleted": len(d.delete)}
    marker_bytes = fs.canonical(marker)
    ops = [{"request_put": {"key": _b64(prefix + k), "value": _b64(v)}} for k, v in sorted(d.put.items())]
    ops += [{"request_delete_range": {"key": _b64(prefix + k)}} for k in d.delete]
    ops.append({"request_put": {"key": _b64(prefix + fs.PUBLISHED), "value": _b64(marker_bytes)}})
    expected = expect_revision if expect_revision is not None else current
    compare = [{"key": _b64(prefix + fs.PUBLISHED), "target": "MOD", "result": "EQUAL", "mod_revision": expected}]
    size = sum(len(v) for v in d.put.values()) + len(marker_bytes)
    if size * 4 // 3 > fs.ETCD_DEFAULT_MAX_REQUEST:
        get_logger().warning("publish.large", bytes=size,
                             hint="etcd refuses requests over --max-request-bytes (1.5 MiB by default)")
    try:
        resp = etcd.txn(compare, ops, [{"request_range": {"key": _b64(prefix + fs.PUBLISHED)}}])
    except EtcdRequestFailed as e:
        # A state is never written in parts: the transaction must fit etcd's limits.
        if "too many operations" in str(e):
            raise EtcdRequestFailed(
                f"{e}: this publish writes {len(ops)} keys in one transaction and etcd allows "
                f"--max-txn-ops (default 128); start etcd with --max-txn-ops {max(len(ops), 1024)} or more "
                "(docs/fleet.md: a first publish writes every key)") from None
        if "too large" in str(e):
            raise EtcdRequestFailed(
                f"{e}: this publish is {size * 4 // 3 + 200 * len(ops):,} bytes in one transaction and etcd "
                "accepts --max-request-bytes (default 1.5 MiB); raise it (docs/fleet.md)") from None
        raise
    revision = int(resp["header"]["revision"])
    if not resp.get("succeeded"):
        won = 0
        for r in resp.get("responses", []):
            kvs = r.get("response_range", {}).get("kvs", [])
            if kvs:
                won = int(kvs[0].get("mod_revision", 0))
        result.succeeded, result.conflict_revision = False, won
        return result
    result.revision = revision
    result.bytes_written = size
    return result


# --- fleet status --------------------------------------------------------------------------------


def fleet_status(etcd: Etcd, now: float | None = None, stale_after: float = 30.0) -> dict:
    """Every agent's report, compared with the published revision."""
    now = time.time() if now is None else now
    prefix = etcd.config.prefix
    header, keys, published = read_state(etcd)
    marker = json.loads(keys[fs.PUBLISHED]) if fs.PUBLISHED in keys else None
    owners: dict[str, list[str]] = {}
    for k, v in keys.items():
        if k.startswith(fs.STATE + "nics/"):
            try:
                nic = json.loads(v)
            except ValueError:
                continue
            owners.setdefault(nic.get("host") or "", []).append(nic.get("name"))
    _, reports = etcd.range(prefix + fs.AGENTS)
    hosts = []
    for name, (value, _) in sorted(reports.items()):
        try:
            r = json.loads(value)
        except ValueError:
            r = {"host": name, "state": "unreadable report"}
        enforced = r.get("revision")
        if r.get("state") == "failing" or (r.get("last_error") and enforced != published):
            verdict = "failing"
        elif r.get("state") == "degraded":
            verdict = "degraded"
        elif enforced != published:
            verdict = "stale"
        else:
            verdict = "current"
        age = now - r.get("applied_at", now) if r.get("applied_at") else None
        hosts.append({**r, "host": name, "verdict": verdict, "nics": sorted(owners.get(name, [])),
                      "behind": (published - enforced) if isinstance(enforced, int) and enforced < published else 0,
                      "applied_age_s": round(age, 1) if age is not None else None,
                      "report_age_s": round(now - r["updated_at"], 1) if r.get("updated_at") else None})
    reporting = {h["host"] for h in hosts}
    missing = sorted(h for h in owners if h and h not in reporting)
    return {"prefix": prefix, "endpoint": etcd.config.label(), "etcd_revision": header,
            "published": {"revision": published or None, **({k: marker.get(k) for k in ("at", "by", "keys", "sha256",
                                                                                     "sources")} if marker else {})},
            "hosts": hosts, "missing": missing,
            "unowned_nics": sorted(owners.get("", []))}


# --- the agent's side: the source ---------------------------------------------------------------


def _atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass
class Connection:
    """What the agent knows about etcd now (for the report, status and logs)."""

    state: str = "connecting"  # connected | unreachable | connecting
    since: float = field(default_factory=time.time)
    error: str | None = None
    watch_revision: int | None = None  # the next revision the watch expects

    def as_dict(self) -> dict:
        return {"state": self.state, "since": self.since, "error": self.error,
                "watch_revision": self.watch_revision}


class EtcdSource:
    """See the module docstring. ``cache_dir``: where the last good state (with its revision)
    and the service-tag blobs are kept (``run --etcd-cache``, one directory per namespace)."""

    def __init__(self, etcd: Etcd, host: str, cache_dir: str | os.PathLike, *,
                 load_options: dict[str, Any] | None = None, log: Any = None):
        self.etcd = etcd
        self.host = host
        self.cache_dir = Path(cache_dir)
        self.load_options = {k: v for k, v in (load_options or {}).items() if k in ("strict", "limits")}
        self.origin = f"etcd {etcd.config.label()} host {host}"
        self.log = log or get_logger(source="etcd", host=host)
        self.conn = Connection()
        self._lock = threading.RLock()
        self._last: Snapshot | None = None  # the last snapshot handed out
        self._last_full: tuple[str, bytes] | None = None  # (state digest, projected document)
        self.served_cache = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response = None
        # the key map (relative keys -> values) at revision _keys_rev, kept by the watch
        self._keys: dict[str, bytes] | None = None
        self._keys_rev = 0
        self._marker_rev = 0
        self._synced = False  # a watch stream is live: the map follows etcd
        self.full_reads = 0
        self._listeners: list[Callable[[Connection], None]] = []
        self.reads = 0
        self.validations = 0
        # what this source's loads remember for the next (parsed tag blobs, valid prefix lists)
        self.load_memo = LoadMemo()

    # helpers -------------------------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        return self.cache_dir / CACHE_NAME

    def on_connection(self, fn: Callable[[Connection], None]) -> None:
        self._listeners.append(fn)

    def _set_conn(self, state: str, error: str | None = None) -> None:
        with self._lock:
            changed = state != self.conn.state
            if changed:
                self.conn.state, self.conn.since = state, time.time()
            self.conn.error = error
        if changed:
            (self.log.warning if state == "unreachable" else self.log.info)(
                f"etcd.{state}", error=error, endpoints=list(self.etcd.config.endpoints))
            for fn in self._listeners:
                try:
                    fn(self.conn)
                except Exception:  # noqa: BLE001
                    pass

    def _tag_path(self, key: str, role: str, raw: bytes) -> str:
        d = self.cache_dir / "tags"
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = role == "internet" and not raw.lstrip().startswith((b"[", b"{"))
        p = d / f"{hashlib.sha256(raw).hexdigest()}.{'txt' if text else 'json'}"
        if not p.exists():
            _atomic_write(p, raw)
        return str(p)

    # the key map: list + watch ---------------------------------------------------------------
    def _full_read(self, *, list_for_watch: bool = False) -> tuple[dict[str, bytes], int]:
        """One range request over state/ (one etcd revision): (keys, the marker's
        mod_revision). ``list_for_watch``: the watch thread's list, which (re)starts the key
        map; a read by the daemon leaves the map alone, so that a watch that lost its stream
        resumes from the last revision it applied (or finds it compacted and lists again)."""
        header, kvs = self.etcd.range(self.etcd.config.prefix + fs.STATE)
        self.full_reads += 1
        keys = {fs.STATE + k: v for k, (v, _) in kvs.items()}
        marker = kvs.get("published")
        marker_rev = marker[1] if marker else 0
        with self._lock:
            if list_for_watch or self._keys is None:
                self._keys, self._keys_rev, self._marker_rev = dict(keys), header, marker_rev
        self.log.debug("etcd.read", full=True, revision=header, keys=len(keys),
                       bytes=sum(len(v) for v in keys.values()))
        return keys, marker_rev

    def _apply_events(self, events: list[tuple[str, str, bytes, int]]) -> bool:
        """A watch response's events (whole revisions: etcd never splits one) applied to the
        key map; False when there is no map to apply them to."""
        with self._lock:
            if self._keys is None:
                return False
            for kind, key, value, rev in events:
                if rev <= self._keys_rev:
                    continue  # replayed: the map already has it
                k = fs.STATE + key
                if kind == "DELETE":
                    self._keys.pop(k, None)
                else:
                    self._keys[k] = value
                    if k == fs.PUBLISHED:
                        self._marker_rev = rev
            self._keys_rev = max([self._keys_rev] + [e[3] for e in events])
            return True

    # DesiredSource ----------------------------------------------------------------------------
    def read(self) -> Snapshot:
        """The key map when the watch is live (kept equal to etcd by its events, no request),
        else one range request."""
        self.reads += 1
        with self._lock:
            local = dict(self._keys) if self._synced and self._keys is not None else None
            marker_rev = self._marker_rev
        if local is not None:
            self.served_cache = False
            return self._snapshot(local, marker_rev, fetched=time.time())
        try:
            keys, marker_rev = self._full_read()
        except EtcdUnavailable as e:
            self._set_conn("unreachable", str(e))
            with self._lock:
                if self._last is None:
                    cached = self._from_cache(str(e))
                    if cached is not None:
                        return cached
            raise
        except EtcdRequestFailed as e:
            self._set_conn("unreachable", str(e))
            raise SourceUnavailable(str(e)) from None
        self._set_conn("connected")
        self.served_cache = False
        return self._snapshot(keys, marker_rev, fetched=time.time())

    def _snapshot(self, keys: dict[str, bytes], revision: int, fetched: float, from_cache: str | None = None
                  ) -> Snapshot:
        label = f"etcd:{self.etcd.config.prefix}"
        if fs.PUBLISHED not in keys:
            raise LoadError([Problem(label, "", f"nothing published under {self.etcd.config.prefix} "
                                                "(nsg-agent publish FILE --etcd URL)")])
        try:
            marker = json.loads(keys[fs.PUBLISHED])
        except ValueError:
            raise LoadError([Problem(label + fs.PUBLISHED, "", "the marker is not JSON")]) from None
        digest = fs.state_digest(keys)
        if marker.get("sha256") != digest:
            raise LoadError([Problem(label, "", (
                f"the keys under {self.etcd.config.prefix}{fs.STATE} do not match the marker of revision "
                f"{revision} (written around 'nsg-agent publish'?): not applied"))])
        with self._lock:
            last = self._last
            if (last is not None and self._last_full is not None and self._last_full[0] == digest):
                snap = Snapshot(last.loaded, last.origin, last.inputs, revision, marker.get("at"))
                self._last = snap
                if from_cache is None:
                    self._persist(keys, revision, marker, fetched)
                return snap
        try:
            d = fs.document(keys, self._tag_path)
        except fs.StateFormatError as e:
            raise LoadError([Problem(label + e.key, "", e.message)]) from None
        projected, warnings = self._validate(d, label)
        part = fs.canonical(projected)
        inputs = {k: hashlib.sha256(v).hexdigest() for k, v in keys.items()}
        with self._lock:
            same = last is not None and self._last_full is not None and self._last_full[1] == part
        if same:
            # this host's part is byte-identical: the very same loaded state (nothing to do)
            loaded = last.loaded
        else:
            # the part of a valid state: loaded without --strict (the cut leaves ASGs without
            # members here, which the whole state had), with the whole state's warnings
            loaded = dataclasses.replace(self._load(part, f"etcd-{self.host}.json"), warnings=warnings)
        snap = Snapshot(loaded, self.origin, inputs, revision, marker.get("at"))
        with self._lock:
            self._last, self._last_full = snap, (digest, part)
        if from_cache is None:
            self._persist(keys, revision, marker, fetched)
        return snap

    def _load(self, raw: bytes, name: str):
        from nsg_agent.desired import loader

        return loader.load_bytes(raw, self.cache_dir / name, memo=self.load_memo,
                                 limits=self.load_options.get("limits", loader.DEFAULT_LIMITS))

    def _validate(self, d: fs.Document, label: str) -> tuple[dict, tuple[Problem, ...]]:
        """The whole state through the loader (exactly like a file; --strict as given), its
        problems and warnings named by key; then this host's part."""
        from nsg_agent.desired import loader

        self.validations += 1

        def by_key(p: Problem) -> Problem:
            where = fs.problem_key(p.path, d.origin)
            if where is not None:
                return Problem(f"{label}{where[0]}", where[1], p.message)
            return Problem(label if p.file.endswith("etcd-state.json") else p.file, p.path, p.message)

        try:
            full = loader.load_bytes(fs.canonical(d.doc), self.cache_dir / "etcd-state.json", memo=self.load_memo,
                                     **self.load_options)
        except LoadError as e:
            raise LoadError([by_key(p) for p in e.problems]) from None
        return fs.project(d.doc, self.host), tuple(by_key(w) for w in full.warnings)

    def _persist(self, keys: dict[str, bytes], revision: int, marker: dict, fetched: float) -> None:
        try:
            self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            data = {"format": fs.FORMAT, "revision": revision, "published_at": marker.get("at"),
                    "fetched_at": fetched, "prefix": self.etcd.config.prefix, "host": self.host,
                    "keys": {k: base64.b64encode(v).decode() for k, v in sorted(keys.items())}}
            _atomic_write(self.cache_path, json.dumps(data, sort_keys=True).encode())
            self._forget_old_tags(keys)
        except OSError as e:
            self.log.error("etcd.persist_failed", path=str(self.cache_path), error=str(e))

    def _forget_old_tags(self, keys: dict[str, bytes]) -> None:
        """Service-tag blobs no longer in the state are removed (each is megabytes)."""
        wanted = set()
        for k, v in keys.items():
            if k.startswith(fs.STATE + "servicetags/"):
                try:
                    wanted.add(json.loads(v).get("sha256"))
                except (ValueError, AttributeError):
                    return  # not sure what is in use: keep everything
        d = self.cache_dir / "tags"
        for p in d.glob("*") if d.is_dir() else ():
            if p.stem not in wanted and not p.name.startswith("."):
                p.unlink(missing_ok=True)

    def _from_cache(self, why: str) -> Snapshot | None:
        try:
            data = json.loads(self.cache_path.read_bytes())
        except (OSError, ValueError):
            return None
        if data.get("prefix") != self.etcd.config.prefix or data.get("host") != self.host:
            return None
        keys = {k: base64.b64decode(v) for k, v in data.get("keys", {}).items()}
        age = time.time() - float(data.get("fetched_at") or 0)
        notice = (f"{why}: enforcing the state persisted locally, revision {data.get('revision')} "
                  f"(read from etcd {age:.0f} s ago); retrying")
        self.log.warning("etcd.cached_state", revision=data.get("revision"), fetched_at=data.get("fetched_at"),
                         path=str(self.cache_path), message=notice)
        try:
            snap = self._snapshot(keys, int(data.get("revision") or 0), float(data.get("fetched_at") or 0), notice)
        except LoadError as e:
            self.log.error("etcd.cache_unusable", path=str(self.cache_path), error=str(e))
            return None
        self.served_cache = True
        return snap

    @property
    def last(self) -> Snapshot | None:
        return self._last

    def changed(self) -> list[str]:
        """Has a publish happened since the last snapshot (or is etcd back after the cached
        state was served)? With a live watch the key map answers; else one key is read."""
        last = self._last.revision if self._last is not None else None
        with self._lock:
            revision = self._marker_rev if self._synced and self._keys is not None else None
        if revision is None:
            try:
                _, val = self.etcd.get(self.etcd.config.prefix + fs.PUBLISHED)
            except (EtcdUnavailable, EtcdRequestFailed) as e:
                self._set_conn("unreachable", str(e))
                return []  # the watch marks the daemon when etcd is back
            self._set_conn("connected")
            revision = val[1] if val else 0
        if self.served_cache:
            return [f"etcd reachable again (serving the cached revision {last})"]
        if revision != last:
            return [f"etcd revision {revision} (enforcing {last})"]
        return []

    def watch(self, mark: Mark) -> Stop:
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch_main, args=(mark,), daemon=True, name="nsg-etcd-watch")
        self._thread.start()
        return self._stop_watch

    def _stop_watch(self) -> None:
        self._stop.set()
        self.interrupt()
        if self._thread is not None:
            self._thread.join(5)

    def interrupt(self) -> None:
        """Close the watch stream (another thread found etcd unreachable): it reconnects."""
        shutdown_stream(self._response)

    def _register(self, resp: Any) -> None:
        self._response = resp

    def _watch_main(self, mark: Mark) -> None:
        """List, then watch from the list's revision + 1; on a lost stream resume from the last
        revision applied (etcd replays what was missed), on compaction list again."""
        delay = 0.2
        prefix = self.etcd.config.prefix + fs.STATE
        while not self._stop.is_set():
            with self._lock:
                have = self._keys is not None
                start = self._keys_rev + 1
            if not have:
                try:
                    self._full_read(list_for_watch=True)
                    self._set_conn("connected")
                    mark("etcd:listed", True)
                    delay = 0.2
                    continue
                except (EtcdUnavailable, EtcdRequestFailed) as e:
                    self._set_conn("unreachable", str(e))
                    self._stop.wait(delay)
                    delay = min(MAX_BACKOFF, delay * 2)
                    continue
            try:
                self.conn.watch_revision = start
                for resp in self.etcd.watch(prefix, start, self._register):
                    if self._stop.is_set():
                        return
                    was = self.conn.state
                    if resp["created"]:
                        with self._lock:
                            self._synced = True
                    self._set_conn("connected")
                    delay = 0.2
                    if resp["created"] and was != "connected":
                        mark("etcd:reconnected", True)
                    if resp["events"]:
                        last = max(e[3] for e in resp["events"])
                        self._apply_events(resp["events"])
                        self.conn.watch_revision = last + 1
                        touched = sorted({e[1] for e in resp["events"]})
                        self.log.debug("etcd.event", revision=last, keys=touched[:20], count=len(touched),
                                       bytes=sum(len(e[2]) for e in resp["events"]))
                        mark(f"etcd:{last}", True)
            except Compacted as e:
                self.log.warning("etcd.watch_compacted", start_revision=start,
                                 compact_revision=e.compact_revision, action="a full read")
                with self._lock:
                    self._keys, self._synced = None, False  # listed again above
                continue
            except (EtcdUnavailable, EtcdRequestFailed) as e:
                with self._lock:
                    self._synced = False
                if self._stop.is_set():
                    return
                if self.conn.state != "unreachable":
                    self._set_conn("unreachable", str(e))
                    mark("etcd:unreachable", False)
            finally:
                self._response = None
            self._stop.wait(delay)
            delay = min(MAX_BACKOFF, delay * 2)

    def close(self) -> None:
        self._stop_watch()
        self.etcd.close()


# --- the agent's side: its report -----------------------------------------------------------------


class AgentReport:
    """``agents/<host>`` under a lease of ``ttl`` seconds, renewed every ttl/3; rewritten when
    the content changes. When etcd cannot be reached the report cannot be written: the agent
    says so in its log and status, and the key expires (fleet status: the host is missing)."""

    def __init__(self, etcd: Etcd, host: str, *, ttl: int = 10, netns: str | None = None,
                 source: EtcdSource | None = None, log: Any = None):
        self.etcd = etcd
        self.host = host
        self.ttl = ttl
        self.source = source
        self.log = log or get_logger(source="etcd", host=host)
        self.key = etcd.config.prefix + fs.AGENTS + host
        self.fields: dict[str, Any] = {"host": host, "netns": netns, "pid": os.getpid(),
                                       "hostname": socket.gethostname(), "state": "starting",
                                       "revision": None, "applied_at": None, "last_error": None}
        self._lease: int | None = None
        self._written: bytes | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.writes = 0

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.fields.update(fields)
        self._wake.set()

    def start(self) -> "AgentReport":
        self._thread = threading.Thread(target=self._main, daemon=True, name="nsg-etcd-report")
        self._thread.start()
        return self

    def _value(self) -> bytes:
        with self._lock:
            return fs.canonical(self.fields)

    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                self.once()
            except (EtcdUnavailable, EtcdRequestFailed) as e:
                self._lease, self._written = None, None
                if self.source is not None:
                    self.source._set_conn("unreachable", str(e))
                    self.source.interrupt()
            self._wake.wait(max(0.5, self.ttl / 3))
            self._wake.clear()

    def once(self) -> None:
        value = self._value()
        if self._lease is not None and self.etcd.lease_keepalive(self._lease) <= 0:
            self._lease, self._written = None, None
        if self._lease is None:
            self._lease = self.etcd.lease_grant(self.ttl)
        if value != self._written:
            self.etcd.put(self.key, value, lease=self._lease)
            self._written = value
            self.writes += 1

    def stop(self, revoke: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        if revoke and self._lease is not None:
            try:
                self.etcd.lease_revoke(self._lease)
            except (EtcdUnavailable, EtcdRequestFailed):
                pass
