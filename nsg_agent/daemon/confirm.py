"""Confirm or roll back: ``apply --confirm SECONDS`` (Junos' ``commit confirmed``,
firewalld's ``--timeout``, iptables-apply).

Before the apply, the table the kernel holds is listed in full and kept as the rollback batch
(``nsg_agent.kernel.backend.listing_to_batch``: one transaction that puts it back, or removes ours if there
was none), together with the status record and applied desired state of that moment. After
the apply a detached watcher process (``nsg-agent confirm --watch``, its own session, so it
outlives the command and the SSH connection that may die) waits for the deadline. If
``nsg-agent confirm`` has not arrived by then, it runs the rollback batch in one transaction
and restores the status record, so ``status`` tells the truth.

The pending record is one file, ``pending-confirm.json`` beside the status file. Confirming
and rolling back both start by renaming it (``.confirmed`` / ``.rolling-back``): a rename is
atomic, so exactly one of them wins a race at the deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nsg_agent.daemon.status import StatusStore

PENDING = "pending-confirm.json"


def _path(store: StatusStore, suffix: str = "") -> Path:
    return store.dir / (PENDING + suffix)


def _write_json(store: StatusStore, path: Path, data: dict) -> None:
    """Atomically, through the state directory's safe handle (nsg_agent.daemon.status)."""
    store._write(path, json.dumps(data).encode())


def pending(store: StatusStore) -> dict | None:
    """The pending confirmation (deadline, what it rolls back to), or None."""
    try:
        data = json.loads(_path(store).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe(store: StatusStore, now: float | None = None) -> dict | None:
    """What ``status`` shows: the deadline and seconds left, without the rollback batch."""
    data = pending(store)
    if data is None:
        return None
    left = data["deadline"] - (now if now is not None else time.time())
    return {"deadline": data["deadline"], "seconds_left": round(max(left, 0.0), 1),
            "watcher_pid": data.get("watcher_pid"), "applied_sha256": data.get("applied_sha256"),
            "rolls_back_to": data.get("previous_sha256") or "no table (the agent's table is removed)"}


def prepare(store: StatusStore, listing: dict | None, seconds: float) -> dict:
    """Record what a rollback puts back (before the apply changes anything)."""
    from nsg_agent.daemon.operations import read_record
    from nsg_agent.kernel.backend import listing_to_batch

    previous, _ = read_record(store)
    try:
        applied = store.applied_path.read_text()
    except OSError:
        applied = None
    data = {
        "deadline": time.time() + seconds, "seconds": seconds,
        "rollback": listing_to_batch(listing),
        "previous_status": json.loads(previous.to_json()),
        "previous_applied": applied,
        "previous_sha256": previous.commit.sha256 if previous.commit else None,
    }
    return data


def arm(store: StatusStore, data: dict, applied_sha256: str, netns: str | None, state_dir: str) -> int:
    """After a successful apply: write the pending record and start the watcher. Returns
    the watcher's pid."""
    data = {**data, "applied_sha256": applied_sha256}
    _write_json(store, _path(store), data)
    cmd = [sys.executable, "-m", "nsg_agent.cli", "confirm", "--watch", "--state-dir", state_dir]
    if netns:
        cmd += ["--netns", netns]
    log = open(store.dir / "confirm-watch.log", "ab")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, close_fds=True)
    log.close()
    data["watcher_pid"] = proc.pid
    _write_json(store, _path(store), data)
    return proc.pid


def write_pending(store: StatusStore, data: dict) -> None:
    """The daemon's pending record (run --confirm-edits): 'nsg-agent confirm' takes it."""
    _write_json(store, _path(store), data)


def take_for_rollback(store: StatusStore) -> bool:
    """Take the pending record for a rollback (False: confirmed meanwhile). The rename decides
    a race with 'nsg-agent confirm' at the deadline."""
    src, dst = _path(store), _path(store, ".rolling-back")
    try:
        os.replace(src, dst)
    except FileNotFoundError:
        return False
    dst.unlink(missing_ok=True)
    return True


def confirm(store: StatusStore) -> dict | None:
    """Keep the applied table: the pending record is taken (rename) so the watcher finds
    nothing to roll back. Returns what was confirmed, or None if nothing was pending."""
    src, dst = _path(store), _path(store, ".confirmed")
    try:
        os.replace(src, dst)
    except FileNotFoundError:
        return None
    data = json.loads(dst.read_text())
    dst.unlink(missing_ok=True)
    pid = data.get("watcher_pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 15)  # nothing left to wait for
        except (ProcessLookupError, PermissionError):
            pass
    return data


def rollback(store: StatusStore, backend: Any) -> dict | None:
    """Put back what ``prepare`` recorded (one transaction), unless confirmed meanwhile."""
    src, dst = _path(store), _path(store, ".rolling-back")
    try:
        os.replace(src, dst)
    except FileNotFoundError:
        return None  # confirmed (or rolled back) already
    data = json.loads(dst.read_text())
    backend.replace(data["rollback"])
    from nsg_agent.daemon.status import Status

    status = Status.from_dict(data["previous_status"])
    if status.commit is not None:  # the same ruleset, new kernel handles: record them
        status.commit.kernel_generation = backend.generation()
        status.commit.kernel_fingerprint = backend.fingerprint()
    status.last_error = {"time": time.time(), "kind": "rolled-back",
                         "message": f"not confirmed within {data.get('seconds')} s: rolled back to "
                                    f"{data.get('previous_sha256') or 'no table'}", "problems": []}
    store.write(status)
    if data.get("previous_applied") is not None:
        store._write(store.applied_path, data["previous_applied"].encode())
    else:
        store._unlink(store.applied_path)
    dst.unlink(missing_ok=True)
    return data


def watch(store: StatusStore, backend_factory: Any, poll: float = 0.2) -> str:
    """The watcher's loop: sleep until the deadline (or until confirmed), then roll back."""
    while True:
        data = pending(store)
        if data is None:
            return "confirmed"
        left = data["deadline"] - time.time()
        if left <= 0:
            break
        time.sleep(min(poll, left))
    backend = backend_factory()
    try:
        return "rolled-back" if rollback(store, backend) is not None else "confirmed"
    finally:
        backend.close()
