"""Run code inside a named network namespace without moving the rest of the process.

Linux network namespaces are per *thread*: ``setns(fd, CLONE_NEWNET)`` switches only the
calling thread, and every socket (netlink included) stays in the namespace it was created
in. So each target namespace gets one dedicated worker thread that enters it once and then
executes the calls submitted to it. libnftables contexts and pyroute2 sockets are created
and used inside that thread, which is why every nft and conntrack call goes through a
:class:`NetnsRunner`.

``NetnsRunner(None)`` runs in the namespace the process started in (still on its own thread,
so the behaviour is the same in both cases).

Named namespaces are the files ``/run/netns/NAME`` made by ``ip netns add``. This module
never creates one: a missing namespace is an error (pyroute2's own netns helpers create the
namespace when it is missing, which is not what an agent should do).

For short visits (the lab and its probe open hundreds of sockets in many namespaces without a
process per probe): :func:`entered` moves the calling thread in and always back, and
:func:`socket_in` makes a socket that lives in a namespace for its whole life, whichever
thread uses it later. Everything here is Linux-only and needs CAP_SYS_ADMIN.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import socket
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from nsg_agent.errors import OperationFailed

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


class NetnsError(OperationFailed, OSError):
    """The namespace does not exist or cannot be entered; ``errno`` says why when known."""

    def __str__(self) -> str:  # the message alone, not "[Errno 2] ..."
        return self.strerror if self.strerror else super().__str__()


def netns_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise NetnsError(f"invalid network namespace name {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


_libc = None


def _setns(fd: int, nstype: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, nstype)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def enter(name: str) -> None:
    """Move the *calling thread* into the network namespace ``name``."""
    path = netns_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(errno.ENOENT, f"network namespace {name!r} does not exist ({path})") from None
    except OSError as e:
        raise NetnsError(e.errno, f"cannot open network namespace {name!r}: {e.strerror}") from None
    try:
        _setns(fd, CLONE_NEWNET)
    except OSError as e:
        raise NetnsError(e.errno, f"cannot enter network namespace {name!r}: {e.strerror}") from None
    finally:
        os.close(fd)


def current_inode() -> int:
    """The inode of the calling thread's network namespace (to tell namespaces apart)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


class NetnsRunner:
    """A worker thread living in one network namespace; ``call`` runs a function there.

    Calls are executed one at a time, in submission order. Objects created by a call
    (sockets, libnftables contexts) belong to that namespace; keep using them via ``call``.
    """

    def __init__(self, name: str | None, *, thread_name: str | None = None):
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple, dict, Future] | None] = queue.SimpleQueue()
        started: Future = Future()
        self._thread = threading.Thread(
            target=self._main, args=(started,), daemon=True,
            name=thread_name or f"netns-{name or 'host'}")
        self._thread.start()
        started.result()  # re-raises NetnsError when the namespace cannot be entered

    @property
    def label(self) -> str:
        return self.name or "host"

    def _main(self, started: Future) -> None:
        try:
            if self.name is not None:
                enter(self.name)
        except BaseException as e:  # noqa: BLE001 - handed to the constructor
            started.set_exception(e)
            return
        started.set_result(None)
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args, kwargs, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - delivered to the caller
                fut.set_exception(e)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> "Future[T]":
        if not self._thread.is_alive():
            raise NetnsError(f"the worker for namespace {self.label!r} has stopped")
        fut: Future = Future()
        self._queue.put((fn, args, kwargs, fut))
        return fut

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = 120.0, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the namespace and return its result (or raise)."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result(timeout=timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def __enter__(self) -> "NetnsRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- short visits ------------------------------------------------------------------------------


def _enter_fd(fd: int) -> None:
    try:
        _setns(fd, CLONE_NEWNET)
    except OSError as e:
        raise NetnsError(e.errno, f"setns: {os.strerror(e.errno or 0)}") from None


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body with the current thread in namespace ``name``; always come back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NetnsError(errno.ENOENT, f"network namespace {name!r} does not exist") from None
        try:
            _enter_fd(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _enter_fd(own)
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
        return os.stat(netns_path(name)).st_ino
    except FileNotFoundError:
        return None


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in Path(NETNS_RUN_DIR).iterdir())
    except FileNotFoundError:
        return []


def pids_in(name: str, *, descendants: bool = False) -> list[int]:
    """Processes whose network namespace is ``name``.

    This process and its descendants are left out (see :func:`_ours`) unless ``descendants``:
    a test harness tearing down namespaces it made counts the processes it started in them
    (``ip netns exec`` children), but never itself."""
    try:
        st = os.stat(netns_path(name))
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
        pid = int(entry)
        if (s.st_ino, s.st_dev) != (st.st_ino, st.st_dev) or pid == os.getpid():
            continue
        if descendants or not _ours(pid):
            out.append(pid)
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
