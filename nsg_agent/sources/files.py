"""The desired state from files on disk: :class:`FileSource` (the ``DesiredSource`` of a
daemon started with ``--config FILE...``), and what it asks of its files before it trusts them:

- :func:`open_for_writing`: is some process still holding the file open for writing (an
  in-place write not finished)? Asked with a read lease (``F_SETLEASE``), which the kernel
  refuses with EAGAIN exactly when the file is open for writing anywhere: no scan of /proc.
- :func:`identity`: device, inode, size, mtime and ctime: the same before and after a read
  means the read saw one version of the file, not a file changing under it.
- :func:`insecure`: files (and their directories) that someone other than root could write:
  whoever can write the desired state decides what the firewall admits.

The safe way to edit a watched file is to write a temporary file in the same directory and
rename it over the old one (what editors and ``install``/``mv`` do): the daemon then sees
one complete file, at once. See docs/daemon.md.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import Any, Sequence

from nsg_agent.desired import loader
from nsg_agent.sources.base import Mark, Snapshot, Stop, Unsettled

MAX_DIGEST_BYTES = 256 << 20  # a watched file larger than this is told apart by its identity


def open_for_writing(path: Path) -> bool | None:
    """True when some process has ``path`` open for writing; None when the kernel cannot
    tell us (no lease support on this file system, not the owner, file missing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as e:
            return True if e.errno == errno.EAGAIN else None
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def identity(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def insecure(paths: list[Path]) -> list[dict]:
    """For each file, and the directory holding it: a problem when it is writable by group
    or others, or (the agent running as root) owned by another user."""
    out: list[dict] = []
    seen: set[Path] = set()
    for p in paths:
        for target in (Path(p), Path(p).parent):
            target = target.absolute()
            if target in seen:
                continue
            seen.add(target)
            try:
                st = os.stat(target)
            except OSError:
                continue
            reasons = []
            writers = [who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit]
            # A sticky directory (/tmp) lets nobody replace a file they do not own.
            if writers and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
                reasons.append(f"writable by {' and '.join(writers)}")
            if os.geteuid() == 0 and st.st_uid != 0:
                reasons.append(f"owned by uid {st.st_uid}")
            if reasons:
                out.append({"path": str(target), "mode": stat.filemode(st.st_mode), "problem": ", ".join(reasons)})
    return out


def file_digest(path: Path) -> str | None:
    """The sha256 of a watched file (None: unreadable). Bounded, because the daemon hashes
    its files before every reconcile and at every resync, whatever is there: a FIFO is
    never opened for a blocking read, a device (a symlink to /dev/zero) never read, and a
    regular file is read in chunks up to MAX_DIGEST_BYTES (beyond that its identity stands
    in for its content). Those are told apart by a marker instead of a hash; refusing them
    is the loader's job."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return f"not-a-regular-file:{st.st_mode:o}:{st.st_dev}:{st.st_ino}"
        if st.st_size > MAX_DIGEST_BYTES:
            return f"too-large:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


# --- the source ------------------------------------------------------------------------------

_WATCH_EVENTS = {"created", "modified", "moved", "deleted", "closed"}  # not opened/closed_no_write


class FileSource:
    """One or several desired-state files (merged by the loader), the files they reference
    (service tags, parameters) included. ``read`` refuses a version still being written;
    ``watch`` follows the directories of every file read (editors replace files by rename, so
    the directory is watched, not the file)."""

    def __init__(self, paths: "str | os.PathLike | Sequence[str | os.PathLike]", *,
                 load_options: dict[str, Any] | None = None, log: Any = None):
        self.inputs = [Path(c) for c in (paths if isinstance(paths, (list, tuple)) else [paths])]
        self.origin = str(self.inputs[0])
        self.load_options = dict(load_options or {})
        self.log = log
        self._read_files: tuple[Path, ...] = ()  # every file the last good read took in
        self._seen: dict[str, str | None] = {}  # at the last read attempt: file -> sha256
        self._lock = threading.Lock()
        self._observer: Any = None
        self._watches: dict[str, Any] = {}
        self._mark: Mark | None = None

    def watched_files(self) -> set[Path]:
        files = {p.absolute() for p in self.inputs}
        files |= {Path(p).absolute() for p in self.load_options.get("parameters", ())}
        files |= {Path(f).absolute() for f in self._read_files}
        return files

    def read(self) -> Snapshot:
        self._seen = {str(p): file_digest(p) for p in self.watched_files()}
        if any(open_for_writing(p) for p in self.inputs):
            raise Unsettled("open for writing")
        before = [identity(p) for p in self.inputs]
        loaded = loader.load(self.inputs, **self.load_options)  # LoadError: invalid, last good stays
        if [identity(p) for p in self.inputs] != before:
            raise Unsettled("changed while it was read")
        inputs = {str(Path(p).absolute()): (file_digest(Path(p)) or "") for p in loaded.files}
        inputs[str(loaded.path.absolute())] = loaded.sha256
        self._seen = dict(inputs)
        self._read_files = tuple(loaded.files)
        self._update_watches()
        notices = tuple(insecure([Path(f) for f in inputs]))
        return Snapshot(loaded=loaded, origin=str(loaded.path.absolute()), inputs=inputs, notices=notices)

    def changed(self) -> list[str]:
        current = {str(p): file_digest(p) for p in self.watched_files()}
        return sorted(k for k in current if current[k] != self._seen.get(k))

    # watching -------------------------------------------------------------------------------
    def watch(self, mark: Mark) -> Stop:
        from watchdog.observers import Observer

        self._mark = mark
        self._observer = Observer()
        self._update_watches()
        self._observer.start()
        return self.close

    def close(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(5)
        self._watches.clear()

    def _update_watches(self) -> None:
        with self._lock:
            if self._observer is None:
                return
            dirs = {str(p.parent) for p in self.watched_files()}
            for d in set(self._watches) - dirs:
                self._observer.unschedule(self._watches.pop(d))
            for d in sorted(dirs - set(self._watches)):
                if os.path.isdir(d):
                    self._watches[d] = self._observer.schedule(_FileEvents(self), d, recursive=False)
                    if self.log is not None:
                        self.log.debug("watch.added", directory=d)

    def on_file_event(self, kind: str, path: str, complete: bool = False) -> None:
        """``complete``: renamed into place or closed after writing (no debounce needed)."""
        if self.log is not None:
            self.log.info("config.changed", change=kind, path=path)
        if self._mark is not None:
            self._mark(f"file:{Path(path).name}", complete)


class _FileEvents:
    """watchdog handler: tells the source's watcher when a watched file is touched."""

    def __init__(self, source: FileSource):
        self.source = source

    def dispatch(self, event: Any) -> None:
        if event.event_type not in _WATCH_EVENTS or event.is_directory:
            return
        try:
            watched = self.source.watched_files()
            dest = getattr(event, "dest_path", None)
            if dest and Path(os.fsdecode(dest)).absolute() in watched:
                # Renamed into place: the editor's last step, the file is whole.
                self.source.on_file_event(event.event_type, os.fsdecode(dest), complete=True)
                return
            src = getattr(event, "src_path", None)
            if src and Path(os.fsdecode(src)).absolute() in watched:
                self.source.on_file_event(event.event_type, os.fsdecode(src),
                                          complete=event.event_type == "closed")
                return
        except Exception as e:  # noqa: BLE001 - never kill the observer thread; resync still runs
            if self.source.log is not None:
                self.source.log.error("watch.failed", error=f"{type(e).__name__}: {e}")
