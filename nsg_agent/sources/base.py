"""The ``DesiredSource`` seam between where a desired state lives and the daemon that enforces it.

A source hands out *snapshots*: one complete, validated desired state (``LoadedState``, exactly
what ``nsg_agent.desired.loader`` gives for files), where it came from, and the source's own
version of it. The daemon reads a snapshot when a source tells it something changed (``watch``)
and at each resync when ``changed`` says the source moved; it never sees a half-written or
unvalidated state, and it never learns whether the state lives in files or in a distributed
store. What a source may raise from ``read``:

- ``LoadError`` (an ``InputError``): the state is invalid; the daemon keeps the last good state
  and reports the problems (``config.invalid``).
- :class:`Unsettled`: a new version is being written (a file still open for writing, a file that
  changed while it was read); the daemon looks again shortly, the last good state stays.
- :class:`SourceUnavailable`: the source cannot be reached (a store down); the daemon keeps
  enforcing the last good state and retries with backoff.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from nsg_agent.desired.loader import LoadedState
from nsg_agent.errors import OperationFailed

# mark(reason, complete): something changed. complete=True when a whole new version is known to
# be there (a file renamed into place, a store's transaction): the daemon reconciles after a
# short settle time instead of the debounce.
Mark = Callable[[str, bool], None]
Stop = Callable[[], None]


class SourceUnavailable(OperationFailed):
    """The source cannot be read now; the last good state stays enforced."""


class Unsettled(Exception):
    """A new version is being written; read again shortly (``str(e)`` says why)."""


@dataclass(frozen=True)
class Snapshot:
    loaded: LoadedState
    origin: str  # what logs and the status file name: a path, or a store's URL and key prefix
    # name -> sha256 of each input at read time (files: every file read, tag files included)
    inputs: dict[str, str] = field(default_factory=dict)
    revision: int | None = None  # the source's version of this state (a store's revision); None for files
    published_at: float | None = None  # wall-clock time the source says this version was written
    # problems worth a warning that do not stop the apply, each {"path", "problem", ...}
    # (files anyone but root could write); the daemon logs each once (config.insecure)
    notices: tuple[dict[str, str], ...] = ()


class DesiredSource(Protocol):
    origin: str  # for logs and status before the first snapshot

    def read(self) -> Snapshot:
        """The current desired state, validated; see the module docstring for what it raises."""
        ...

    def changed(self) -> list[str]:
        """Cheap check at each resync: what moved since the last ``read`` (successful or not),
        named for the log; empty when nothing did. It catches what a watch missed."""
        ...

    def watch(self, mark: Mark) -> Stop:
        """Call ``mark`` whenever the source may have changed; returns the function that stops."""
        ...

    def close(self) -> None:
        ...
