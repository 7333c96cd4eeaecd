"""The compiler's typed results (compiler/results.py): the Summary and the RuleIndex convert to
exactly the JSON the agent always wrote and back to equal values, status files of the agent
before them read and write back byte for byte, a misspelt key is an error, and a malformed
summary or index in a status file is refused naming the field."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from compiler_helpers import big_policy, host_placement
from nsg_agent.compiler import FabricPlacement, HostPlacement, compile_ruleset
from nsg_agent.compiler.naming import TABLE_NAME
from nsg_agent.compiler.results import (
    DEFAULT_TABLE,
    LevelSummary,
    NicSummary,
    ResultError,
    RuleIndex,
    RuleRef,
    Summary,
)
from nsg_agent.daemon.status import StatusFileError, StatusStore
from nsg_agent.daemon.targets import compile_host, host_interfaces
from nsg_agent.desired.loader import load
from nsg_agent.semantics.resolver import resolve
from test_compiler_golden import CASES, _case_id

DATA = Path(__file__).parent / "data"
DIGESTS = json.loads((DATA / "compile_results.sha256.json").read_text())
STATUS = DATA / "status"


def _sha(doc: object) -> str:
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def _compile_case(case):
    path, placement, mode = case
    loaded = load(path)
    policy = resolve(loaded.state, loaded.tags)
    where = host_placement(policy) if placement == "host" else FabricPlacement()
    mode, _, flow = mode.partition("+")
    return compile_ruleset(policy, where, mode=mode, flow_logs=flow == "flowlogs")


def _compile_big(case_id):
    """200 rules x 20 prefixes: classified, and with a tiny element bound (the simple fallback)."""
    kw = {"max_level_elements": 50} if case_id == "big-fallback" else {}
    return compile_ruleset(big_policy(200, 20), HostPlacement({"nic0": "eth0"}), **kw)


ALL = [(_case_id(c), c) for c in CASES] + [("big-fallback", None), ("big", None)]


@pytest.mark.parametrize("case_id,case", ALL, ids=[i for i, _ in ALL])
def test_json_is_what_the_agent_always_wrote_and_reads_back_equal(case_id, case):
    """Every golden input and example, each placement and mode: the JSON of the summary and
    the index is the old code's, key order included (digests taken from it), and reading it
    back (as from a status file) gives equal values."""
    rs = _compile_case(case) if case is not None else _compile_big(case_id)
    summary, index = rs.summary.to_json(), rs.rule_index.to_json()
    assert _sha(summary) == DIGESTS[case_id]["summary"]
    assert _sha(index) == DIGESTS[case_id]["rule_index"]
    text_s, text_i = json.loads(json.dumps(summary)), json.loads(json.dumps(index))
    assert Summary.from_json(text_s) == rs.summary and Summary.from_json(text_s).to_json() == summary
    assert RuleIndex.from_json(text_i) == rs.rule_index and RuleIndex.from_json(text_i).to_json() == index
    if case_id == "big-fallback":
        assert any(lv.fallback for lv in rs.summary.levels.values()) and "simple" in rs.summary.modes_used


@pytest.mark.parametrize("placement", ["host", "fabric"])
def test_a_status_file_of_the_agent_before_reads_and_writes_back_byte_for_byte(tmp_path, placement):
    raw = (STATUS / f"status-{placement}.json").read_text()
    store = StatusStore(tmp_path, "nsgh-fixture")
    store.dir.mkdir(parents=True)
    store.path.write_text(raw)
    status = store.read()
    commit = status.commit
    assert isinstance(commit.summary, Summary) and isinstance(commit.rule_index, RuleIndex)
    store.write(status)
    assert store.path.read_text() == raw
    # what it holds is what the compiler makes of the same file today
    loaded = load(STATUS / "desired-state.yaml")
    policy = resolve(loaded.state, loaded.tags)
    rs = (compile_host(policy, host_interfaces(policy), "classify") if placement == "host"
          else compile_ruleset(policy, FabricPlacement()))
    assert commit.summary == rs.summary and commit.rule_index == rs.rule_index
    srv = commit.summary.nics["srv"]
    if placement == "host":
        assert (srv.interface, srv.addresses) == ("eth-srv", None)
    else:
        assert (srv.interface, srv.addresses) == (None, ("10.50.1.4",))
    assert [lv.nsg for lv in srv.levels["subnet"]] == ["subnet-nsg", "subnet-nsg"]
    ref = commit.rule_index.lookup(srv.levels["nic"][0].chain + "_r0", "srv-nsg: UserRule_allow-ssh-from-admins")
    assert ref is not None and ref.scope == ("srv/nic",) and ref.direction == "Inbound"


def test_a_misspelt_key_is_an_error_never_a_silent_none():
    rs = compile_ruleset(big_policy(5, 2), HostPlacement({"nic0": "eth0"}))
    summary, index = rs.summary, rs.rule_index
    with pytest.raises(AttributeError):
        summary.rule
    with pytest.raises(AttributeError):
        summary.get("rules")
    with pytest.raises(TypeError):
        summary["rules"]
    with pytest.raises(AttributeError):
        summary.nics["nic0"].iface
    with pytest.raises(TypeError):
        Summary(rule=3)
    key = "|".join(next(iter(index)))  # the status file's spelling of a key
    with pytest.raises(AttributeError):
        index.get(key)
    with pytest.raises(TypeError):
        index[key]
    with pytest.raises(TypeError):
        key in index
    with pytest.raises(TypeError):
        index.lookup(key)
    assert index.lookup(*key.split("|", 1)) is not None and tuple(key.split("|", 1)) in index
    # values, not records to patch
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.rules = 0
    with pytest.raises(TypeError):
        summary.nics["other"] = summary.nics["nic0"]
    with pytest.raises(TypeError):
        index.entries[("c", "x")] = RuleRef("", "x", "Inbound", "c", ())


def _first(mapping: dict) -> str:
    return next(iter(mapping))


def _set(path: tuple, value):
    def apply(commit: dict) -> None:
        node = commit
        for key in path[:-1]:
            node = node[key(node) if callable(key) else key]
        last = path[-1]
        node[last(node) if callable(last) else last] = value
    return apply


def _delete(path: tuple):
    def apply(commit: dict) -> None:
        node = commit
        for key in path[:-1]:
            node = node[key(node) if callable(key) else key]
        last = path[-1]
        del node[last(node) if callable(last) else last]
    return apply


def _add_key_without_bar(commit: dict) -> None:
    commit["rule_index"]["no-bar-here"] = next(iter(commit["rule_index"].values()))


MALFORMED = {
    "count-as-text": (_set(("summary", "rules"), "81"), "commit.summary.rules is a string, not an integer"),
    "count-as-bool": (_set(("summary", "sets"), True), "commit.summary.sets is a boolean, not an integer"),
    "no-levels": (_delete(("summary", "levels")), "commit.summary.levels is missing"),
    "unknown-key": (_set(("summary", "rulez"), 3), "commit.summary.rulez is not a known field"),
    "nic-chain-missing": (_delete(("summary", "nics", "srv", "inbound")), "commit.summary.nics.srv.inbound is missing"),
    "nic-both-placements": (_set(("summary", "nics", "srv", "addresses"), ["10.50.1.4"]),
                            "commit.summary.nics.srv has both of interface (host) and addresses (fabric)"),
    "nic-level-mode": (_set(("summary", "nics", "srv", "levels", "nic", 0, "mode"), None),
                       "commit.summary.nics.srv.levels.nic[0].mode is null, not a string"),
    "level-users-text": (_set(("summary", "levels", _first, "users"), "srv/nic"),
                         "commit.summary.levels.lvl_", ".users is a string, not an array"),
    "index-scope": (_set(("rule_index", _first, "scope"), [1]), "commit.rule_index[\"lvl_", "\"].scope[0] is a number, not a string"),
    "index-field-missing": (_delete(("rule_index", _first, "direction")), "commit.rule_index[\"lvl_", "\"].direction is missing"),
    "index-entry-array": (_set(("rule_index", _first), ["srv-nsg", "UserRule_x"]),
                          "commit.rule_index[\"lvl_", "\"] is an array, not an object"),
    "index-key": (_add_key_without_bar, 'commit.rule_index["no-bar-here"] is not a "chain|comment" key'),
    "summary-array": (_set(("summary",), []), "commit.summary has the wrong type (list)"),
}


@pytest.mark.parametrize("name", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_summary_or_index_is_refused_naming_the_field(tmp_path, name):
    mutate, *fragments = MALFORMED[name]
    data = json.loads((STATUS / "status-host.json").read_text())
    mutate(data["commit"])
    store = StatusStore(tmp_path, "nsgh-fixture")
    store.dir.mkdir(parents=True)
    store.path.write_text(json.dumps(data))
    with pytest.raises(StatusFileError) as err:
        store.read()
    message = str(err.value)
    assert str(store.path) in message and "is not the agent's" in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_classified_level_without_orders_reads_as_written():
    """The first classify release wrote no "orders": such a level reads, and writes back
    without them."""
    doc = json.loads((STATUS / "status-host.json").read_text())["commit"]["summary"]
    name = _first(doc["levels"])
    del doc["levels"][name]["orders"]
    summary = Summary.from_json(doc)
    assert summary.levels[name].orders is None and summary.levels[name].elements is not None
    assert summary.to_json() == doc


def test_errors_outside_the_status_file_name_the_field_too():
    with pytest.raises(ResultError, match=r"^summary\.nics is an array, not an object$"):
        Summary.from_json({**Summary().to_json(), "nics": []})
    with pytest.raises(ResultError, match=r"^rule_index is null, not an object$"):
        RuleIndex.from_json(None)


def test_defaults_and_counts():
    """Summary() is an empty table of the compiler's; counts() is what status and plan print."""
    assert DEFAULT_TABLE == f"inet {TABLE_NAME}"
    assert Summary().to_json() == {"table": "inet nsg_agent", "placement": "host", "mode": "classify",
                                   "modes_used": [], "chains": 0, "rules": 0, "sets": 0, "set_elements": 0,
                                   "nics": {}, "levels": {}}
    assert Summary(rules=3, modes_used=("simple",)).counts() == {
        "chains": 0, "rules": 3, "sets": 0, "set_elements": 0, "modes_used": ["simple"]}
    nic = NicSummary("nic_a_in", "nic_a_out", interface="eth0")
    assert NicSummary.from_json(nic.to_json(), "n") == nic and "addresses" not in nic.to_json()
    level = LevelSummary("g", "Inbound", False, 2, ["a/nic"], "simple", fallback="too large")
    assert level.users == ("a/nic",) and list(level.to_json()) == ["nsg", "direction", "platform", "rules",
                                                                   "users", "fallback", "mode"]
    assert len(RuleIndex()) == 0 and not RuleIndex() and list(RuleIndex().refs()) == []

