"""Suite-wide hooks: tests marked ``root`` are skipped when not running as root."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked ``root`` need network namespaces and nftables: skip them unless root."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, nftables)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def pytest_addoption(parser):
    """``--long``: the fault suite (integration/faults) runs many more iterations.
    ``--update-goldens``: the golden tests write what the compiler produces instead of
    comparing (review the diff like code)."""
    parser.addoption("--long", action="store_true", default=False,
                     help="fault suite: many more iterations of every fault (minutes to hours)")
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="tests/test_compiler_golden.py: rewrite the golden files from the compiler's output")
