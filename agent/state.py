"""What the agent committed, remembered in a small status file.

Listing a large table back from the kernel is slow, so (like kube-proxy) the agent remembers
what it committed instead of reading it back: the source files and their hashes, when, the
compiled summary, the rule index (nft comment -> NSG and rule), a digest per rule and the
size of every set, plus the last error. ``plan`` diffs against this record and ``status``
prints it with live counters.

Default location: ``/run/nsg-agent/<netns or "host">/status.json`` (``--state-dir``
changes the root). Writes are atomic (temporary file + rename in the same directory), so a
reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = "/run/nsg-agent"


@dataclass
class Commit:
    """One successful apply."""

    source: str
    sha256: str  # of the desired-state file as read
    files: dict[str, str]  # every file read (state + service tags) -> sha256
    applied_at: float  # unix time
    mode: str
    ruleset_sha256: str  # of the compiled JSON
    summary: dict[str, Any]
    rule_index: dict[str, Any]  # nft comment -> what the compiler says it is
    rules: dict[str, str]  # nft comment -> digest of its rule(s)
    sets: dict[str, int]  # set/map name -> element count
    kernel_fingerprint: str | None = None


@dataclass
class Status:
    netns: str | None = None
    commit: Commit | None = None
    last_error: dict[str, Any] | None = None  # {"time", "kind", "message", "problems": [...]}
    pid: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "Status":
        commit = data.get("commit")
        return cls(netns=data.get("netns"), commit=Commit(**commit) if commit else None,
                   last_error=data.get("last_error"), pid=data.get("pid"))


class StatusStore:
    """The status file of one namespace."""

    def __init__(self, state_dir: str | os.PathLike = DEFAULT_STATE_DIR, netns: str | None = None):
        self.netns = netns
        self.dir = Path(state_dir) / (netns or "host")
        self.path = self.dir / "status.json"

    def read(self) -> Status:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return Status(netns=self.netns)
        except (OSError, ValueError) as e:
            return Status(netns=self.netns, last_error={"kind": "status-file", "message": f"unreadable status file {self.path}: {e}"})
        return Status.from_dict(data)

    def write(self, status: Status) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".status.", dir=self.dir)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(status.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


# --- describing a batch, for plan and status ---------------------------------------------


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def describe_commands(commands: list[dict]) -> tuple[dict[str, str], dict[str, int]]:
    """(rule digests by comment, element counts by set/map name) of a replace batch.

    A comment that labels several kernel rules (IPv4 and IPv6 variants, several chains) gets
    one digest over all of them, in order; rules without a comment are grouped per chain
    under ``<chain>: (unnamed)``.
    """
    per_comment: dict[str, list] = {}
    sets: dict[str, int] = {}
    for cmd in commands:
        verb, body = next(iter(cmd.items()))
        if verb not in ("add", "create", "insert"):
            continue
        kind, obj = next(iter(body.items()))
        if kind == "rule":
            key = obj.get("comment") or f"{obj.get('chain')}: (unnamed)"
            per_comment.setdefault(key, []).append([obj.get("chain"), obj.get("expr")])
        elif kind in ("set", "map"):
            sets[obj["name"]] = sets.get(obj["name"], 0) + len(obj.get("elem") or [])
        elif kind == "element":
            sets[obj["name"]] = sets.get(obj["name"], 0) + len(obj.get("elem") or [])
    return {k: _digest(v) for k, v in per_comment.items()}, sets


def ruleset_sha256(commands: list[dict]) -> str:
    return hashlib.sha256(json.dumps(commands, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class Plan:
    """What applying a new batch would change relative to a commit (or to nothing)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    sets: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)  # name -> (old, new)
    table_present: bool | None = None  # in the kernel now (None: not asked)
    drift: bool = False  # the kernel differs from the remembered commit

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.drift
                    or any(a != b for a, b in self.sets.values()) or self.table_present is False)

    def as_dict(self) -> dict:
        return {"added": self.added, "removed": self.removed, "changed": self.changed,
                "unchanged": self.unchanged,
                "sets": {k: {"applied": old, "new": new} for k, (old, new) in self.sets.items()},
                "table_present": self.table_present, "drift": self.drift, "empty": self.empty}


def make_plan(old: Commit | None, new_rules: dict[str, str], new_sets: dict[str, int]) -> Plan:
    old_rules = old.rules if old else {}
    old_sets = old.sets if old else {}
    plan = Plan()
    plan.added = sorted(set(new_rules) - set(old_rules))
    plan.removed = sorted(set(old_rules) - set(new_rules))
    plan.changed = sorted(k for k in set(new_rules) & set(old_rules) if new_rules[k] != old_rules[k])
    plan.unchanged = len(set(new_rules) & set(old_rules)) - len(plan.changed)
    for name in sorted(set(old_sets) | set(new_sets)):
        plan.sets[name] = (old_sets.get(name), new_sets.get(name))
    return plan
