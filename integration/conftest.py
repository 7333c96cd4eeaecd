"""Fixtures for the integration tests: host-mode helpers and the lab's fixtures, kept in
uniquely named modules so tests/ and integration/ can be collected in one run."""

from fleet_fixtures import *  # noqa: F401,F403
from host_helpers import *  # noqa: F401,F403
from lab_fixtures import *  # noqa: F401,F403
