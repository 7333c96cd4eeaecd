"""A Debian 12 container booted with systemd-nspawn, for testing nsg-agent under real systemd.

What this module does, in order (see docs/systemd.md):

1. :func:`ensure_rootfs` makes a Debian bookworm tree with ``debootstrap --variant=minbase``
   from the mirror apt already uses on this machine, once, and caches it under
   ``/var/cache/nsg-agent-test/bookworm-rootfs`` (``$NSG_TEST_CACHE`` overrides the parent).
   The package list is the brief's plus every package scripts/install.sh checks for, so the
   same install script runs inside without reaching apt. The cache is keyed on that list.
2. :func:`ensure_wheelhouse` downloads the project's Python dependencies (and the build
   backend) as wheels on the host, also cached, so pip inside the container needs no network.
3. :class:`Container` copies the cached tree to a temp dir, runs scripts/provision.sh in it
   under ``systemd-nspawn --private-network`` (no network at all; pip reads the wheelhouse),
   creates a throwaway network namespace ``nsgs-<id>`` with a veth to a peer namespace
   ``nsgs-<id>-peer``, and boots ``systemd-nspawn --boot`` *inside that namespace*
   (``--network-namespace-path``), so the agent's rules land there and nowhere else. Neither
   namespace has a route out.
4. Commands run inside with ``nsenter -t <container PID 1> -a``. Teardown kills the container's
   PID 1 and the nspawn process by pid (the host has no machined and no systemd: nothing is
   ever killed by name), removes the cgroups nspawn made, deletes both namespaces (made and
   removed by nsg_agent.testing.Namespaces) and the tree.

Network safety: every namespace and veth is named ``nsgs-*`` / ``nsgs*``; the root namespace
gets no rule, address or route; addresses are 10.61.x.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from nsg_agent.testing import NamespaceError, Namespaces

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("NSG_TEST_CACHE", "/var/cache/nsg-agent-test"))
SUITE = "bookworm"
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "iproute2", "nftables", "python3-nftables",
                 "python3-venv", "python3", "procps")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PREFIX = "nsgs"
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Addresses of the container's NIC and of the peer (a 10.x VNet; never the uplink's range).
CONTAINER_ADDR = "10.61.1.4"
PEER_ADDR = "10.61.1.5"
PREFIXLEN = 24


class HarnessError(RuntimeError):
    """The container could not be built, booted or reached."""


def log(msg: str) -> None:
    print(f"[nspawn] {msg}", file=sys.stderr, flush=True)


def sh(*cmd: str, timeout: float = 60.0, check: bool = True, env: dict | None = None,
       input: str | None = None) -> subprocess.CompletedProcess:
    """Run a host command, bounded in time; raise with its output when it fails."""
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env,
                       input=input)
    if check and p.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def missing_tools() -> list[str]:
    """Host tools the harness needs that are not installed."""
    tools = ("systemd-nspawn", "debootstrap", "nsenter", "ip", "tar")
    return [t for t in tools if shutil.which(t) is None]


# --- the cached root file system --------------------------------------------------------

def apt_mirror(sources: Sequence[str] | None = None) -> str:
    """The Debian mirror apt is configured with here (deb822 ``URIs:`` or one-line ``deb``),
    for the ``main`` archive (not -security); deb.debian.org when none is found."""
    files = sources if sources is not None else (
        ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
        + sorted(glob.glob("/etc/apt/sources.list.d/*.sources")))
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                suites = fields.get("Suites", "").split()
                if SUITE in suites and "Components" in fields:
                    for uri in fields.get("URIs", "").split():
                        if "security" not in uri:
                            return uri.rstrip("/")
        else:
            for line in text.splitlines():
                m = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m and m.group(2) == SUITE and "security" not in m.group(1):
                    return m.group(1).rstrip("/")
    return DEFAULT_MIRROR


def install_script_packages(install_sh: Path = REPO / "scripts" / "install.sh") -> list[str]:
    """The Debian packages scripts/install.sh checks for (its ``apt_pkgs=(...)`` array)."""
    m = re.search(r"apt_pkgs=\(([^)]*)\)", install_sh.read_text())
    if not m:
        raise HarnessError(f"no apt_pkgs=(...) in {install_sh}")
    return m.group(1).split()


def rootfs_packages() -> list[str]:
    return sorted(set(BASE_PACKAGES) | set(install_script_packages()))


def _key(items: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_rootfs() -> Path:
    """The cached Debian 12 tree, built by debootstrap if absent or made from another package
    list (about 75 s and 320 MB here)."""
    pkgs = rootfs_packages()
    key = f"{SUITE} {_key(pkgs)}"
    root = CACHE / f"{SUITE}-rootfs"
    stamp = root / ".nsg-rootfs-key"
    with _cache_lock():
        if stamp.is_file() and stamp.read_text().strip() == key:
            return root
        partial = CACHE / f"{SUITE}-rootfs.partial"
        for d in (partial, root):
            if d.exists():
                shutil.rmtree(d)
        mirror = apt_mirror()
        log(f"debootstrap {SUITE} from {mirror} into {partial} ({len(pkgs)} extra packages)")
        t0 = time.monotonic()
        sh("debootstrap", "--variant=minbase", f"--include={','.join(pkgs)}", SUITE,
           str(partial), mirror, timeout=900)
        # A container boots faster and quieter without these; none matters to the test.
        for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                     "dpkg-db-backup.timer", "fstrim.timer"):
            for link in partial.glob(f"etc/systemd/system/*.wants/{unit}"):
                link.unlink()
        (partial / "etc" / "hostname").write_text("nsgs-container\n")
        (partial / ".nsg-rootfs-key").write_text(key + "\n")
        partial.rename(root)
        log(f"rootfs ready in {time.monotonic() - t0:.0f} s")
        return root


def wheel_requirements(pyproject: Path = REPO / "pyproject.toml", extras: Sequence[str] = ()) -> list[str]:
    """What pip inside the container needs: the project's dependencies (plus ``extras``) and
    its build backend (an editable install builds in an isolated environment)."""
    data = tomllib.loads(pyproject.read_text())
    reqs = list(data["project"].get("dependencies", []))
    for extra in extras:
        reqs += data["project"].get("optional-dependencies", {}).get(extra, [])
    reqs += data.get("build-system", {}).get("requires", [])
    reqs.append("wheel")
    return sorted(set(reqs))


def container_python_version(rootfs: Path) -> str:
    versions = sorted(p.name[len("python"):] for p in (rootfs / "usr" / "bin").glob("python3.*")
                      if re.fullmatch(r"python3\.\d+", p.name))
    if not versions:
        raise HarnessError(f"no python3.N in {rootfs}/usr/bin")
    return versions[-1]


# Dependencies PyPI has as source distributions only (pure Python; built with the setuptools
# wheel the wheelhouse holds anyway).
SDIST_ONLY = ("argparse-manpage",)


def ensure_wheelhouse(rootfs: Path, extras: Sequence[str] = ()) -> Path:
    """A directory of wheels for the container's Python, downloaded from PyPI once."""
    reqs = wheel_requirements(extras=extras)
    pyver = container_python_version(rootfs)
    wh = CACHE / f"wheelhouse-py{pyver}-{_key(reqs)}"
    done = wh / ".complete"
    with _cache_lock():
        if done.is_file():
            return wh
        if wh.exists():
            shutil.rmtree(wh)
        wh.mkdir(parents=True)
        log(f"downloading {len(reqs)} requirements as wheels for Python {pyver} into {wh}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        binary = [r for r in reqs if not r.lower().startswith(SDIST_ONLY)]
        sh(sys.executable, "-m", "pip", "download", "-q", "-d", str(wh), "--only-binary=:all:",
           "--python-version", pyver, "--implementation", "cp",
           "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64",
           *binary, timeout=600, env=env)
        sdist = [r for r in reqs if r.lower().startswith(SDIST_ONLY)]
        if sdist:  # pure-Python packages published as sdists only: pip builds them offline
            sh(sys.executable, "-m", "pip", "download", "-q", "-d", str(wh), "--no-deps",
               "--no-binary=:all:", *sdist, timeout=600, env=env)
        done.write_text("\n".join(reqs) + "\n")
        return wh


# --- processes and cgroups --------------------------------------------------------------

def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            kids += [int(x) for x in Path(task).read_text().split()]
        except OSError:
            pass
    return kids


def _nspid(pid: int) -> list[str]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return line.split()[1:]
    except OSError:
        pass
    return []


def find_container_init(nspawn_pid: int) -> int | None:
    """The host pid of the container's PID 1: the descendant of the nspawn process that is
    pid 1 in its own pid namespace."""
    todo = list(_children(nspawn_pid))
    while todo:
        pid = todo.pop(0)
        ns = _nspid(pid)
        if len(ns) >= 2 and ns[-1] == "1":
            return pid
        todo += _children(pid)
    return None


def _cgroup_roots() -> list[Path]:
    """Where a cgroup for the container goes: the v2 tree and, on a hybrid host, the named
    systemd v1 tree too (nspawn uses both)."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():  # pure cgroup v2
        return [base]
    return [p for p in (base / "unified", base / "systemd") if (p / "cgroup.procs").exists()]


class Cgroup:
    """One cgroup per container (``nsgs-<id>`` in each hierarchy), so everything nspawn
    creates (its payload/ and supervisor/ sub-groups) lives under it and can be removed."""

    def __init__(self, name: str):
        self.paths = [root / name for root in _cgroup_roots()]
        for p in self.paths:
            p.mkdir(exist_ok=True)

    def enter(self) -> None:
        """Move the calling process in (a Popen preexec_fn)."""
        for p in self.paths:
            (p / "cgroup.procs").write_text(str(os.getpid()))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for p in self.paths:
            for procs in p.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    found |= {int(x) for x in procs.read_text().split()}
        return found

    def kill_all(self) -> None:
        """SIGKILL every process still in the cgroup (by pid; cgroup.kill where the kernel
        has it)."""
        for p in self.paths:
            kill = p / "cgroup.kill"
            if kill.exists():
                with contextlib.suppress(OSError):
                    kill.write_text("1")
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for p in self.paths:
            while p.exists():
                dirs = sorted((d for d in p.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts))
                for d in dirs + [p]:
                    with contextlib.suppress(OSError):
                        d.rmdir()
                if p.exists():
                    if time.monotonic() > deadline:
                        log(f"cgroup {p} could not be removed")
                        break
                    time.sleep(0.1)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4]
        if mp.startswith(prefix) or mp == prefix[:-1]:
            found.append(mp)
    return found


# --- the container ----------------------------------------------------------------------

@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Container:
    """A booted Debian container in its own throwaway network namespace.

    Use as a context manager (``with Container.create(rootfs, wheelhouse) as c:``): the tree is
    copied and provisioned on entry; :meth:`boot` starts systemd; everything is torn down on
    exit, whatever happened.
    """

    rootfs: Path
    wheelhouse: Path
    ident: str = field(default_factory=lambda: secrets.token_hex(3))
    workdir: Path | None = None
    nspawn: subprocess.Popen | None = None
    init_pid: int | None = None
    cgroup: Cgroup | None = None
    console_log: Path | None = None
    spaces: Namespaces = field(default_factory=lambda: Namespaces(prefix=PREFIX))

    # names (<= 15 characters for interfaces)
    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.ident}"

    @property
    def peer_netns(self) -> str:
        return f"{PREFIX}-{self.ident}-peer"

    @property
    def ifname(self) -> str:
        """The container's NIC (named in the desired state's ``interface:``)."""
        return f"{PREFIX}-{self.ident}"

    @property
    def peer_ifname(self) -> str:
        return f"{PREFIX}-{self.ident}p"

    @property
    def tree(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "root"

    def path(self, inner: str) -> Path:
        """The host path of a file inside the container."""
        return self.tree / inner.lstrip("/")

    def __enter__(self) -> "Container":
        try:
            self._prepare()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    # -- setup

    def _prepare(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{self.ident}-", dir="/var/tmp"))
        t0 = time.monotonic()
        sh("cp", "-a", "--reflink=auto", str(self.rootfs), str(self.tree), timeout=300)
        log(f"copied rootfs to {self.tree} in {time.monotonic() - t0:.1f} s")
        self.cgroup = Cgroup(f"{PREFIX}-{self.ident}")
        self._make_network()

    def _make_network(self) -> None:
        """The container's namespace and its peer, joined by a veth (each end made directly
        inside its namespace); recorded in ``self.spaces``, which teardown empties."""
        for ns in (self.netns, self.peer_netns):
            self.spaces.add(ns)
        self.spaces.veth(self.netns, self.ifname, self.peer_netns, self.peer_ifname)
        for ns, dev, addr in ((self.netns, self.ifname, CONTAINER_ADDR),
                              (self.peer_netns, self.peer_ifname, PEER_ADDR)):
            self.spaces.addr(ns, dev, f"{addr}/{PREFIXLEN}")
            self.spaces.up(ns, dev)

    def run_offline(self, *cmd: str, binds_ro: Sequence[tuple[Path, str]] = (),
                    setenv: dict[str, str] | None = None, timeout: float = 300.0) -> RunResult:
        """Run ``cmd`` in the (not booted) tree with ``systemd-nspawn --private-network``: a
        network namespace with only ``lo``, so nothing inside can reach out."""
        args = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--private-network",
                "--pipe", f"--machine={self.netns}-setup", "-D", str(self.tree)]
        for src, dst in binds_ro:
            args.append(f"--bind-ro={src}:{dst}")
        for k, v in (setenv or {}).items():
            args.append(f"--setenv={k}={v}")
        args += ["--", *cmd]
        assert self.cgroup is not None
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=self.cgroup.enter, stdin=subprocess.DEVNULL)
        return RunResult(p.returncode, p.stdout, p.stderr)

    def provision(self, config: Path, extra_args: Sequence[str] = ("--no-start",),
                  source: Path = REPO) -> RunResult:
        """Run scripts/provision.sh inside the tree, from a read-only bind of ``source`` (this
        checkout), with pip reading only the wheelhouse."""
        r = self.run_offline(
            "/bin/bash", "/mnt/nsg-src/scripts/provision.sh", "--config", f"/mnt/nsg-config/{config.name}",
            *extra_args,
            binds_ro=[(source, "/mnt/nsg-src"), (self.wheelhouse, "/mnt/wheels"), (config.parent, "/mnt/nsg-config")],
            setenv={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/mnt/wheels",
                    "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1",
                    "PYTHONDONTWRITEBYTECODE": "1"},
            timeout=600)
        if r.returncode != 0:
            raise HarnessError(f"provision.sh failed ({r.returncode})\n{r.stdout}\n{r.stderr}")
        return r

    def boot(self, timeout: float = 90.0) -> None:
        """``systemd-nspawn --boot`` in the throwaway namespace; returns once systemd reports
        the system running (or degraded)."""
        assert self.workdir is not None and self.cgroup is not None
        self.console_log = self.workdir / "console.log"
        out = open(self.console_log, "wb")
        # nspawn keeps CAP_NET_ADMIN in the container's bounding set only with
        # --private-network, not with --network-namespace-path: grant it explicitly (the
        # namespace is the container's own), or no service inside could use nftables.
        args = ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=passive",
                f"--machine={self.netns}", "-D", str(self.tree),
                f"--network-namespace-path=/run/netns/{self.netns}", "--capability=CAP_NET_ADMIN"]
        self.nspawn = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, preexec_fn=self.cgroup.enter)
        out.close()
        deadline = time.monotonic() + timeout
        while self.init_pid is None:
            if self.nspawn.poll() is not None:
                raise HarnessError(f"systemd-nspawn exited {self.nspawn.returncode}\n{self.console()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"no container init after {timeout} s\n{self.console()}")
            self.init_pid = find_container_init(self.nspawn.pid)
            if self.init_pid is None:
                time.sleep(0.1)
        state = ""
        while time.monotonic() < deadline:
            r = self.exec("systemctl", "is-system-running", timeout=10, check=False)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                log(f"container {self.netns} booted (init pid {self.init_pid}, {state})")
                return
            if self.nspawn.poll() is not None:
                break
            time.sleep(0.2)
        raise HarnessError(f"container not up (state {state!r})\n{self.console()}")

    def console(self, tail: int = 60) -> str:
        if self.console_log is None or not self.console_log.exists():
            return ""
        lines = self.console_log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:])

    # -- using it

    def exec(self, *cmd: str, timeout: float = 30.0, check: bool = True,
             input: str | None = None) -> RunResult:
        """Run ``cmd`` inside the booted container (all its namespaces) via nsenter."""
        if self.init_pid is None:
            raise HarnessError("the container is not booted")
        p = subprocess.run(["nsenter", "-t", str(self.init_pid), "-a", "--", *cmd],
                           capture_output=True, text=True, timeout=timeout, input=input,
                           env={"PATH": INNER_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "",
                                "SYSTEMD_COLORS": "0"})
        r = RunResult(p.returncode, p.stdout, p.stderr)
        if check and p.returncode != 0:
            raise HarnessError(f"in container: {' '.join(cmd)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
        return r

    def unit_properties(self, unit: str, *props: str) -> dict[str, str]:
        r = self.exec("systemctl", "show", unit, "-p", ",".join(props))
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def journal(self, unit: str, lines: int = 80) -> str:
        r = self.exec("journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", unit,
                      check=False)
        return r.stdout + r.stderr

    # -- teardown

    def teardown(self) -> None:
        """Kill the container (its PID 1, then nspawn, both by pid), remove its cgroups,
        namespaces and tree. Safe to call more than once and after a failed setup."""
        for pid in (self.init_pid, self.nspawn.pid if self.nspawn else None):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.nspawn is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.nspawn.wait(timeout=15)
        if self.cgroup is not None:
            self.cgroup.kill_all()
            self.cgroup.remove()
        try:
            self.spaces.teardown()  # only the namespaces this container made; what runs inside is killed
        except NamespaceError as e:
            log(f"{e}")
        if self.workdir is not None and self.workdir.exists():
            leftover = _mounts_under(self.workdir)
            for mp in sorted(leftover, key=len, reverse=True):
                sh("umount", "-l", mp, check=False)
            if _mounts_under(self.workdir):
                log(f"not removing {self.workdir}: still mounted")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        for machine in (self.netns, f"{self.netns}-setup"):
            p = Path("/run/systemd/nspawn/propagate") / machine
            if p.is_dir() and not _mounts_under(p):
                shutil.rmtree(p, ignore_errors=True)
        self.init_pid = None


# --- talking to the container over the network --------------------------------------------

LISTENER = r"""
import select, socket, sys, time
addr, ports, life = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], float(sys.argv[3])
socks = []
for p in ports:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, p)); s.listen(64); socks.append(s)
print("listening", flush=True)
end = time.monotonic() + life
while time.monotonic() < end:
    r, _, _ = select.select(socks, [], [], 0.5)
    for s in r:
        c, _ = s.accept(); c.close()
"""

PROBE = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("timeout")
except OSError as e:
    print(f"error {e.errno}")
"""


@contextlib.contextmanager
def tcp_listener(netns: str, addr: str, ports: Sequence[int], lifetime: float = 240.0) -> Iterator[None]:
    """Accept-and-close TCP servers on ``addr:ports`` inside ``netns`` (so a blocked port is
    the firewall's doing, not a missing server); they stop by themselves after ``lifetime``."""
    p = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", LISTENER, addr,
                          ",".join(map(str, ports)), str(lifetime)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline() if p.stdout else ""
        if line.strip() != "listening":
            raise HarnessError(f"listener did not start: {line!r} {p.stderr.read() if p.stderr else ''}")
        yield
    finally:
        p.kill()
        p.wait(timeout=10)
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()


def tcp_probe(netns: str, addr: str, port: int, timeout: float = 1.5) -> str:
    """One TCP connect from ``netns``: 'open', 'refused', 'timeout' or 'error N'."""
    r = sh("ip", "netns", "exec", netns, sys.executable, "-c", PROBE, addr, str(port), str(timeout),
           timeout=timeout + 10)
    return r.stdout.strip()


def wait_for(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s (last: {last!r})")
        time.sleep(interval)
