"""The lab daemon (``nsg-agent lab run FILE``): the agent's own reconciling daemon
(``nsg_agent.daemon.reconciler``), pointed at a lab.

It runs ``nsg_agent.daemon.reconciler.Reconciler`` and ``nsg_agent.daemon.shell.Daemon``
unchanged (watchdog on the file and the service-tag files with debounce, periodic resync that
repairs a deleted or edited table, bad input keeps the last good state, retries with backoff,
SIGHUP/SIGTERM, status file), given a
:class:`LabTarget` instead of the host's: before each compile it makes the lab's topology match the file
(``reconcile_topology``: add, remove or move NICs, readdress, change hosts; incremental, so
unchanged namespaces keep their identity) and then compiles for the fabric
(``FabricPlacement``) instead of the host's interfaces. The backend is libnftables in the
fabric namespace; if the fabric had to be rebuilt, a backend for the new namespace replaces
the old one. Link events in the fabric (a NIC namespace deleted behind the lab's back takes
its bridge port with it) trigger a reconcile, which rebuilds what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from nsg_agent.daemon.reconciler import Desired, Reconciler
from nsg_agent.daemon.shell import Daemon
from nsg_agent.daemon.status import StatusStore
from nsg_agent.desired import loader
from nsg_agent.lab import naming
from nsg_agent.lab.reconcile import reconcile_topology, record_rules_raw


def fabric_compile(policy: Any, interfaces: dict[str, str], mode: str, elements: Any = None,
                   flow_logs: bool = False) -> Any:
    from nsg_agent.compiler import FabricPlacement, compile_ruleset

    return compile_ruleset(policy, FabricPlacement(), mode=mode, elements=elements, flow_logs=flow_logs)


class LabTarget:
    """The reconciler's target for a lab: its fabric namespace, in fabric placement. Before each
    compile the lab's topology is made to match the desired state; after each apply the rules
    are recorded for ``lab status``."""

    def __init__(self, config: Any, lab: str, *, backend_factory: Callable[[str], Any] | None = None,
                 state_dir: Path = naming.STATE_DIR, load_options: dict | None = None, mode: str = "classify",
                 flow_logs: bool = False):
        self.lab = lab
        self.mode = mode
        self.flow_logs = flow_logs
        self.state_dir = state_dir
        self.fabric = naming.fabric_netns(lab)
        self.backend_factory = backend_factory or _nft_backend
        self.source = str(config[0] if isinstance(config, (list, tuple)) else config)
        # The fabric must exist before a backend can enter it: build the topology now.
        inputs = list(config) if isinstance(config, (list, tuple)) else [config]
        loaded = loader.load(inputs, **(load_options or {}))
        reconcile_topology(loaded, lab, source=inputs[0], state_dir=state_dir)
        self._fabric_inode: int | None = _inode(self.fabric)
        self.backend = self.backend_factory(self.fabric)

    def prepare(self, loaded: Any, reconciler: Any) -> None:
        changes = reconcile_topology(loaded, self.lab, source=self.source, state_dir=self.state_dir)
        if not changes.empty:
            reconciler.log.info("lab.topology_changed", lab=self.lab, **changes.as_dict())
        inode = _inode(self.fabric)
        if inode != self._fabric_inode:  # the fabric was rebuilt: re-enter the new one
            self._fabric_inode = inode
            self.backend = self.backend_factory(self.fabric)
            reconciler.use_backend(self.backend)
            reconciler.log.warning("lab.fabric_rebuilt", lab=self.lab, fabric=self.fabric)

    def compile(self, policy: Any, mode: str, elements: Any = None) -> Any:
        return fabric_compile(policy, {}, mode, elements, self.flow_logs)

    def applied(self, desired: Desired) -> None:
        record_rules_raw(self.lab, desired.loaded.sha256, self.mode, desired.summary, self.state_dir)


def _inode(name: str) -> int | None:
    from nsg_agent.host.netns import netns_inode

    return netns_inode(name)


def _nft_backend(netns: str) -> Any:
    from nsg_agent.kernel.backend import NftBackend

    return NftBackend(netns=netns)


def lab_daemon(config: Any, lab: str, *, mode: str = "classify",
               debounce: float | None = None, resync: float | None = None,
               state_dir: Path = naming.STATE_DIR, load_options: dict | None = None,
               flow_logs: bool = False) -> Daemon:
    """``flow_logs``: compile the statements the flow-log collector reads (``lab run``: on)."""
    kw: dict[str, Any] = {"mode": mode, "load_options": load_options or {}}
    if debounce is not None:
        kw["debounce"] = debounce
    if resync is not None:
        kw["resync"] = resync
    target = LabTarget(config, lab, state_dir=state_dir, load_options=load_options, mode=mode, flow_logs=flow_logs)
    rec = Reconciler(config, target.backend, StatusStore(netns=target.fabric), target=target,
                     compile_fn=fabric_compile, **kw)
    return Daemon(rec, netns=target.fabric)
