"""Fixtures for the unit tests live in foundation_helpers (a uniquely named module, so that
tests/ and integration/ can be collected in one run)."""

from foundation_helpers import *  # noqa: F401,F403  (fixtures and builders)
