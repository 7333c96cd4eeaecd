"""nsg_agent.kernel.backend without root: the own-table guard, counter parsing, fingerprints, the fake."""

from __future__ import annotations

import pytest

from nsg_agent.kernel.backend import (
    TABLE_NAME,
    NftError,
    RuleCounter,
    assert_own_table,
    listing_fingerprint,
    table_counters,
)
from nsg_agent.testing import FakeBackend

T = {"family": "inet", "name": TABLE_NAME}
CHAIN = {"family": "inet", "table": TABLE_NAME, "name": "input", "type": "filter", "hook": "input",
         "prio": 0, "policy": "accept"}


def rule(comment: str, verdict: str = "accept", chain: str = "input") -> dict:
    return {"add": {"rule": {"family": "inet", "table": TABLE_NAME, "chain": chain, "comment": comment,
                             "expr": [{"counter": None}, {verdict: None}]}}}


BATCH = [{"add": {"table": T}}, {"delete": {"table": T}}, {"add": {"table": T}},
         {"add": {"chain": CHAIN}},
         {"add": {"set": {"family": "inet", "table": TABLE_NAME, "name": "s", "type": "ipv4_addr",
                          "flags": ["interval"], "elem": ["10.0.0.0/8"]}}},
         {"add": {"element": {"family": "inet", "table": TABLE_NAME, "name": "s", "elem": ["192.168.0.0/16"]}}},
         rule("nsg: UserRule_a"), rule("nsg: DefaultRule_DenyAllInBound", "drop")]


class TestOwnTableGuard:
    @pytest.mark.parametrize("command", [
        {"flush": {"ruleset": None}},
        {"delete": {"table": {"family": "inet", "name": "filter"}}},
        {"add": {"table": {"family": "ip", "name": TABLE_NAME}}},
        {"add": {"rule": {"family": "inet", "table": "firewalld", "chain": "x", "expr": []}}},
        {"add": {"chain": {"family": "bridge", "table": TABLE_NAME, "name": "x"}}},
        {"list": {"ruleset": None}},
        {"bogus": {"table": T}},
        {"add": {"table": T}, "delete": {"table": T}},
    ], ids=["flush-ruleset", "delete-other-table", "other-family", "rule-in-other-table",
            "chain-other-family", "list-ruleset", "unknown-verb", "two-verbs-in-one"])
    def test_refuses(self, command):
        """Commands outside inet nsg_agent (or malformed ones) are refused with the culprit."""
        with pytest.raises(NftError) as err:
            assert_own_table([{"add": {"table": T}}, command])
        assert err.value.index == 1 and err.value.command == command

    def test_accepts_the_agent_batch(self):
        """A normal replace batch passes the guard."""
        assert_own_table(BATCH)


class TestCountersAndFingerprint:
    def test_counters_are_keyed_by_chain_and_comment_and_summed(self):
        """Rules sharing chain and comment (v4/v6 twins) are summed; chains stay apart."""
        def r(chain, comment, p, b):
            return {"rule": {"chain": chain, "comment": comment,
                             "expr": [{"counter": {"packets": p, "bytes": b}}, {"accept": None}]}}
        listing = {"nftables": [{"metainfo": {}}, r("c1", "x", 1, 10), r("c1", "x", 2, 20), r("c2", "x", 5, 50),
                                {"rule": {"chain": "c1", "expr": [{"accept": None}]}}]}
        assert table_counters(listing) == {("c1", "x"): RuleCounter(3, 30), ("c2", "x"): RuleCounter(5, 50)}

    def test_fingerprint_ignores_counters_but_not_rules(self):
        """Traffic does not change the fingerprint; removing a rule or re-creating the table does."""
        fake = FakeBackend()
        fake.replace(BATCH)
        first = fake.fingerprint()
        fake.hit("nsg: UserRule_a", 10)
        assert fake.fingerprint() == first
        fake.replace(BATCH)  # new handles: a different table
        second = fake.fingerprint()
        assert second != first
        fake.tamper()
        assert fake.fingerprint() != second

    def test_absent_table_has_no_fingerprint(self):
        """No table, no fingerprint."""
        assert listing_fingerprint(None) is None
        assert FakeBackend().fingerprint() is None


class TestFakeBackend:
    def test_replace_is_all_or_nothing(self):
        """A batch failing halfway leaves the previous table untouched."""
        fake = FakeBackend()
        fake.replace(BATCH)
        before = fake.dump()
        broken = BATCH[:-1] + [rule("nsg: UserRule_b", chain="missing-chain")]
        with pytest.raises(NftError) as err:
            fake.replace(broken)
        assert err.value.index == len(broken) - 1
        assert fake.dump() == before

    def test_dump_is_sorted_text(self):
        """dump() is nft text: the table, its chains, sets with their elements, commented rules."""
        fake = FakeBackend()
        fake.replace(BATCH)
        lines = fake.dump().splitlines()
        assert lines[0] == f"add table inet {TABLE_NAME}"
        assert f"add set inet {TABLE_NAME} s {{ type ipv4_addr ; flags interval ; }}" in lines
        assert any(line.startswith(f"add element inet {TABLE_NAME} s {{ ") for line in lines)
        assert any(line.endswith('comment "nsg: UserRule_a"') for line in lines)

    def test_injected_failures_are_consumed(self):
        """fail_next makes exactly the requested number of calls fail."""
        fake = FakeBackend()
        fake.fail_next("replace", "boom", times=2)
        for _ in range(2):
            with pytest.raises(NftError, match="boom"):
                fake.replace(BATCH)
        fake.replace(BATCH)
        assert fake.table is not None

    def test_counters_follow_hits(self):
        """hit() bumps the named rule's counter, visible through counters()."""
        fake = FakeBackend()
        fake.replace(BATCH)
        fake.hit("nsg: UserRule_a", packets=2, nbytes=128)
        assert fake.counters()[("input", "nsg: UserRule_a")] == RuleCounter(2, 128)
        assert fake.counters()[("input", "nsg: DefaultRule_DenyAllInBound")] == RuleCounter(0, 0)

    def test_delete_table(self):
        """delete_table reports whether there was a table."""
        fake = FakeBackend()
        assert fake.delete_table() is False
        fake.replace(BATCH)
        assert fake.delete_table() is True and fake.list_table() is None


def test_table_name_matches_the_compiler():
    """The backend guards the same table the compiler writes."""
    from nsg_agent.compiler import TABLE_NAME as COMPILER_TABLE

    assert COMPILER_TABLE == TABLE_NAME



@pytest.mark.parametrize("a,b,same", [
    (b'{"rule": {"handle": 5, "expr": [{"counter": {"packets": 7, "bytes": 900}}]}}',
     b'{"rule": {"handle": 5, "expr": [{"counter": {"packets": 0, "bytes": 0}}]}}', True),
    (b'{"rule": {"handle": 5, "expr": [{"counter": {"packets": 0, "bytes": 0}}]}}',
     b'{"rule": {"handle": 6, "expr": [{"counter": {"packets": 0, "bytes": 0}}]}}', False),
    (b'{"rule": {"handle": 5, "expr": [{"accept": null}]}}',
     b'{"rule": {"handle": 5, "expr": [{"drop": null}]}}', False),
], ids=["counters-move", "new-handle", "other-verdict"])
def test_text_fingerprint_ignores_only_counters(a, b, same):
    """The raw-listing fingerprint ignores counter values, not handles or rule content."""
    from nsg_agent.kernel.backend import listing_text_fingerprint

    assert (listing_text_fingerprint(a) == listing_text_fingerprint(b)) is same


def test_batch_payload_is_one_schema_batch():
    """The bytes handed to libnftables are the commands after the schema line, and the
    reconciler's ruleset digest is their sha256."""
    import hashlib
    import json as _json

    from nsg_agent.daemon.status import ruleset_sha256
    from nsg_agent.kernel.backend import SCHEMA, batch_payload

    data = _json.loads(batch_payload(BATCH))
    assert data["nftables"] == [SCHEMA, *BATCH]
    assert ruleset_sha256(BATCH) == hashlib.sha256(batch_payload(BATCH)).hexdigest()


class TestStagedReplace:
    """A full replace is cut into three transactions so that the maps a live rule reads were
    always committed by an earlier transaction (see nsg_agent.kernel.backend.staged_replace)."""

    @staticmethod
    def _targets(step: list[dict]) -> set[str]:
        out = set()
        for cmd in step:
            verb, body = next(iter(cmd.items()))
            kind, obj = next(iter(body.items()))
            out.add(obj["name"] if kind == "table" else obj["table"])
        return out

    def test_seven_steps_activation_and_retirement_apart(self):
        """The hold is built inert, made live, the old table made inert, rebuilt inert, made
        live, the hold made inert, then deleted: no step both starts and stops a table, and
        only inert tables are deleted."""
        from nsg_agent.kernel.backend import HOLD_TABLE, staged_replace

        drop_chain = {**CHAIN, "name": "output", "hook": "output", "policy": "drop"}
        batch = BATCH[:4] + [{"add": {"chain": drop_chain}}] + BATCH[4:] + [rule("x", chain="output")]
        old_base = [{**CHAIN, "handle": 7}, {**CHAIN, "name": "forward", "hook": "forward", "policy": "drop"}]
        steps = staged_replace(batch, old_base)
        assert len(steps) == 7
        build, hold_live, old_inert, rebuild, live, hold_inert, drop = steps
        assert self._targets(build) == self._targets(hold_live) == self._targets(hold_inert) == {HOLD_TABLE}
        assert self._targets(old_inert) == self._targets(rebuild) == self._targets(live) == {TABLE_NAME}
        # built and rebuilt inert: base chains accepting, without rules
        for step in (build, rebuild):
            chains = [c["add"]["chain"] for c in step if "chain" in c.get("add", {}) and "hook" in c["add"]["chain"]]
            assert {c["name"]: c["policy"] for c in chains} == {"input": "accept", "output": "accept"}
            assert not [c for c in step if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] in ("input", "output")]
        assert rebuild[:3] == BATCH[:3]
        # made live: the base rules and the real policies, nothing deleted or flushed
        for step in (hold_live, live):
            assert {next(iter(c)) for c in step} == {"add"}
            assert [c["add"]["rule"]["comment"] for c in step if "rule" in c["add"]] == \
                ["nsg: UserRule_a", "nsg: DefaultRule_DenyAllInBound", "x"]
            assert [c["add"]["chain"]["policy"] for c in step if "chain" in c["add"]] == ["drop"]
        # made inert: only base chains flushed (and a drop policy turned to accept)
        assert [c for c in old_inert if "flush" in c] == [
            {"flush": {"chain": {"family": "inet", "table": TABLE_NAME, "name": n}}} for n in ("input", "forward")]
        assert [c["add"]["chain"] for c in old_inert if "add" in c] == [
            {**CHAIN, "name": "forward", "hook": "forward", "policy": "accept"}]
        assert [c for c in hold_inert if "flush" in c] == [
            {"flush": {"chain": {"family": "inet", "table": HOLD_TABLE, "name": n}}} for n in ("input", "output")]
        assert drop == [{"delete": {"table": {"family": "inet", "name": HOLD_TABLE}}}]

    def test_no_table_yet_means_no_step_to_make_it_inert(self):
        from nsg_agent.kernel.backend import staged_replace

        assert len(staged_replace(BATCH, None)) == 6

    def test_everything_of_the_batch_lands_in_nsg_agent(self):
        """The rebuild and the activation together carry every command of the batch."""
        from nsg_agent.kernel.backend import staged_replace

        steps = staged_replace(BATCH)
        mine = [c for c in steps[2] + steps[3] if self._targets([c]) == {TABLE_NAME}]
        as_text = lambda cs: sorted(map(repr, cs))  # noqa: E731
        inert = [c for c in mine if "chain" in c.get("add", {}) and "hook" in c["add"]["chain"]]
        assert as_text([c for c in mine if c not in inert]) == as_text([c for c in BATCH if "chain" not in c.get("add", {})])

    @pytest.mark.parametrize("batch", [
        [{"add": {"chain": CHAIN}}],
        BATCH[:3] + [{"flush": {"chain": {"family": "inet", "table": TABLE_NAME, "name": "input"}}}],
        BATCH[:3] + [{"add": {"table": T}}],
    ], ids=["no-preamble", "a-delta-verb", "a-fourth-table-command"])
    def test_other_shapes_run_as_one_transaction(self, batch):
        """Anything but the compiled shape is not staged (None)."""
        from nsg_agent.kernel.backend import staged_replace

        assert staged_replace(batch) is None

    def test_the_guard_accepts_the_hold_and_nothing_else(self):
        """inet nsg_agent_hold is the agent's too; other names stay refused."""
        from nsg_agent.kernel.backend import HOLD_TABLE

        assert_own_table([{"delete": {"table": {"family": "inet", "name": HOLD_TABLE}}}])
        with pytest.raises(NftError):
            assert_own_table([{"delete": {"table": {"family": "inet", "name": HOLD_TABLE + "x"}}}])


def test_kernel_errors_are_typed_by_errno_once():
    """libnftables reports refusals as text; kernel.errors recovers the errno once and callers
    catch the subclass (no message matching elsewhere)."""
    import errno

    from nsg_agent.kernel.errors import Busy, Exists, NotFound, PermissionDenied, errno_of, nft_error

    assert errno_of("Error: Could not process rule: No such file or directory") == errno.ENOENT
    assert errno_of("Error: syntax error, unexpected junk") is None
    cases = {"Error: No such file or directory": NotFound, "Error: File exists": Exists,
             "Error: Could not process rule: Device or resource busy": Busy,
             "Error: Operation not permitted": PermissionDenied, "Error: syntax error": NftError}
    for text, cls in cases.items():
        e = nft_error("refused", error=text)
        assert type(e) is cls and isinstance(e, NftError) and text in str(e)
    fake = FakeBackend()
    with pytest.raises(NotFound):
        fake.transact([{"delete": {"chain": {"family": "inet", "table": "nsg_agent", "name": "nope"}}}])


def test_namespace_errors_carry_errno_and_a_plain_message():
    import errno

    from nsg_agent.host import netns

    with pytest.raises(netns.NetnsError) as err:
        netns.enter("nsgt-does-not-exist-here")
    assert err.value.errno == errno.ENOENT and str(err.value).startswith("network namespace 'nsgt-does-not-exist-here'")


def test_a_backend_touches_only_the_tables_it_owns():
    """The lab's fabric backend owns the lab's tables; the agent's owns the agent's."""
    from nsg_agent.lab.labrules import LAB_TABLES

    lab = [{"add": {"table": {"family": "bridge", "name": "nsg_lab"}}},
           {"add": {"table": {"family": "inet", "name": "nsg_lab"}}}]
    assert_own_table(lab, LAB_TABLES)
    with pytest.raises(NftError, match="owns only bridge nsg_lab, inet nsg_lab"):
        assert_own_table([{"add": {"table": {"family": "inet", "name": "nsg_agent"}}}], LAB_TABLES)
    with pytest.raises(NftError, match="owns only inet nsg_agent"):
        assert_own_table(lab)
