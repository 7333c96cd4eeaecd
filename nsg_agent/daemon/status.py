"""What the agent committed, remembered in a small status file.

Listing a large table back from the kernel is slow, so (like kube-proxy) the agent remembers
what it committed instead of reading it back: the source files and their hashes, when, the
compiled summary, the rule index (nft comment -> NSG and rule), a digest per rule and the
size of every set, plus the last error. ``plan`` diffs against this record and ``status``
prints it with live counters.

Default location: ``/run/nsg-agent/<netns or "host">/status.json`` (``--state-dir``
changes the root). Writes are atomic (temporary file + rename in the same directory), so a
reader never sees half a file.

The record never lies: an apply writes its *intent* (``pending``) before the transaction and
the commit after it, so a kill in between leaves a record that says "unverified" (the kernel
holds the commit or the pending ruleset), which the next start resolves by applying the file.

The directories are made with safe modes and opened without following symbolic links
(``O_NOFOLLOW`` on every component the agent creates), and a status file that is not the
agent's (not a JSON object of the known shape) is an error naming it: the daemon moves it
aside and rebuilds the record (:meth:`StatusStore.set_aside`). One daemon per namespace: the
``lock`` file beside the status file is held with ``flock`` for the daemon's life.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import stat
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nsg_agent.compiler.results import RuleIndex, Summary
    from nsg_agent.semantics.policy import AddressTerm, Policy, ResolvedRule

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
    summary: Summary  # what the compiler says of the table (status file: its to_json())
    rule_index: RuleIndex  # (chain, nft comment) -> what the compiler says the rule is
    rules: dict[str, str]  # "<nsg>: UserRule_<name>" -> digest of the resolved rule
    sets: dict[str, int]  # set/map name -> element count
    kernel_fingerprint: str | None = None  # digest of the table listing (taken after the apply)
    kernel_generation: int | None = None  # nft generation right after the commit (see nsg_agent.kernel.backend)
    # How the kernel came to hold it: "replace", "delta", or "adopted" (a start found the
    # kernel already holding exactly this ruleset and wrote nothing).
    how: str = "replace"
    # The source's version of what is enforced (a store's revision; None for files) and when
    # the source says it was published (wall clock).
    revision: int | None = None
    published_at: float | None = None


@dataclass
class Status:
    netns: str | None = None
    commit: Commit | None = None
    last_error: dict[str, Any] | None = None  # {"time", "kind", "message", "problems": [...]}
    pid: int | None = None
    # The intent of an apply in progress: {"ruleset_sha256", "sha256", "source", "started_at"},
    # written (to intent.json beside the status file) before the transaction, removed after
    # the outcome is recorded. Present after a kill: the record is unverified (the kernel
    # holds ``commit`` or this).
    pending: dict[str, Any] | None = None

    @property
    def unverified(self) -> bool:
        return self.pending is not None

    def to_json(self) -> str:
        # Shallow: the commit's fields are plain dicts, lists and strings already but for the
        # summary and the rule index, which give their JSON shape (dataclasses.asdict's deep
        # copy of a maximum-size rule index cost 0.16 s).
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "pending"}
        if self.commit is not None:
            data["commit"] = {f.name: getattr(self.commit, f.name) for f in fields(self.commit)}
            data["commit"]["summary"] = self.commit.summary.to_json()
            data["commit"]["rule_index"] = self.commit.rule_index.to_json()
        return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> "Status":
        """The status a file's parsed JSON describes; StatusFileError (the reason) when it is
        not one the agent wrote: another JSON type, unknown or missing keys, wrong types."""
        if not isinstance(data, dict):
            raise StatusFileError(f"a JSON {type(data).__name__}, not an object")
        _check_keys(data, cls, "")
        commit = data.get("commit")
        if commit is not None:
            if not isinstance(commit, dict):
                raise StatusFileError(f"commit is a JSON {type(commit).__name__}, not an object")
            _check_keys(commit, Commit, "commit.")
            for name, kind in _COMMIT_TYPES.items():
                if name in commit and not isinstance(commit[name], kind):
                    raise StatusFileError(f"commit.{name} has the wrong type ({type(commit[name]).__name__})")
            from nsg_agent.compiler.results import ResultError, RuleIndex, Summary

            try:
                commit = {**commit, "summary": Summary.from_json(commit["summary"], "commit.summary"),
                          "rule_index": RuleIndex.from_json(commit["rule_index"], "commit.rule_index")}
            except ResultError as e:
                raise StatusFileError(str(e)) from None
        for name in ("last_error", "pending"):
            if data.get(name) is not None and not isinstance(data[name], dict):
                raise StatusFileError(f"{name} is a JSON {type(data[name]).__name__}, not an object")
        if data.get("pid") is not None and not isinstance(data["pid"], int):
            raise StatusFileError("pid is not an integer")
        return cls(netns=data.get("netns"), commit=Commit(**commit) if commit else None,
                   last_error=data.get("last_error"), pid=data.get("pid"), pending=data.get("pending"))


_COMMIT_TYPES: dict[str, type | tuple[type, ...]] = {
    "source": str, "sha256": str, "files": dict, "applied_at": (int, float), "mode": str,
    "ruleset_sha256": str, "summary": dict, "rule_index": dict, "rules": dict, "sets": dict,
    "kernel_fingerprint": (str, type(None)), "kernel_generation": (int, type(None)), "how": str,
}


def _check_keys(data: dict, cls: type, where: str) -> None:
    known = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    extra, missing = sorted(set(data) - known), sorted(required - set(data))
    if extra:
        raise StatusFileError(f"unknown keys {', '.join(where + k for k in extra)}")
    if missing:
        raise StatusFileError(f"missing keys {', '.join(where + k for k in missing)}")


class StatusFileError(Exception):
    """The status file is not one the agent wrote (or cannot be read)."""


class UnsafePath(OSError):
    """A state directory (or the file in it) is a symbolic link, not a directory, not ours,
    or writable by others: the agent will not write through it."""


class NamespaceLocked(Exception):
    """Another daemon holds the namespace's lock."""


DIR_MODE = 0o750
FILE_MODE = 0o640
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(path: Path, create: bool) -> int:
    """An fd of the directory ``path`` (``<state root>/<namespace>``), components made
    (mode 0750) when missing and ``create``. The last two components are the agent's: each
    is opened with O_NOFOLLOW relative to its parent's fd (no race between check and use), a
    symbolic link there is refused (UnsafePath), never followed, and so is a directory not
    owned by the agent's uid or writable by others. The components above (e.g. /run) are
    taken as the system made them."""
    path = Path(os.path.abspath(path))
    parts = path.parts
    fd = os.open(parts[0], _NOFOLLOW_DIR)
    try:
        for i, part in enumerate(parts[1:], start=1):
            here = Path(*parts[: i + 1])
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, DIR_MODE, dir_fd=fd)
                except FileExistsError:
                    pass
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode) and i >= len(parts) - 2:
                # The state root and the namespace directory are the agent's: never a link.
                raise UnsafePath(errno.ELOOP, "a symbolic link where the agent keeps its state "
                                 "(refusing to follow it)", str(here))
            nfd = os.open(part, _NOFOLLOW_DIR if i >= len(parts) - 2 else os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nfd
            if i >= len(parts) - 2:
                st = os.fstat(fd)
                if st.st_uid != os.geteuid() or st.st_mode & stat.S_IWOTH:
                    raise UnsafePath(errno.EPERM, f"not owned by uid {os.geteuid()} or writable by "
                                     f"others (mode {stat.filemode(st.st_mode)})", str(here))
        return fd
    except BaseException:
        os.close(fd)
        raise


class StatusStore:
    """The status file of one namespace."""

    def __init__(self, state_dir: str | os.PathLike = DEFAULT_STATE_DIR, netns: str | None = None):
        self.netns = netns
        self.dir = Path(state_dir) / (netns or "host")
        self.path = self.dir / "status.json"
        self.intent_path = self.dir / "intent.json"
        self._lock_fd: int | None = None

    def read(self) -> Status:
        """The record (with the pending intent, if any); StatusFileError naming the file
        when it is not the agent's."""
        try:
            dfd = _open_dir(self.dir, create=False)
        except FileNotFoundError:
            return Status(netns=self.netns)
        except OSError as e:
            raise StatusFileError(f"status directory {self.dir}: {e.strerror or e}") from None
        try:
            raw = self._read_file(dfd, self.path)
            intent = self._read_file(dfd, self.intent_path)
        finally:
            os.close(dfd)
        status = Status(netns=self.netns) if raw is None else self._parse(raw)
        if intent is not None:
            try:
                pending = json.loads(intent)
            except ValueError:
                pending = None
            # An intent that cannot be read still says an apply began: unverified.
            status.pending = pending if isinstance(pending, dict) else {"unreadable": str(self.intent_path)}
        return status

    def _parse(self, raw: bytes) -> Status:
        try:
            return Status.from_dict(json.loads(raw))
        except (ValueError, TypeError) as e:
            raise StatusFileError(f"status file {self.path} is not JSON: {e}") from None
        except StatusFileError as e:
            raise StatusFileError(f"status file {self.path} is not the agent's: {e}") from None

    @staticmethod
    def _read_file(dfd: int, path: Path) -> bytes | None:
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StatusFileError(f"status file {path}: {e.strerror or e}") from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise StatusFileError(f"status file {path} is not a regular file")
            raw = f.read(MAX_STATUS_BYTES + 1)
        if len(raw) > MAX_STATUS_BYTES:
            raise StatusFileError(f"status file {path} is larger than {MAX_STATUS_BYTES} bytes")
        return raw

    def ensure_dir(self) -> None:
        """Make (or check) the directories now: UnsafePath if a symlink or a directory
        writable by others was planted there."""
        os.close(_open_dir(self.dir, create=True))

    def set_aside(self) -> Path | None:
        """Move an unusable status file out of the way (``status.json.bad-<time>``, kept
        for inspection); returns the new path (None when there was nothing to move)."""
        try:
            dfd = _open_dir(self.dir, create=False)
        except FileNotFoundError:
            return None
        try:
            target = f"{self.path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
            try:
                os.rename(self.path.name, target, src_dir_fd=dfd, dst_dir_fd=dfd)
            except FileNotFoundError:
                return None
            return self.dir / target
        finally:
            os.close(dfd)

    def write(self, status: Status) -> None:
        self._write(self.path, status.to_json().encode())

    def write_intent(self, intent: dict) -> None:
        self._write(self.intent_path, (json.dumps(intent, sort_keys=True) + "\n").encode())

    def clear_intent(self) -> None:
        self._unlink(self.intent_path)

    def _write(self, path: Path, data: bytes) -> None:
        """Atomically (temporary file + rename, fsync'd), through the directory's fd."""
        dfd = _open_dir(self.dir, create=True)
        tmp = f".{path.stem}.{secrets.token_hex(6)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         FILE_MODE, dir_fd=dfd)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except FileNotFoundError:
                    pass
                raise
        finally:
            os.close(dfd)

    def clear(self) -> None:
        self._unlink(self.path)

    def _unlink(self, path: Path) -> None:
        try:
            dfd = _open_dir(self.dir, create=False)
        except FileNotFoundError:
            return
        try:
            os.unlink(path.name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)

    def lock(self) -> None:
        """Hold the namespace's lock (``flock`` on ``lock`` beside the status file) until
        the process exits or :meth:`unlock`; NamespaceLocked naming the holder's pid when
        another process has it."""
        dfd = _open_dir(self.dir, create=True)
        try:
            fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dfd)
        finally:
            os.close(dfd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise NamespaceLocked(
                f"another nsg-agent daemon (pid {holder}) already manages namespace "
                f"{self.netns or 'host'} (lock {self.dir / 'lock'} is held)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # The desired state of the last commit, as the model parsed it (applied.json beside the
    # status file): what ``plan`` diffs rule by rule against and what the lock-out check
    # calls "the current policy". Written after each commit.
    @property
    def applied_path(self) -> Path:
        return self.dir / "applied.json"

    def write_applied(self, state: Any) -> None:
        self._write(self.applied_path, state.model_dump_json(exclude_defaults=True).encode())

    def read_applied(self) -> Any:
        """The last commit's DesiredState, or None (nothing applied, or unreadable)."""
        from pydantic import ValidationError

        from nsg_agent.desired.model import DesiredState

        try:
            dfd = _open_dir(self.dir, create=False)
        except OSError:
            return None
        try:
            raw = self._read_file(dfd, self.applied_path)
        except StatusFileError:
            return None
        finally:
            os.close(dfd)
        try:
            return DesiredState.model_validate_json(raw) if raw is not None else None
        except (ValueError, ValidationError):
            return None


MAX_STATUS_BYTES = 256 << 20  # the rule index of the benchmark maximum is ~60 MB


# --- describing a batch, for plan and status ---------------------------------------------


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def rule_digests(policy: "Policy", interfaces: dict[str, str]) -> dict[str, str]:
    """A digest per NSG rule of the enforced NICs, keyed like the nft comments
    ("<nsg>: UserRule_<name>"), over the rule as resolved (priority, access, protocol,
    prefixes, ports) for every NIC level it serves. Independent of how the compiler lays
    out chains and maps, so ``plan`` reports a rule as changed only when its meaning did."""
    per_rule: dict[str, set[str]] = {}
    for name in sorted(interfaces):
        nic = policy.nics.get(name)
        if nic is None:
            continue
        for level in nic.inbound + nic.outbound:
            for rule in level.rules:
                per_rule.setdefault(f"{level.nsg}: {rule.log_name}", set()).add(_rule_key(rule))
    return {k: _digest(sorted(v)) for k, v in per_rule.items()}


def _rule_key(rule: "ResolvedRule") -> str:
    """The resolved rule as text, addresses as integer ranges: the repr of int tuples is
    C-speed, where formatting 180k prefixes as CIDR text took 0.6 s at the benchmark maximum."""
    def term(t: "AddressTerm") -> tuple:
        return (t.label, t.any, t.ranges(4), t.ranges(6)) if not t.any else (t.label, True)

    return repr((rule.nsg, rule.name, rule.priority, rule.direction.value, rule.access.value,
                 rule.protocol.value, term(rule.source), rule.source_ports.ranges,
                 term(rule.destination), rule.destination_ports.ranges, rule.default, rule.platform))


def set_sizes(commands: list[dict]) -> dict[str, int]:
    """Element count of every named set and map a replace batch creates (read off the one
    table model, built without copying the batch)."""
    from nsg_agent.kernel.state import NftRuleset

    return {name: n for table in NftRuleset.from_commands(commands, share=True)
            for name, n in table.set_sizes().items()}


def ruleset_sha256(commands: list[dict]) -> str:
    """sha256 of the batch exactly as handed to libnftables (nsg_agent.kernel.backend.batch_payload): the
    compiler is deterministic, so the same input gives the same digest."""
    from nsg_agent.kernel.backend import batch_payload

    return hashlib.sha256(batch_payload(commands)).hexdigest()


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
    record_problem: str | None = None  # the record is unusable or unverified: applying writes

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.drift or self.record_problem
                    or any(a != b for a, b in self.sets.values()) or self.table_present is False)

    def as_dict(self) -> dict:
        return {"added": self.added, "removed": self.removed, "changed": self.changed,
                "unchanged": self.unchanged,
                "sets": {k: {"applied": old, "new": new} for k, (old, new) in self.sets.items()},
                "table_present": self.table_present, "drift": self.drift,
                "record_problem": self.record_problem, "empty": self.empty}


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
