"""Throwaway network namespaces, always removed: :class:`Namespaces` (the tests, the benchmarks
and the lab's kernel check; ``nsg_agent.testing`` re-exports it).

The lab's own namespaces are not made here: they outlive the process that builds them (``lab
up`` in one, ``lab down`` in another) and are recorded in the lab's state file instead
(nsg_agent.lab.build).

::

    with Namespaces(prefix="nsgh") as ns:
        srv, cli = ns.add("nsgh-s1"), ns.add("nsgh-c1")
        ns.veth(srv, "nsghs1", cli, "nsghc1")
        ns.addr(srv, "nsghs1", "10.50.1.4/24")
        ns.up(srv, "nsghs1")
        ...
    # here every namespace and veth it made is gone, whatever happened in the body

A registry, as pyroute2's NDB keeps one: every namespace and veth it creates is recorded the
moment it exists, and :meth:`Namespaces.teardown` (run on exit, also when the body raised or a
creation failed half-way; safe to call again) removes exactly what is recorded and nothing
else. Teardown first SIGKILLs the processes still running inside each namespace (they hold it,
and its veths, alive) and waits briefly for them to go, then deletes the veths and the
namespaces.

Safety rules it enforces (the machine it runs on is shared):

- the prefix starts with ``nsg`` and every name with ``<prefix>-``, so a reader and
  :meth:`Namespaces.sweep` can tell whose namespace it is;
- a name that already exists is refused: the registry never adopts, so never deletes, a
  namespace someone else made (another run, another suite, the agent's lab);
- the helpers act only inside namespaces this registry made; none touches the root namespace.
  :meth:`Namespaces.veth` makes both ends in one request issued inside the first namespace
  with the peer placed in the second (``ip -n A link add IF_A type veth peer name IF_B netns
  B``): the kernel creates each end directly where it belongs, so nothing exists in the root
  namespace, not even briefly.

Mechanism: the ``ip`` command (iproute2) in a subprocess, as every harness this replaced
already did: the command in an error message can be replayed by hand, and behaviour stays what
those harnesses had. Not pyroute2: its namespace support opens sockets from forked helper
processes (see ``nsg_agent.host.netns._ours``), which a module whose teardown kills processes
in namespaces should not create. Existence, listing, processes and sysctls go through
:mod:`nsg_agent.host.netns`, the agent's namespace module.

Everything here needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN); the name checks do not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Iterable, Mapping

from nsg_agent.errors import OperationFailed
from nsg_agent.host import netns as host_netns

KILL_WAIT = 2.0  # seconds to wait for killed processes to leave their namespace


class NamespaceError(OperationFailed, RuntimeError):
    """An ``ip`` command failed, or a namespace survived its deletion."""


@dataclass(frozen=True)
class Veth:
    """One veth pair: ``if_a`` in ``ns_a``, its peer ``if_b`` in ``ns_b``."""

    ns_a: str
    if_a: str
    ns_b: str
    if_b: str


def _ip(*args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not prefix.startswith("nsg"):
        raise ValueError(f"namespace prefix {prefix!r} does not start with 'nsg'")
    if prefix.endswith("-") or "/" in prefix or any(c.isspace() for c in prefix):
        raise ValueError(f"namespace prefix {prefix!r}: give it without the trailing '-', "
                         "and without '/' or spaces")


def _sysctl_key(key: str) -> str:
    """``net.ipv4.ip_forward`` or ``net/ipv4/ip_forward`` -> ``net/ipv4/ip_forward``."""
    return key if "/" in key else key.replace(".", "/")


def _remove(names: Iterable[str], veths: Iterable[Veth] = ()) -> list[str]:
    """Kill what runs in ``names``, delete ``veths`` and the namespaces; the names that survived."""
    names = list(names)
    pids = {pid for n in names for pid in host_netns.pids_in(n, descendants=True)}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + KILL_WAIT
    # a dead child of ours left unreaped (a zombie) has no namespace any more: it is not counted
    while pids and time.monotonic() < deadline and any(host_netns.pids_in(n, descendants=True) for n in names):
        time.sleep(0.02)
    for v in veths:  # gone with their namespace anyway, unless something still holds it
        if host_netns.exists(v.ns_a):
            _ip("-n", v.ns_a, "link", "delete", v.if_a, check=False)
    for n in names:
        if host_netns.exists(n):
            _ip("netns", "delete", n, check=False)
    return [n for n in names if host_netns.exists(n)]


class Namespaces:
    """Network namespaces named ``<prefix>-...`` and the veths between them; all removed on
    exit (see the module docstring)."""

    def __init__(self, prefix: str):
        _check_prefix(prefix)
        self.prefix = prefix
        self._names: list[str] = []
        self._veths: list[Veth] = []

    # --- the registry ---------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """The namespaces this registry made and has not removed yet, oldest first."""
        return tuple(self._names)

    @property
    def veths(self) -> tuple[Veth, ...]:
        return tuple(self._veths)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __enter__(self) -> "Namespaces":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()

    def teardown(self) -> None:
        """Remove every namespace and veth recorded (newest first); a no-op when there are none.
        Ctrl-C is held off meanwhile (on the main thread), so it cannot leave half of them.
        Raises NamespaceError if a namespace could not be deleted (it stays recorded: calling
        again retries)."""
        if not self._names and not self._veths:
            return
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            left = _remove(reversed(self._names), reversed(self._veths))
            self._veths.clear()
            self._names = [n for n in self._names if n in left]
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if left:
            raise NamespaceError(f"network namespaces still present after deletion: {' '.join(left)}")

    @staticmethod
    def sweep(prefix: str) -> list[str]:
        """Remove the namespaces named ``<prefix>-...`` that an earlier, crashed run left
        behind (their processes killed first); returns their names. Only that prefix: run it
        before a run, never while another run with the same prefix is going on."""
        _check_prefix(prefix)
        stale = [n for n in host_netns.list_netns() if n.startswith(f"{prefix}-")]
        left = _remove(stale)
        if left:
            raise NamespaceError(f"network namespaces still present after deletion: {' '.join(left)}")
        return stale

    # --- creating -------------------------------------------------------------------------

    def check_name(self, name: str) -> None:
        """ValueError unless ``name`` is ``<prefix>-<something>`` and a valid namespace name."""
        if not isinstance(name, str) or not name.startswith(f"{self.prefix}-") or name == f"{self.prefix}-":
            raise ValueError(f"namespace name {name!r} does not start with {self.prefix + '-'!r}")
        try:
            host_netns.netns_path(name)
        except host_netns.NetnsError as e:
            raise ValueError(str(e)) from None

    def add(self, name: str, *, sysctls: Mapping[str, str] | None = None, lo_up: bool = True) -> str:
        """Create namespace ``name`` (``lo`` up, then ``sysctls`` written inside: keys as
        ``net.ipv4.ip_forward`` or ``net/ipv4/ip_forward``) and return its name. Refuses
        (ValueError) a name outside the prefix and a name that already exists."""
        self.check_name(name)
        if name in self._names or host_netns.exists(name):
            raise ValueError(f"network namespace {name!r} already exists (not made by this registry: "
                             "it is neither adopted nor deleted)")
        # ip creates /run/netns/NAME exclusively: if someone made it meanwhile, this fails and
        # the name is not recorded; if it fails later on, ip removes the file itself
        _ip("netns", "add", name)
        self._names.append(name)  # recorded before anything else can fail
        if lo_up:
            self.up(name, "lo")
        if sysctls:
            self.sysctl(name, sysctls)
        return name

    def remove(self, name: str) -> None:
        """Remove one namespace of this registry now (its processes and veths with it)."""
        self._registered(name)
        veths = [v for v in self._veths if name in (v.ns_a, v.ns_b)]
        left = _remove([name], veths)
        self._veths = [v for v in self._veths if v not in veths]
        if left:
            raise NamespaceError(f"network namespace {name} still present after deletion")
        self._names.remove(name)

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> Veth:
        """A veth pair: ``if_a`` in ``ns_a``, its peer ``if_b`` in ``ns_b`` (both namespaces
        of this registry), created in one request inside ``ns_a``; both ends are down."""
        self._registered(ns_a)
        self._registered(ns_b)
        _ip("-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        v = Veth(ns_a, if_a, ns_b, if_b)
        self._veths.append(v)
        return v

    # --- inside a namespace of this registry ----------------------------------------------

    def ip(self, name: str, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """``ip -n NAME ARGS...`` (only in a namespace of this registry)."""
        self._registered(name)
        return _ip("-n", name, *args, check=check, timeout=timeout)

    def up(self, name: str, dev: str) -> None:
        self.ip(name, "link", "set", dev, "up")

    def addr(self, name: str, dev: str, cidr: str) -> None:
        """Add address ``cidr`` (``10.50.1.4/24``) to ``dev``."""
        self.ip(name, "addr", "add", cidr, "dev", dev)

    def route(self, name: str, dst: str, dev: str, *extra: str) -> None:
        """Add a route to ``dst`` over ``dev`` (on-link unless ``extra`` says ``via ...``)."""
        self.ip(name, "route", "add", dst, "dev", dev, *extra)

    def sysctl(self, name: str, values: Mapping[str, str]) -> None:
        self._registered(name)
        host_netns.write_sysctls(name, {_sysctl_key(k): v for k, v in values.items()})

    def _registered(self, name: str) -> None:
        if name not in self._names:
            raise ValueError(f"network namespace {name!r} was not made by this registry")
