"""Test doubles and throwaway namespaces that ship with the agent (as structlog ships
``structlog.testing``): the agent's own tests use them, and so can anyone who embeds the
reconciler or writes a source, a target or an observer for it.

- :class:`FakeBackend` — the kernel backend in memory: all-or-nothing transactions over the
  table model the tracer and delta use, fault injection (``fail_next``), counters
  (``hit``), someone else's edits (``tamper``, ``foreign_commit``) and hooks around each
  commit and listing.
- :class:`FakeClock` — a monotonic clock moved by hand.
- :class:`RecordingNotifier` — sd_notify messages kept instead of sent.
- :class:`Namespaces` (nsg_agent.host.namespaces, re-exported) — throwaway network
  namespaces and veths (``<prefix>-*``, the prefix starting with ``nsg``) recorded as they
  are made and always removed on exit, the processes left inside killed first;
  ``Namespaces.sweep(prefix)`` removes a crashed run's leftovers. Needs root; the integration
  tests, the fleet fixture, the benchmarks and the lab's kernel check build on it.

Nothing in the agent itself imports this package (tests/test_architecture.py).
"""

from nsg_agent.host.namespaces import NamespaceError, Namespaces
from nsg_agent.testing.backend import FakeBackend
from nsg_agent.testing.clock import FakeClock
from nsg_agent.testing.notify import RecordingNotifier

__all__ = ["FakeBackend", "FakeClock", "NamespaceError", "Namespaces", "RecordingNotifier"]
