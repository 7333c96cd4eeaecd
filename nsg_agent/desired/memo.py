"""What one load remembers for the next: explicit and owned, never module-global.

Reloading a desired state with thousands of unchanged prefixes must not parse them all
again, and a service-tag file of 100k prefixes must not be parsed again when its bytes did
not change. A :class:`LoadMemo` holds exactly that, and its owner decides its life: the
daemon keeps the last build's memo (nsg_agent.daemon.pipeline), a one-shot command starts
with an empty one, so no result depends on what an earlier call in the same process read.

The loader makes a memo *active* for the length of one load (``using``); the pydantic
validators and the service-tag parser, which cannot take an extra argument, read it with
``current()`` (a context variable: per thread, so two loads never share one by accident).
The output of a load is the same with any memo or none (tests/test_pipeline.py).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator

# Parsed service-tag files kept by (source, sha256 of the bytes): a few files, or versions.
TAG_FILES_KEPT = 4
# Prefix lists found valid, by (length, digest of the joined text).
PREFIX_LISTS_KEPT = 8192


@dataclass
class LoadMemo:
    tag_files: "OrderedDict[tuple[str, str], tuple[Any, tuple]]" = field(default_factory=OrderedDict)
    tag_values: dict[str, Any] = field(default_factory=dict)  # source -> ValueMemo of its last parse
    prefix_lists: dict[tuple[int, bytes], None] = field(default_factory=dict)

    def remember_prefix_list(self, key: tuple[int, bytes]) -> None:
        self.prefix_lists[key] = None
        while len(self.prefix_lists) > PREFIX_LISTS_KEPT:
            del self.prefix_lists[next(iter(self.prefix_lists))]

    def remember_tag_file(self, key: tuple[str, str], parsed: tuple[Any, tuple], values: Any) -> None:
        source = key[0]
        self.tag_values[source] = values
        while len(self.tag_values) > TAG_FILES_KEPT:
            del self.tag_values[next(iter(self.tag_values))]
        self.tag_files[key] = parsed
        while len(self.tag_files) > TAG_FILES_KEPT:
            self.tag_files.popitem(last=False)


_active: ContextVar[LoadMemo | None] = ContextVar("nsg_agent_load_memo", default=None)


@contextlib.contextmanager
def using(memo: LoadMemo | None) -> Iterator[LoadMemo]:
    """Make ``memo`` (or a fresh one) the active memo for the body."""
    memo = memo if memo is not None else LoadMemo()
    token = _active.set(memo)
    try:
        yield memo
    finally:
        _active.reset(token)


def current() -> LoadMemo:
    """The active memo; outside a load, a throwaway one (remembers nothing for anyone)."""
    memo = _active.get()
    return memo if memo is not None else LoadMemo()
