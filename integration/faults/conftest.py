"""Fixtures of the fault suite (see faultlib): its own namespaces (nsgf-*), daemons stopped by
pid, the iteration counts of default and ``--long`` mode, and the summary at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from faultlib import Agents, summary_lines

from host_helpers import HostPair, make_host_pair


@pytest.fixture
def fault_pair() -> Iterator[HostPair]:
    """``nsgf-s<id>`` / ``nsgf-c<id>`` joined by a veth; deleted afterwards, always."""
    with make_host_pair("nsgf") as pair:
        yield pair


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    a = Agents(tmp_path)
    try:
        yield a
    finally:
        a.close()


@pytest.fixture
def long_mode(request) -> bool:
    return bool(request.config.getoption("--long"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = summary_lines()
    if lines:
        terminalreporter.section("fault suite")
        for line in lines:
            terminalreporter.write_line(line)
