"""Fixtures for the lab's integration tests (loaded by integration/conftest.py as a plugin).

Network safety: every lab made here is named ``it<pid><tag>`` so its namespaces are
``nsgl-it<pid><tag>-*``; they hold every bridge and veth the lab creates (nothing is ever
created in the root namespace), and teardown runs ``lab down`` for each lab whatever
happened in the test, then checks that none of its namespaces is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from host_helpers import stop_process
from nsg_agent.desired import loader
from nsg_agent.host import netns as host_netns
from nsg_agent.lab import build, naming, probe
from nsg_agent.lab.reconcile import reconcile_lab
from nsg_agent.lab.topology import LabPlan
from nsg_agent.semantics import resolver as semantics

REPO = Path(__file__).resolve().parent.parent
NSG_AGENT = str(REPO / ".venv" / "bin" / "nsg-agent")
EXAMPLES = REPO / "examples"


def lab_name(tag: str) -> str:
    """A lab name unique to this test process: it<pid><tag> (at most 20 characters)."""
    name = f"it{os.getpid() % 100000}{tag}"[: naming.MAX_LAB_NAME].rstrip("-")
    return naming.check_lab_name(name)


def leftovers(lab: str) -> list[str]:
    """Namespaces of ``lab`` still present, plus its state file if any."""
    left = build.lab_namespaces(lab)
    if naming.state_file(lab).exists():
        left.append(str(naming.state_file(lab)))
    return left


def root_lab_links() -> list[str]:
    """Lab-style interfaces (nsgb*/nsgp*/nsgh*/nsgt*) in the root namespace: must be none."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if n[:4] in ("nsgb", "nsgp", "nsgh", "nsgt")]


@dataclass
class Lab:
    """A running lab built from ``file`` (a YAML desired state in the test's tmp dir)."""

    name: str
    file: Path

    @property
    def plan(self) -> LabPlan:
        plan = build.previous_plan(self.name)
        assert plan is not None, f"lab {self.name} has no state file"
        return plan

    def loaded(self) -> loader.LoadedState:
        return loader.load(self.file)

    def policy(self):
        ld = self.loaded()
        return semantics.resolve(ld.state, ld.tags)

    def up(self, text: str | None = None):
        """(Re)write the file if given, then reconcile topology and rules, as ``lab up``."""
        if text is not None:
            write_atomically(self.file, text)
        return reconcile_lab(self.loaded(), self.name, source=self.file)

    def probe(self, ports: list[int] | None = None, only: list[str] | None = None) -> probe.Report:
        return probe.run_probes(self.policy(), self.plan, ports, only=only)

    def cell(self, report: probe.Report, src: str, dst: str, service: str) -> probe.Result:
        found = [r for r in report.results if r.cell.source.name == src
                 and r.cell.destination.name == dst and r.cell.service.label == service]
        assert len(found) == 1, f"no cell {src} -> {dst} {service}"
        return found[0]

    def inodes(self) -> dict[str, int | None]:
        """Namespace identity: the inode of each of the lab's namespaces."""
        return {ns: host_netns.netns_inode(ns) for ns in self.plan.namespaces()}


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def lab_context(tmp_dir: Path) -> Iterator[Callable[..., Lab]]:
    """Yields ``make(tag, text=None, file=None, up=True) -> Lab``; every lab made is torn
    down afterwards, and the teardown asserts nothing of it is left."""
    made: list[str] = []

    def make(tag: str, text: str | None = None, file: Path | None = None, up: bool = True) -> Lab:
        name = lab_name(tag)
        if file is None:
            file = tmp_dir / f"{tag}.yaml"
            file.write_text(text or "")
        build.destroy(name)  # a leftover of an earlier crashed run with the same pid
        made.append(name)
        lab = Lab(name, Path(file))
        if up:
            lab.up()
        return lab

    try:
        yield make
    finally:
        problems = []
        for name in made:
            try:
                build.destroy(name)
            except Exception as e:  # noqa: BLE001 - keep tearing down the others
                problems.append(f"{name}: {e}")
            if leftovers(name):
                problems.append(f"{name}: left behind {leftovers(name)}")
        assert not problems, problems


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """Build labs for one test; all of them are removed (and checked gone) afterwards."""
    with lab_context(tmp_path) as make:
        yield make


@pytest.fixture(scope="module")
def module_labs(tmp_path_factory) -> Iterator[Callable[..., Lab]]:
    """Like make_lab, shared by the tests of one module."""
    with lab_context(tmp_path_factory.mktemp("labs")) as make:
        yield make


class LabDaemon:
    """``nsg-agent lab run FILE`` as a subprocess, with its JSON log in a file."""

    def __init__(self, lab: Lab, log_path: Path, via_run_flag: bool = False):
        self.lab = lab
        self.log_path = log_path
        log = open(log_path, "w")
        # Two spellings of the same daemon: "lab run FILE" and "run --lab FILE".
        head = (["run", "--lab", str(lab.file), "--lab-name", lab.name] if via_run_flag
                else ["lab", "run", str(lab.file), "--name", lab.name])
        self.proc = subprocess.Popen(
            [NSG_AGENT, *head, "--debounce", "0.1", "--resync", "1"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    def log(self) -> str:
        return self.log_path.read_text()

    def applied_count(self) -> int:
        """Applies caused by the file (or startup): link events after a topology change may
        trigger extra reconciles, which must not be mistaken for the next edit's apply."""
        n = 0
        for line in self.log().splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "config.applied" and str(ev.get("reason", "")).startswith(("file", "startup")):
                n += 1
        return n

    def wait_applied(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.applied_count() >= count:
                return
            assert self.proc.poll() is None, f"lab run exited:\n{self.log()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"lab run did not apply #{count} within {timeout}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def lab_daemon(tmp_path: Path) -> Iterator[Callable[[Lab], LabDaemon]]:
    """Start ``nsg-agent lab run`` for a lab; always stopped (SIGTERM, then SIGKILL) after."""
    started: list[LabDaemon] = []

    def start(lab: Lab, via_run_flag: bool = False) -> LabDaemon:
        d = LabDaemon(lab, tmp_path / f"lab-run-{len(started)}.log", via_run_flag)
        started.append(d)
        return d

    try:
        yield start
    finally:
        for d in started:
            d.stop()


def poll(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


PYTHON = sys.executable
