"""The compiler's typed results (compiler/results.py) against status files the agent wrote
before them (tests/data/status): they read, and give back exactly the JSON they were read
from; a malformed summary or index is refused naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nsg_agent.compiler.results import ResultError, RuleIndex, Summary

STATUS = Path(__file__).parent / "data" / "status"


@pytest.mark.parametrize("placement", ["host", "fabric"])
def test_the_status_files_summary_and_index_read_and_write_back_exactly(placement):
    commit = json.loads((STATUS / f"status-{placement}.json").read_text())["commit"]
    summary, index = Summary.from_json(commit["summary"]), RuleIndex.from_json(commit["rule_index"])
    assert summary.to_json() == commit["summary"] and index.to_json() == commit["rule_index"]
    assert Summary.from_json(summary.to_json()) == summary and RuleIndex.from_json(index.to_json()) == index
    srv = summary.nics["srv"]
    assert (srv.interface, srv.addresses) == (("eth-srv", None) if placement == "host" else (None, ("10.50.1.4",)))
    assert len(index) == len(commit["rule_index"]) and all(index.lookup(*key) is ref for key, ref in index.items())


def test_a_malformed_document_is_refused_naming_the_field():
    commit = json.loads((STATUS / "status-host.json").read_text())["commit"]
    doc = json.loads(json.dumps(commit["summary"]))
    doc["nics"]["srv"]["levels"]["nic"][0]["mode"] = None
    with pytest.raises(ResultError, match=r"^summary\.nics\.srv\.levels\.nic\[0\]\.mode is null, not a string$"):
        Summary.from_json(doc)
    index = json.loads(json.dumps(commit["rule_index"]))
    key = next(iter(index))
    index[key]["scope"] = "srv/nic"
    with pytest.raises(ResultError, match=r"^rule_index\[.*\]\.scope is a string, not an array$"):
        RuleIndex.from_json(index)
