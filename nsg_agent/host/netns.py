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
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

from nsg_agent.errors import OperationFailed

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


class NetnsError(OperationFailed):
    """The namespace does not exist or cannot be entered."""


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
        raise NetnsError(f"network namespace {name!r} does not exist ({path})") from None
    except OSError as e:
        raise NetnsError(f"cannot open network namespace {name!r}: {e.strerror}") from None
    try:
        _setns(fd, CLONE_NEWNET)
    except OSError as e:
        raise NetnsError(f"cannot enter network namespace {name!r}: {e.strerror}") from None
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
