"""What the daemon asks of its input files before it trusts them (thin I/O helpers).

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
import os
import stat
from pathlib import Path

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
