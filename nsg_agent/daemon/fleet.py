"""One fleet agent: the glue between the etcd source, the reconciler's outcomes and the
agent's report (``nsg-agent run --etcd URL --host NAME``; docs/fleet.md).

- :meth:`FleetAgent.observe` is the reconciler's observer: after each reconcile it updates
  the report under ``agents/<host>`` (the revision enforced, when, and the last error) and
  the local side file ``source.json`` that ``nsg-agent status`` shows.
- the source's connection listener marks the agent *degraded* while etcd cannot be reached
  (the kernel keeps enforcing the last good state meanwhile).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from nsg_agent.daemon.outcome import Outcome
from nsg_agent.daemon.status import StatusStore
from nsg_agent.logging import get_logger
from nsg_agent.sources.etcd import AgentReport, Connection, Etcd, EtcdConfig, EtcdSource

SIDE_FILE = "source.json"
DEFAULT_CACHE_DIR = "/var/lib/nsg-agent/etcd"


class FleetAgent:
    def __init__(self, config: EtcdConfig, host: str, store: StatusStore, *, report_ttl: int = 10,
                 cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, load_options: dict[str, Any] | None = None,
                 log: Any = None):
        """``cache_dir``: where the last good state is persisted (one sub-directory per
        namespace, like the status files): on persistent storage, since it must survive the
        reboot after which etcd may be down (the status directory, /run, does not)."""
        self.host = host
        self.store = store
        self.log = log or get_logger(netns=store.netns or "host", host=host)
        self.etcd = Etcd(config)
        self.cache_dir = Path(cache_dir) / (store.netns or "host")
        self.source = EtcdSource(self.etcd, host, self.cache_dir, load_options=load_options, log=self.log)
        # the report has a client of its own: its keep-alives never queue behind a big read
        self.report = AgentReport(Etcd(config), host, ttl=report_ttl, netns=store.netns, source=self.source,
                                  log=self.log)
        self._lock = threading.Lock()
        self.enforced: dict[str, Any] = {"revision": None, "applied_at": None, "published_at": None}
        self.last_outcome: Outcome | None = None
        self.source.on_connection(self._on_connection)

    def start(self, rec: Any) -> None:
        """``rec``: the Reconciler (its restored commit tells what a previous run enforced)."""
        c = rec.status.commit
        if c is not None and c.revision is not None:
            self.enforced = {"revision": c.revision, "applied_at": c.applied_at, "published_at": c.published_at}
        self.report.update(**self._fields())
        self.report.start()
        self._write_side()

    def _state(self) -> str:
        o = self.last_outcome
        if o is not None and o.kind in ("invalid", "refused", "failed"):
            return "failing"
        if self.source.conn.state == "unreachable" or self.source.served_cache:
            return "degraded"
        return "ok" if self.enforced["revision"] is not None else "starting"

    def _fields(self) -> dict[str, Any]:
        o = self.last_outcome
        err = None
        if o is not None and not o.ok and o.kind != "unavailable":
            err = {"kind": o.kind, "message": (o.error or "")[:500], "problems": list(o.problems[:5]),
                   "revision": o.revision, "at": o.at}
        return {**self.enforced, "state": self._state(), "last_error": err,
                "etcd": self.source.conn.as_dict(), "updated_at": time.time(),
                "ruleset_sha256": o.ruleset_sha256 if o is not None and o.ok else None}

    def observe(self, outcome: Outcome) -> None:
        with self._lock:
            self.last_outcome = outcome
            if outcome.ok and outcome.revision is not None:
                wrote = outcome.kind in ("replace", "delta", "none")
                applied = outcome.at if wrote else self.enforced["applied_at"]
                self.enforced = {"revision": outcome.revision, "applied_at": applied or outcome.at,
                                 "published_at": getattr(self.source.last, "published_at", None)}
            fields = self._fields()
        self.report.update(**fields)
        self._write_side()

    def _on_connection(self, conn: Connection) -> None:
        self.report.update(state=self._state(), etcd=conn.as_dict(), updated_at=time.time())
        self._write_side()

    def _write_side(self) -> None:
        data = {"kind": "etcd", "origin": self.source.origin, "host": self.host, **self.enforced,
                "state": self._state(), "etcd": self.source.conn.as_dict(),
                "served_from_cache": self.source.served_cache, "written_at": time.time()}
        path = Path(self.store.dir) / SIDE_FILE
        try:
            tmp = path.with_name(f".{SIDE_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, sort_keys=True))
            os.replace(tmp, path)
        except OSError as e:
            self.log.error("status.write_failed", path=str(path), error=str(e))

    def stop(self) -> None:
        self.report.stop(revoke=True)
        self.report.etcd.close()
        self.source.close()


def read_side(store: StatusStore) -> dict | None:
    try:
        return json.loads((Path(store.dir) / SIDE_FILE).read_text())
    except (OSError, ValueError):
        return None
