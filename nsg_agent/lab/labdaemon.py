"""The lab daemon (``nsg-agent lab run FILE``): the agent's own reconciling daemon
(``nsg_agent.daemon.reconciler``), pointed at a lab.

It reuses ``nsg_agent.daemon.reconciler.Reconciler`` and ``Daemon`` unchanged (watchdog on the file and the
service-tag files with debounce, periodic resync that repairs a deleted or edited table, bad
input keeps the last good state, retries with backoff, SIGHUP/SIGTERM, status file), and
changes one step: ``load`` first makes the lab's topology match the file
(``reconcile_topology``: add, remove or move NICs, readdress, change hosts; incremental, so
unchanged namespaces keep their identity) and then compiles for the fabric
(``FabricPlacement``) instead of the host's interfaces. The backend is libnftables in the
fabric namespace; if the fabric had to be rebuilt, a backend for the new namespace replaces
the old one. Link events in the fabric (a NIC namespace deleted behind the lab's back takes
its bridge port with it) trigger a reconcile, which rebuilds what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from nsg_agent.daemon.reconciler import Daemon, Desired, Reconciler, file_digest, rule_index_json
from nsg_agent.daemon.status import StatusStore, ruleset_sha256
from nsg_agent.desired import loader
from nsg_agent.lab import naming
from nsg_agent.lab.reconcile import reconcile_topology, record_rules_raw
from nsg_agent.semantics import resolver as semantics


def fabric_compile(policy: Any, interfaces: dict[str, str], mode: str) -> Any:
    from nsg_agent.compiler import FabricPlacement, compile_ruleset

    return compile_ruleset(policy, FabricPlacement(), mode=mode)


class LabReconciler(Reconciler):
    """A Reconciler whose every load also reconciles the lab's topology."""

    def __init__(self, config: str | os.PathLike, lab: str, *,
                 backend_factory: Callable[[str], Any] | None = None,
                 state_dir: Path = naming.STATE_DIR, store: StatusStore | None = None, **kw: Any):
        self.lab = lab
        self.lab_state_dir = state_dir
        self.fabric = naming.fabric_netns(lab)
        self._backend_factory = backend_factory or _nft_backend
        self._fabric_inode: int | None = None
        # The fabric must exist before a backend can enter it: build the topology now.
        inputs = list(config) if isinstance(config, (list, tuple)) else [config]
        loaded = loader.load(inputs, **(kw.get("load_options") or {}))
        reconcile_topology(loaded, lab, source=inputs[0], state_dir=state_dir)
        self._fabric_inode = _inode(self.fabric)
        super().__init__(config, self._backend_factory(self.fabric),
                         store or StatusStore(netns=self.fabric), compile_fn=fabric_compile, **kw)

    def load(self) -> Desired:
        loaded = loader.load(self.inputs, **self.load_options)  # a bad file raises here: topology untouched
        changes = reconcile_topology(loaded, self.lab, source=self.config,
                                     state_dir=self.lab_state_dir)
        if not changes.empty:
            self.log.info("lab.topology_changed", lab=self.lab, **changes.as_dict())
        inode = _inode(self.fabric)
        if inode != self._fabric_inode:  # the fabric was rebuilt: re-enter the new one
            old, self.backend = self.backend, self._backend_factory(self.fabric)
            self._fabric_inode = inode
            self.kernel_fingerprint = None
            close = getattr(old, "close", None)
            if close:
                close()
            self.log.warning("lab.fabric_rebuilt", lab=self.lab, fabric=self.fabric)
        policy = semantics.resolve(loaded.state, loaded.tags)
        rs = self.compile_fn(policy, {}, self.mode)
        files = {str(Path(p).absolute()): (file_digest(Path(p)) or "") for p in loaded.files}
        files[str(loaded.path.absolute())] = loaded.sha256
        return Desired(loaded, policy, list(rs.commands), dict(rs.summary),
                       rule_index_json(rs.rule_index), ruleset_sha256(rs.commands), files)


    def _apply(self, desired: Desired, reason: str, *args: Any, **kwargs: Any) -> bool:
        ok = super()._apply(desired, reason, *args, **kwargs)
        if ok:
            record_rules_raw(self.lab, desired.loaded.sha256, self.mode, desired.summary,
                             self.lab_state_dir)
        return ok


def _inode(name: str) -> int | None:
    from nsg_agent.lab.nsexec import netns_inode

    return netns_inode(name)


def _nft_backend(netns: str) -> Any:
    from nsg_agent.kernel.backend import NftBackend

    return NftBackend(netns=netns)


def lab_daemon(config: Any, lab: str, *, mode: str = "classify",
               debounce: float | None = None, resync: float | None = None,
               state_dir: Path = naming.STATE_DIR, load_options: dict | None = None) -> Daemon:
    kw: dict[str, Any] = {"mode": mode, "load_options": load_options or {}}
    if debounce is not None:
        kw["debounce"] = debounce
    if resync is not None:
        kw["resync"] = resync
    rec = LabReconciler(config, lab, state_dir=state_dir, **kw)
    return Daemon(rec, netns=rec.fabric)
