"""The one module that talks to libnftables (``import nftables``).

Everything the agent writes to the kernel is one batch of libnftables JSON commands that
replaces the agent's own table (``inet nsg_agent``) in a single transaction. This module
is the single choke point for that batch:

- :meth:`NftBackend.replace` runs the whole batch in ONE libnftables call (one netlink
  transaction: the old table stays in force until the new one is complete, and if any
  command fails nothing at all is applied). There is no separate dry run on the normal
  path: it would only repeat the kernel's work. Only when the batch is refused does it
  bisect with dry runs to find the first failing command, so the error names the command
  and not just the batch;
- :meth:`NftBackend.transact` runs a delta of the table (nsg_agent.kernel.delta: only the
  sets and chains an edit changed) as one transaction, when the kernel still holds the
  previous commit;
- :meth:`NftBackend.check` is that dry run on its own (the kernel validates, nothing
  changes), for callers that want to validate without applying;
- it refuses any command that would touch another table or the whole ruleset (``flush
  ruleset``, another family or table name), so a compiler bug cannot hurt the rest of the
  machine's firewall.

:class:`nsg_agent.testing.FakeBackend` implements the same protocol in memory for reconcile
tests without root (it shares the pure helpers below and the table model of kernel/state.py).
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import socket
import struct
import threading
from typing import Any, Iterable, Protocol

from nsg_agent.host.netns import NetnsRunner
from nsg_agent.kernel.errors import NftError, errno_of, nft_error
from nsg_agent.kernel.state import NftRuleset, RuleCounter

TABLE_FAMILY = "inet"
TABLE_NAME = "nsg_agent"  # the same value as nsg_agent.compiler.TABLE_NAME (checked in tests)
# A full replace goes through this second table for the length of one replace (see
# staged_replace): the agent owns it too, and it never outlives the replace.
HOLD_TABLE = "nsg_agent_hold"
OWN_TABLES = (TABLE_NAME, HOLD_TABLE)
# (family, table) pairs a backend may touch: the agent's table and its twin. The lab's backend
# in the fabric owns the lab's own tables instead (nsg_agent.lab.labrules.LAB_TABLES).
AGENT_TABLES = ((TABLE_FAMILY, TABLE_NAME), (TABLE_FAMILY, HOLD_TABLE))
SCHEMA = {"metainfo": {"json_schema_version": 1}}
_OBJECTS = ("table", "chain", "rule", "set", "map", "element", "counter", "flowtable", "quota",
            "limit", "ct helper", "ct timeout", "ct expectation", "secmark", "synproxy")


class Backend(Protocol):
    """What the reconciler needs from the kernel (or from a fake)."""

    def check(self, commands: list[dict]) -> None: ...
    def replace(self, commands: list[dict], payload: bytes | None = None) -> None: ...
    def transact(self, commands: list[dict]) -> None: ...
    def delete_table(self) -> bool: ...
    def list_table(self, *, terse: bool = False) -> dict | None: ...
    def counters(self) -> dict[tuple[str, str], RuleCounter]: ...
    def fingerprint(self) -> str | None: ...
    def generation(self) -> int | None: ...
    def stamp(self) -> str | None: ...


# --- pure helpers shared by the real and the fake backend ---------------------------------


def assert_own_table(commands: Iterable[dict], owns: tuple[tuple[str, str], ...] = AGENT_TABLES) -> None:
    """Raise NftError if a command would touch anything but the tables in ``owns`` (default
    ``inet nsg_agent`` and its short-lived twin ``inet nsg_agent_hold``, see
    :func:`staged_replace`)."""
    for i, cmd in enumerate(commands):
        if not isinstance(cmd, dict) or len(cmd) != 1:
            raise NftError("refusing a malformed command", command=cmd, index=i)
        verb, body = next(iter(cmd.items()))
        if verb == "metainfo":
            continue
        if verb not in ("add", "create", "insert", "replace", "delete", "flush", "list", "reset"):
            raise NftError(f"refusing the verb {verb!r}", command=cmd, index=i)
        if not isinstance(body, dict) or len(body) != 1:
            raise NftError("refusing a malformed command", command=cmd, index=i)
        kind, obj = next(iter(body.items()))
        if kind == "ruleset" or kind not in _OBJECTS or not isinstance(obj, dict):
            raise NftError(f"refusing to {verb} {kind!r}: the agent only touches its own table",
                           command=cmd, index=i)
        table = obj.get("name") if kind == "table" else obj.get("table")
        if (obj.get("family"), table) not in owns:
            mine = ", ".join(f"{f} {t}" for f, t in owns if t != HOLD_TABLE)
            raise NftError(
                f"refusing to touch {obj.get('family')} {table}: this backend owns only {mine}",
                command=cmd, index=i)


def table_counters(listing: dict | None) -> dict[tuple[str, str], RuleCounter]:
    """Per-rule counters from a table listing, keyed by (chain, rule comment) like the
    compiler's ``rule_index`` (summed when several kernel rules of one chain carry the same
    comment, e.g. an IPv4 and an IPv6 variant); the stamp chain is not a rule of anyone's."""
    out: dict[tuple[str, str], RuleCounter] = {}
    for table in NftRuleset.from_listing(listing):
        out.update(table.counters(skip_chains=(STAMP_CHAIN,)))
    return out


def _strip_counters(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: (None if k == "counter" else _strip_counters(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_counters(v) for v in obj]
    return obj


def listing_fingerprint(listing: dict | None) -> str | None:
    """A digest of a (terse) table listing that changes when anyone re-creates the table or
    adds, deletes or edits a chain, set or rule (handles included), but not when counters
    move. None when the table does not exist."""
    if listing is None:
        return None
    items = [i for i in listing.get("nftables", []) if "metainfo" not in i]
    if not any("table" in i for i in items):
        return None
    canon = json.dumps(_strip_counters(items), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def _in_table(cmd: dict, table: str) -> dict:
    """The command aimed at ``table`` (shallow: the element lists are shared)."""
    verb, body = next(iter(cmd.items()))
    kind, obj = next(iter(body.items()))
    key = "name" if kind == "table" else "table"
    return {verb: {kind: {**obj, key: table}}}


def _delete_hold() -> dict:
    return {"delete": {"table": {"family": TABLE_FAMILY, "name": HOLD_TABLE}}}


def _retire(chains: list[dict], table: str) -> list[dict]:
    """Make a table inert: its base chains flushed (and accepting)."""
    out = []
    for c in chains:
        ref = {"family": TABLE_FAMILY, "table": table, "name": c["name"]}
        out.append({"flush": {"chain": ref}})
        if c.get("policy", "accept") != "accept":
            out.append({"add": {"chain": {**{k: v for k, v in c.items() if k != "handle"}, "table": table,
                                          "policy": "accept"}}})
    return out


def staged_replace(commands: list[dict], current: list[dict] | None = None) -> list[list[dict]] | None:
    """A full-replace batch (``add``/``delete``/``add table`` + everything) cut into seven
    transactions so that a new connection that the old and the new ruleset both allow is
    never dropped and nothing either denies is ever admitted; None when the batch has
    another shape (then it runs as one transaction). ``current``: the base chains of the
    table the kernel holds now (None: no table).

    Why. nf_tables publishes a transaction's new generation (every new rule becomes live)
    *before* its commit loop, and only after that loop do the set backends with a commit step
    (the interval sets and maps of this compiler: rbtree, whose lookups read an array built at
    commit, and pipapo) publish the elements the transaction added. In between, the new
    table's rules read sets that look empty, miss, and fall through to their level's drop:
    a window as long as the commit loop (15-45 ms for a few thousand objects), measured as
    lost first SYNs just before every full replace. Second, a packet whose chain evaluation
    straddles the flip runs the old rules (the generation is read once per chain) but looks
    elements up in the new generation: if the same transaction deletes the sets of a table
    that was live, the lookup misses and the packet is dropped (rare: about one per hundred
    replaces). So a table becomes live only in a transaction after the one that filled its
    sets, and a live table stops (its base chains flushed) in a transaction that deletes
    nothing it reads; only an inert table is deleted:

    1. build ``inet nsg_agent_hold`` (the new ruleset) with its base chains empty: inert;
    2. the hold's base rules: it is live (with the old table: a packet must pass both);
    3. the old ``inet nsg_agent`` inert (its base chains flushed): the hold alone decides;
    4. ``inet nsg_agent`` rebuilt with the new ruleset, inert;
    5. its base rules: live (with the hold: both hold the new ruleset);
    6. the hold inert;  7. the hold deleted.

    Activation and retirement are never in one transaction, so a packet straddling a flip
    always meets at least one live table (no hook order can let it slip between two
    switches). A kill between steps leaves the old ruleset, the new one, or both (a packet
    must pass both) in force; the next replace finds the hold and finishes in one
    transaction (NftBackend.replace)."""
    if len(commands) < 3 or [next(iter(c)) for c in commands[:3]] != ["add", "delete", "add"]:
        return None
    preamble, body = commands[:3], commands[3:]
    base_chains: list[dict] = []  # chains with a hook, as compiled
    base_rules: list[dict] = []  # the rules of those chains, in order
    rest: list[dict] = []  # everything else: regular chains, sets and maps, their rules
    for cmd in body:
        verb, inner = next(iter(cmd.items()))
        kind, obj = next(iter(inner.items()))
        if verb != "add" or kind == "table":
            return None
        if kind == "chain" and "hook" in obj:
            base_chains.append(cmd)
        elif kind == "rule" and any(obj.get("chain") == c["add"]["chain"]["name"] for c in base_chains):
            base_rules.append(cmd)
        else:
            rest.append(cmd)
    inert = [{"add": {"chain": {**c["add"]["chain"], "policy": "accept"}}} for c in base_chains]
    live = [c for c in base_chains if c["add"]["chain"].get("policy", "accept") != "accept"] + base_rules
    new_base = [c["add"]["chain"] for c in base_chains]

    def hold(cmds: list[dict]) -> list[dict]:
        return [_in_table(c, HOLD_TABLE) for c in cmds]

    steps = [hold(preamble + inert + rest), hold(live), _retire(current or [], TABLE_NAME),
             preamble + inert + rest, live, _retire(new_base, HOLD_TABLE), [_delete_hold()]]
    return [s for s in steps if s]


# The table carries the digest of the ruleset it holds: the comment of the one rule of a
# chain nothing jumps to (a table's own comment cannot be changed by a later transaction,
# and a delta must update the digest too). Read back cheaply by listing that chain alone.
STAMP_CHAIN = "nsg_stamp"
STAMP_PREFIX = "nsg-agent ruleset "


def stamp_commands(digest: str, *, refresh: bool = False) -> list[dict]:
    """Commands that record ``digest`` in the table (``refresh``: replacing the stamp of a
    table that has one, as the last part of a delta)."""
    chain = {"family": TABLE_FAMILY, "table": TABLE_NAME, "name": STAMP_CHAIN}
    rule = {"add": {"rule": {**chain, "chain": STAMP_CHAIN, "expr": [{"return": None}],
                             "comment": STAMP_PREFIX + digest}}}
    rule["add"]["rule"].pop("name")
    if refresh:
        return [{"flush": {"chain": chain}}, rule]
    return [{"add": {"chain": chain}}, rule]


def stamp_of(listing: dict | None) -> str | None:
    """The digest in a listing of the stamp chain (None: no stamp)."""
    for item in (listing or {}).get("nftables", []):
        comment = (item.get("rule") or {}).get("comment") or ""
        if comment.startswith(STAMP_PREFIX):
            return comment[len(STAMP_PREFIX):]
    return None


def set_digests(documents: Iterable[dict], table: str = TABLE_NAME) -> dict[str, str]:
    """A digest per named set and map of ``table``, over its declaration and its elements
    (in a stable order), from listings of sets and maps (``list sets``/``list maps``)."""
    out: dict[str, str] = {}
    for doc in documents:
        for item in doc.get("nftables", []):
            kind = "set" if "set" in item else "map" if "map" in item else None
            if kind is None or item[kind].get("table") != table:
                continue
            obj = {k: v for k, v in item[kind].items() if k not in ("handle", "elem")}
            elems = sorted(json.dumps(e, sort_keys=True, separators=(",", ":")) for e in item[kind].get("elem", []))
            blob = json.dumps([kind, obj, elems], sort_keys=True, separators=(",", ":"))
            out[obj["name"]] = hashlib.sha256(blob.encode()).hexdigest()
    return out


def combined_fingerprint(listing_digest: str, sets: dict[str, str]) -> str:
    """The fingerprint of a table: its terse listing's digest (chains, rules, set
    declarations, handles) and the digest of every set's elements."""
    blob = json.dumps([listing_digest, sorted(sets.items())], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()

_RESTORE_ORDER = {"table": 0, "chain": 1, "set": 2, "map": 2, "flowtable": 2, "rule": 3}


def listing_to_batch(listing: dict | None) -> list[dict]:
    """The batch that puts back the table a (full, non-terse) listing shows, replacing
    whatever table is there then: add + delete + add table, then its chains, sets, maps and
    rules without kernel handles. For an absent table: the batch that removes ours. Used to
    roll back an unconfirmed apply (nsg_agent.daemon.confirm)."""
    table = {"family": TABLE_FAMILY, "name": TABLE_NAME}
    batch: list[dict] = [{"add": {"table": dict(table)}}, {"delete": {"table": dict(table)}}]
    items = [i for i in (listing or {}).get("nftables", []) if "metainfo" not in i]
    objs = []
    for item in items:
        (kind, obj), = item.items()
        if kind not in _RESTORE_ORDER:
            continue
        objs.append((_RESTORE_ORDER[kind], kind, {k: v for k, v in obj.items() if k != "handle"}))
    if any(kind == "table" for _, kind, _ in objs):
        batch += [{"add": {kind: obj}} for _, kind, obj in sorted(objs, key=lambda t: t[0])]
    return batch


def batch_payload(commands: list[dict]) -> bytes:
    """The exact bytes handed to libnftables for a batch (also what the daemon hashes, so
    the batch is serialized once per reconcile)."""
    return json.dumps({"nftables": [SCHEMA, *commands]}, separators=(",", ":")).encode()


_COUNTER_TEXT = re.compile(rb'"counter":\s*\{"packets":\s*\d+,\s*"bytes":\s*\d+\}')


def listing_text_fingerprint(text: bytes) -> str:
    """:func:`listing_fingerprint` for libnftables' raw JSON output, without parsing it:
    counters are blanked with a regular expression, the rest (handles included) is hashed
    as the kernel printed it. About 100x cheaper than parsing a large listing."""
    return hashlib.sha256(_COUNTER_TEXT.sub(b'"counter":null', text)).hexdigest()


# --- the real backend ----------------------------------------------------------------------

# After a libnftables call on a batch this large, hand the freed heap back to the system: a
# replace of the maximum benchmark table takes ~330 MB inside libnftables, all freed at the
# end but kept by libc (RSS 332 MB -> 25 MB after malloc_trim, which takes ~20 ms).
_TRIM_ABOVE = 1 << 20


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        pass



class NftBackend:
    """libnftables in one network namespace (``netns=None``: the current one)."""

    def __init__(self, netns: str | None = None, runner: NetnsRunner | None = None, *,
                 owns: tuple[tuple[str, str], ...] = AGENT_TABLES):
        """``owns``: the (family, table) pairs every command is checked against before it
        reaches libnftables (the agent's table; the lab's fabric backend owns the lab's)."""
        self.owns = owns
        self.runner = runner or NetnsRunner(netns, thread_name=f"nft-{netns or 'host'}")
        self._own_runner = runner is None
        self.runner.call(self._make_ctx)  # fail early (and here) if libnftables is missing
        self._gen_sock: Any = None  # NFTSocket for NFT_MSG_GETGEN, lives in the runner thread
        self._cookie: int | None = None  # SO_NETNS_COOKIE of the namespace
        # Listings (fingerprint, counters) run on their own thread, so a slow listing never
        # queues in front of the next replace.
        self._reader: NetnsRunner | None = None
        self._reader_lock = threading.Lock()

    @staticmethod
    def _make_ctx() -> Any:
        import nftables  # the only import of libnftables in the agent

        ctx = nftables.Nftables()
        ctx.set_json_output(True)
        ctx.set_handle_output(True)
        return ctx

    def close(self) -> None:
        if self._gen_sock is not None:
            try:
                self.runner.call(self._gen_sock.close, timeout=5)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self._gen_sock = None
        if self._reader is not None:
            self._reader.close()
        if self._own_runner:
            self.runner.close()

    def _read_runner(self) -> NetnsRunner:
        with self._reader_lock:
            if self._reader is None:
                self._reader = NetnsRunner(self.runner.name, thread_name=f"nft-read-{self.runner.label}")
            return self._reader

    # all of these run in the namespace thread
    def _run(self, commands: list[dict], *, dry_run: bool = False, terse: bool = False,
             payload: bytes | None = None, read: bool = False, raw: bool = False) -> tuple[int, Any, str]:
        runner = self._read_runner() if read else self.runner
        data = payload if payload is not None else batch_payload(commands)

        def go() -> tuple[int, Any, str]:
            # A fresh libnftables context per call: a context keeps the ruleset cache it
            # fetched, and a long-lived one made every replace of the maximum benchmark table
            # slower (2.7, 3.6, 4.8 s) and its RSS grow (370 -> 485 MB); a fresh one stays at
            # ~3 s. Its memory goes back to the system at once (libc keeps freed heap).
            ctx = self._make_ctx()
            ctx.set_dry_run(dry_run)
            ctx.set_terse_output(terse)
            big = len(data) >= _TRIM_ABOVE
            try:
                rc, out, err = ctx.cmd(data)  # bytes in: libnftables' output comes back as bytes
                big = big or len(out or b"") >= _TRIM_ABOVE  # a large listing
            finally:
                del ctx  # nft_ctx_free: the cache goes with it
                if big:
                    _malloc_trim()
            err = err.decode("utf-8", "replace") if isinstance(err, bytes) else err
            if raw:
                return rc, out, err
            return rc, (json.loads(out) if out else ""), err

        return runner.call(go)

    def check(self, commands: list[dict]) -> None:
        assert_own_table(commands, self.owns)
        rc, _, err = self._run(commands, dry_run=True)
        if rc == 0:
            return
        index = self._first_failing(commands)
        raise nft_error("the kernel refused the ruleset (dry run)", error=err,
                       command=commands[index] if index is not None else None, index=index)

    def _first_failing(self, commands: list[dict]) -> int | None:
        """Smallest k such that commands[:k+1] fails in a dry run (bisection)."""
        lo, hi = 0, len(commands) - 1
        if hi < 0:
            return None
        found = None
        while lo <= hi:
            mid = (lo + hi) // 2
            rc, _, _ = self._run(commands[: mid + 1], dry_run=True)
            if rc != 0:
                found, hi = mid, mid - 1
            else:
                lo = mid + 1
        return found

    def replace(self, commands: list[dict], payload: bytes | None = None) -> None:
        """Replace the table with the batch (``payload``: its :func:`batch_payload`, when
        the caller already has it). For the packets, all or nothing: either the previous
        ruleset or the new one decides each of them, and if libnftables or the kernel refuses
        any command the previous ruleset stays in force. Only then are dry runs spent,
        bisecting to the first failing command for a precise error.

        A batch of the compiled shape goes as the three transactions of
        :func:`staged_replace` (no allowed connection dropped at the switch). When a hold
        table is left by a replace killed half-way, the batch runs as one transaction that
        also deletes the hold."""
        assert_own_table(commands)
        tables = self._tables()
        steps = None
        if HOLD_TABLE not in tables:
            steps = staged_replace(commands, self._base_chains() if TABLE_NAME in tables else None)
        else:
            payload, commands = None, commands + [_delete_hold()]
        if steps is None:
            rc, _, err = self._run(commands, payload=payload)
            if rc != 0:
                self._refused(commands, err)
            return
        for i, step in enumerate(steps):
            assert_own_table(step)
            rc, _, err = self._run(step)
            if rc == 0:
                continue
            if i <= 1:  # the hold is inert (or absent): the previous table never stopped
                if i == 1:
                    self._run([_delete_hold()])
                self._refused(commands, err)
            raise nft_error(f"the kernel refused step {i + 1} of the replace; the table and "
                           f"{TABLE_FAMILY} {HOLD_TABLE} stay as they are (each holding the old "
                           "or the new ruleset) until the next replace", error=err, applied_nothing=False)

    def _refused(self, commands: list[dict], err: str) -> None:
        try:
            index = self._first_failing(commands)
        except Exception:  # noqa: BLE001 - the diagnosis is best effort; the refusal stands
            index = None
        raise nft_error("the kernel refused the ruleset; the previous table stays in force",
                        error=err, command=commands[index] if index is not None else None,
                       index=index)

    def _tables(self) -> set[str]:
        """The names of the family's tables that are the agent's."""
        rc, out, _ = self._run([{"list": {"tables": {"family": TABLE_FAMILY}}}])
        names = {str((i.get("table") or {}).get("name")) for i in (out or {}).get("nftables", [])} if rc == 0 else set()
        return names & set(OWN_TABLES)

    def _hold_present(self) -> bool:
        return HOLD_TABLE in self._tables()

    def _base_chains(self) -> list[dict]:
        """The base chains of ``inet nsg_agent`` as the kernel holds them."""
        rc, out, err = self._run([{"list": {"chains": {"family": TABLE_FAMILY}}}])
        if rc != 0:
            raise nft_error("cannot list the chains", error=err)
        return [i["chain"] for i in (out or {}).get("nftables", [])
                if "chain" in i and i["chain"].get("table") == TABLE_NAME and "hook" in i["chain"]]

    def transact(self, commands: list[dict]) -> None:
        """Run ``commands`` (a delta of the agent's own table, nsg_agent.kernel.delta, or any
        batch on the tables this backend owns) as ONE transaction: all or nothing. A refusal
        is not diagnosed further: the caller falls back to :meth:`replace`, which names a
        failing command if there is one."""
        assert_own_table(commands, self.owns)
        rc, _, err = self._run(commands)
        if rc != 0:
            raise nft_error("the kernel refused the delta; nothing of it was applied", error=err)

    def delete_table(self) -> bool:
        if self._hold_present():  # left by a replace killed half-way
            self._run([_delete_hold()])
        cmd = {"delete": {"table": {"family": TABLE_FAMILY, "name": TABLE_NAME}}}
        rc, _, err = self._run([cmd])
        if rc == 0:
            return True
        if errno_of(err) == errno.ENOENT:
            return False
        raise nft_error("cannot delete the table", error=err, command=cmd, index=0)

    _LIST = {"list": {"table": {"family": TABLE_FAMILY, "name": TABLE_NAME}}}

    def _list(self, *, terse: bool, raw: bool) -> Any:
        rc, out, err = self._run([self._LIST], terse=terse, read=True, raw=raw)
        if rc != 0:
            if errno_of(err) == errno.ENOENT:
                return None
            raise nft_error("cannot list the table", error=err, command=self._LIST, index=0)
        return out or None

    def list_table(self, *, terse: bool = False) -> dict | None:
        return self._list(terse=terse, raw=False)

    def counters(self) -> dict[tuple[str, str], RuleCounter]:
        return table_counters(self.list_table(terse=True))

    def fingerprint(self) -> str | None:
        """Digest of the table down to set elements; None when the table is absent: the
        terse listing (handles included, counters blanked; its text hashed without parsing)
        combined with a digest per set and map (:func:`set_digests`, one more listing of the
        sets and maps alone, without the rules)."""
        text = self._list(terse=True, raw=True)
        if text is None:
            return None
        return combined_fingerprint(listing_text_fingerprint(text), self.set_digests())

    def set_digests(self) -> dict[str, str]:
        """Digest of each named set and map (declaration + elements) of the table."""
        cmds = [{"list": {"sets": {"family": TABLE_FAMILY}}}, {"list": {"maps": {"family": TABLE_FAMILY}}}]
        rc, out, err = self._run(cmds, read=True, raw=True)
        if rc != 0:
            raise nft_error("cannot list the sets", error=err)
        # one JSON document per list command, one per line
        docs = [json.loads(line) for line in (out or b"").splitlines() if line.strip()]
        return set_digests(docs)

    def stamp(self) -> str | None:
        """The ruleset digest the table carries (see STAMP_CHAIN); None when the table (or its
        stamp) is absent, "" while a hold table is present (a replace did not finish)."""
        if self._hold_present():
            return ""
        cmd = {"list": {"chain": {"family": TABLE_FAMILY, "table": TABLE_NAME, "name": STAMP_CHAIN}}}
        rc, out, err = self._run([cmd], read=True)
        if rc != 0:
            if errno_of(err) == errno.ENOENT:
                return None
            raise nft_error("cannot list the stamp", error=err, command=cmd, index=0)
        return stamp_of(out or None)

    def generation(self) -> int | None:
        """An opaque number that changes with every committed nftables transaction in the
        namespace, ours or anyone's, and differs between namespaces: the namespace's
        ruleset generation (NFT_MSG_GETGEN, 32 bits) combined with its SO_NETNS_COOKIE
        (never reused), so a re-created namespace cannot repeat an old value. Reading it
        costs well under a millisecond (the netlink socket is kept), against about a second
        for listing a 1,000-rule table. None if it cannot be read."""
        return self.runner.call(self._read_generation)

    def _read_generation(self) -> int | None:
        from pyroute2.netlink import NLM_F_REQUEST
        from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETGEN, NFTSocket, nft_gen_msg

        if self._cookie is None:
            self._cookie = _netns_cookie()
        for attempt in range(2):
            try:
                if self._gen_sock is None:
                    self._gen_sock = NFTSocket()
                for msg in self._gen_sock.request_get(nft_gen_msg(), NFT_MSG_GETGEN,
                                                      msg_flags=NLM_F_REQUEST):
                    gen = msg.get_attr("NFTA_GEN_ID")
                    if gen is not None:
                        return ((self._cookie or 0) << 32) | int(gen)
                return None
            except Exception:  # noqa: BLE001 - an optimisation only: fall back to listing
                sock, self._gen_sock = self._gen_sock, None
                if sock is not None:
                    try:
                        sock.close()
                    except Exception:  # noqa: BLE001
                        pass
        return None


SO_NETNS_COOKIE = 71  # linux/asm-generic/socket.h (Linux 5.14+)


def _netns_cookie() -> int | None:
    """The calling thread's network namespace cookie (unique for the boot, never reused)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            return struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    except OSError:
        return None
