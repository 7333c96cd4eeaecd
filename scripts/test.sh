#!/usr/bin/env bash
# The test command (README, CI): installs what it needs, then runs the whole suite.
# Unit tests (tests/) need no root; integration tests (integration/) create throwaway network
# namespaces named nsg*-* and remove them, and are skipped when not root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/install.sh test
export PYTHONDONTWRITEBYTECODE=1
# Lint and type-check first (pyproject's [tool.ruff] and [tool.mypy]: mypy checks the pure
# packages): a finding fails the run like a failing test.
.venv/bin/ruff check nsg_agent tests integration bench conftest.py
.venv/bin/mypy
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
# Leave nothing behind, whatever happened (the fixtures already clean up; this is a guard).
.venv/bin/nsg-agent lab down --all >/dev/null 2>&1 || true
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^nsg[a-z]*-' || true); do
  ip netns delete "$ns" 2>/dev/null || true
done
exit $rc
