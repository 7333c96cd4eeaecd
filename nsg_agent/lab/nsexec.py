"""Doing things inside a named network namespace from this process, one thread at a time.

``setns(CLONE_NEWNET)`` moves only the calling thread, so a thread can enter a lab
namespace, open a socket or write a sysctl there, and come back: the socket stays in that
namespace for its whole life, whichever thread uses it later. This is how the probe opens
hundreds of client and listener sockets in many namespaces without starting a process per
probe. Everything here is Linux-only and needs CAP_SYS_ADMIN.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import threading
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from nsg_agent.errors import OperationFailed

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OperationFailed, OSError):
    pass


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body with the current thread in namespace ``name``; always come back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(NETNS_DIR / name, os.O_RDONLY)
        except FileNotFoundError:
            raise NetnsError(errno.ENOENT, f"network namespace {name!r} does not exist") from None
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def run_in(name: str, fn: Callable[[], T]) -> T:
    """Call ``fn()`` in a short-lived thread that has entered namespace ``name``."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            with entered(name):
                box["result"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, name=f"netns-{name}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def socket_in(name: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
              proto: int = 0) -> socket.socket:
    """A new socket living in namespace ``name`` (the calling thread enters and leaves)."""
    with entered(name):
        return socket.socket(family, type, proto)


def write_sysctls(name: str, values: dict[str, str]) -> None:
    """Write ``/proc/sys/<key>`` inside namespace ``name`` (keys like ``net/ipv4/ip_forward``)."""

    def write() -> None:
        for key, value in values.items():
            with open(f"/proc/sys/{key}", "w") as f:
                f.write(value)

    run_in(name, write)


def read_sysctl(name: str, key: str) -> str:
    return run_in(name, lambda: Path(f"/proc/sys/{key}").read_text().strip())


def netns_inode(name: str) -> int | None:
    """The inode of a named namespace (identity across reconciles), None if absent."""
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except FileNotFoundError:
        return None


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is ``name``."""
    try:
        st = os.stat(NETNS_DIR / name)
    except FileNotFoundError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            s = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (s.st_ino, s.st_dev) == (st.st_ino, st.st_dev) and not _ours(int(entry)):
            out.append(int(entry))
    return out


def _ours(pid: int) -> bool:
    """This process or one of its descendants. pyroute2 opens a socket in a namespace from a
    short-lived forked child; killing it mid-handshake would hang the caller (and the child
    would run our inherited SIGTERM handler), so never count those as lab processes."""
    me = os.getpid()
    seen = 0
    while pid > 1 and seen < 64:
        if pid == me:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: ppid (comm may hold spaces)
        seen += 1
    return False
