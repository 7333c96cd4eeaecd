"""The in-memory kernel: :class:`FakeBackend`, the backend protocol of
nsg_agent.kernel.backend over the table model of nsg_agent.kernel.state, for tests without root."""

from __future__ import annotations

import copy
import threading
from typing import Any, Callable

from nsg_agent.kernel.backend import (
    AGENT_TABLES,
    STAMP_CHAIN,
    TABLE_FAMILY,
    TABLE_NAME,
    assert_own_table,
    listing_fingerprint,
    stamp_of,
    table_counters,
)
from nsg_agent.kernel.errors import nft_error
from nsg_agent.kernel.state import NftRuleset, NftTable, RuleCounter


class FakeBackend:
    """An in-memory ``inet nsg_agent``: an :class:`~nsg_agent.kernel.state.NftRuleset` that
    applies the same JSON commands, all or nothing, like a kernel transaction (the model
    refuses what the kernel refuses: a missing object, a referenced chain or set deleted).

    Fault injection: ``fail_next("replace", "message", times=1)`` makes the next calls of
    that operation raise NftError. ``hit(comment, packets, bytes)`` bumps a rule's counter.

    Hooks, for what happens *between* the reconciler's steps (Calico's fake PreWrite/PreList):
    ``before_commit`` and ``after_commit`` callables get ``(op, commands)`` around each
    transaction (``replace``, ``transact``, ``delete_table``: commands ``[]``), inside the
    fake's lock, so a hook can commit as "someone else" exactly there (``foreign_commit``,
    ``tamper``); a ``before_commit`` hook that raises refuses the batch, nothing applied.
    ``before_list`` callables run before each listing.
    """

    def __init__(self, owns: tuple[tuple[str, str], ...] = AGENT_TABLES) -> None:
        self.owns = owns
        self.ruleset = NftRuleset()
        self._failures: dict[str, list[str]] = {}
        self.calls: list[str] = []
        self.batches: list[list[dict]] = []
        self.gen = 1  # like NFT_MSG_GETGEN: bumped by every change of the table
        self.before_commit: list[Callable[[str, list[dict]], None]] = []
        self.after_commit: list[Callable[[str, list[dict]], None]] = []
        self.before_list: list[Callable[[], None]] = []
        self._lock = threading.RLock()  # a hook may call tamper() or list_table() itself

    @property
    def table(self) -> NftTable | None:
        """The agent's table as the model holds it (None when absent)."""
        return self.ruleset.table(TABLE_FAMILY, TABLE_NAME)

    # fault injection and probes
    def fail_next(self, op: str, message: str = "injected failure", times: int = 1) -> None:
        self._failures.setdefault(op, []).extend([message] * times)

    def _maybe_fail(self, op: str) -> None:
        self.calls.append(op)
        pending = self._failures.get(op)
        if pending:
            raise nft_error(f"fake {op} failed", error=pending.pop(0))

    def hit(self, comment: str, packets: int = 1, nbytes: int = 64) -> None:
        assert self.table is not None
        for rule in self.table.rules:
            if rule.get("comment") == comment:
                for expr in rule["expr"]:
                    if "counter" in expr:
                        c = expr["counter"] or {"packets": 0, "bytes": 0}
                        expr["counter"] = {"packets": c["packets"] + packets,
                                           "bytes": c["bytes"] + nbytes}
                return
        raise KeyError(comment)

    def tamper(self) -> None:
        """Someone else edits the agent's table: the last rule disappears."""
        table = self.table
        assert table is not None and table.rules
        last = [c for c in table.chains.values() if c.rules][-1]
        last.rules.pop()
        self.gen += 1

    def tamper_element(self, name: str, elem: Any) -> None:
        """Someone else adds an element to one of the agent's sets or maps (no rule changes)."""
        assert self.table is not None
        self.table.sets[name].elem.append(elem)
        self.gen += 1

    def foreign_commit(self) -> None:
        """A transaction in another table of the namespace: only the generation moves."""
        self.gen += 1

    # protocol
    def check(self, commands: list[dict]) -> None:
        self._maybe_fail("check")
        assert_own_table(commands, self.owns)
        self.ruleset.apply(commands)

    def replace(self, commands: list[dict], payload: bytes | None = None) -> None:
        self._commit("replace", commands)

    def transact(self, commands: list[dict]) -> None:
        self._commit("transact", commands)

    def _commit(self, op: str, commands: list[dict]) -> None:
        """One batch, all or nothing, like a kernel transaction."""
        with self._lock:
            self._maybe_fail(op)
            assert_own_table(commands, self.owns)
            for hook in self.before_commit:
                hook(op, commands)
            self.ruleset = self.ruleset.apply(commands)
            self.batches.append(copy.deepcopy(commands))
            self.gen += 1
            for hook in self.after_commit:
                hook(op, commands)

    def delete_table(self) -> bool:
        with self._lock:
            self._maybe_fail("delete_table")
            for hook in self.before_commit:
                hook("delete_table", [])
            existed = self.ruleset.tables.pop((TABLE_FAMILY, TABLE_NAME), None) is not None
            self.gen += 1
            for hook in self.after_commit:
                hook("delete_table", [])
            return existed

    def list_table(self, *, terse: bool = False) -> dict | None:
        with self._lock:
            self._maybe_fail("list_table")
            for hook in self.before_list:
                hook()
            t = self.table
            if t is None:
                return None
            return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *t.listing_items(terse=terse)]}

    def counters(self) -> dict[tuple[str, str], RuleCounter]:
        return table_counters(self.list_table(terse=True))

    def fingerprint(self) -> str | None:
        """Down to set elements, like the real backend's."""
        return listing_fingerprint(self.list_table(terse=False))

    def generation(self) -> int | None:
        self.calls.append("generation")
        return self.gen

    def stamp(self) -> str | None:
        self.calls.append("stamp")
        t = self.table
        if t is None:
            return None
        chain = t.chains.get(STAMP_CHAIN)
        return stamp_of({"nftables": [{"rule": r} for r in (chain.rules if chain else [])]})

    def dump(self) -> str:
        """Sorted nft text of the table (empty string when absent): NftTable.dump."""
        t = self.table
        return t.dump() if t is not None else ""
