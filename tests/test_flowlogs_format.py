"""The records nsg-agent writes have the shape of Azure's VNet flow logs: checked against the
sample record of Microsoft's documentation (tests/data/azure/, SOURCES.md says where from)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nsg_agent.flowlogs.format import (
    TUPLE_FIELDS,
    FlowEvent,
    Identity,
    acl_id,
    azure_time,
    build_records,
    nic_of,
    parse_tuple,
    tuples_of,
)

SAMPLE = json.loads((Path(__file__).parent / "data" / "azure" / "vnet-flow-log-sample.json").read_text())
AZURE_RECORD = SAMPLE["records"][0]

# The tuple grammar, field by field, as Azure writes it (time in ms since the epoch; protocol
# as its IANA number; I/O; B/C/E/D; the encryption state; four counts).
TUPLE = re.compile(r"^(\d{13}),([0-9a-fA-F.:]+),([0-9a-fA-F.:]+),(\d{1,5}),(\d{1,5}),(\d{1,3}),([IO]),([BCED]),"
                   r"(NX|X|NX_[A-Z_]+),(\d+),(\d+),(\d+),(\d+)$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$")


def events() -> list[FlowEvent]:
    t = 1764586800_000  # 2025-12-01T11:00:00Z
    return [
        FlowEvent(t + 1, "web1", "web-nsg", "UserRule_allow-web", "203.0.113.10", "10.88.1.4", 50000, 80, 6, "I", "B",
                  mac="00:22:48:71:c2:05"),
        FlowEvent(t + 9, "web1", "web-nsg", "UserRule_allow-web", "203.0.113.10", "10.88.1.4", 50000, 80, 6, "I", "E",
                  5, 1300, 4, 900, mac="00:22:48:71:c2:05"),
        FlowEvent(t + 5, "web1", "web-nsg", "DefaultRule_DenyAllInBound", "198.51.100.7", "10.88.1.4", 40000, 22, 6,
                  "I", "D", mac="00:22:48:71:c2:05"),
        FlowEvent(t + 6, "web1", "", "PlatformRule_BlockGre", "10.88.1.4", "10.88.2.4", None, None, 47, "O", "D",
                  mac="00:22:48:71:c2:05"),
        FlowEvent(t + 7, "web1", "web-nsg", "UserRule_allow-web", "2001:db8::5", "fd00::4", 1, 2, 58, "I", "C",
                  1, 104, 1, 104, mac="00:22:48:71:c2:05"),
    ]


def ours() -> dict:
    return {"records": build_records(events(), Identity("host1-ns"), 1764586805.25)}


def test_the_sample_is_azures_grammar():
    """The kept sample parses with our reader: the grammar we check is Azure's."""
    tuples = tuples_of(SAMPLE)
    assert len(tuples) == 19
    for rec in SAMPLE["records"]:
        for f in rec["flowRecords"]["flows"]:
            for g in f["flowGroups"]:
                for text in g["flowTuples"]:
                    assert TUPLE.match(text), text
    assert TIME.match(AZURE_RECORD["time"])


def test_record_has_azures_fields_in_azures_order():
    rec = ours()["records"][0]
    assert list(rec) == list(AZURE_RECORD)
    assert list(rec["flowRecords"]) == list(AZURE_RECORD["flowRecords"])
    assert list(rec["flowRecords"]["flows"][0]) == list(AZURE_RECORD["flowRecords"]["flows"][0])
    group, azure_group = rec["flowRecords"]["flows"][0]["flowGroups"][0], AZURE_RECORD["flowRecords"]["flows"][0]["flowGroups"][0]
    assert list(group) == list(azure_group)
    for key in ("flowLogVersion", "category", "operationName"):
        assert rec[key] == AZURE_RECORD[key]
    for key, value in AZURE_RECORD.items():
        assert type(rec[key]) is type(value), key
    assert TIME.match(rec["time"]) and rec["time"] == "2025-12-01T11:00:05.2500000Z"
    assert re.fullmatch(r"[0-9A-F]{12}", rec["macAddress"]) and rec["macAddress"] == "00224871C205"
    assert re.fullmatch(r"[0-9a-f-]{36}", rec["flowLogGUID"])
    assert rec["flowLogResourceID"].startswith("/SUBSCRIPTIONS/") and "/FLOWLOGS/" in rec["flowLogResourceID"]
    assert rec["flowLogResourceID"] == rec["flowLogResourceID"].upper()  # as Azure writes it
    assert rec["targetResourceID"].startswith("/subscriptions/") and nic_of(rec["targetResourceID"]) == "web1"
    json.dumps(ours())  # plain JSON


def test_tuples_follow_azures_grammar_and_order():
    doc = ours()
    texts = [t for f in doc["records"][0]["flowRecords"]["flows"] for g in f["flowGroups"] for t in g["flowTuples"]]
    assert len(texts) == 5
    for text in texts:
        assert TUPLE.match(text), text
        assert len(text.split(",")) == len(TUPLE_FIELDS) == 13
    assert "1764586800001,203.0.113.10,10.88.1.4,50000,80,6,I,B,NX,0,0,0,0" in texts
    assert "1764586800009,203.0.113.10,10.88.1.4,50000,80,6,I,E,NX,5,1300,4,900" in texts
    assert "1764586800005,198.51.100.7,10.88.1.4,40000,22,6,I,D,NX,0,0,0,0" in texts
    assert "1764586800006,10.88.1.4,10.88.2.4,0,0,47,O,D,NX,0,0,0,0" in texts  # no ports: 0
    # grouped per NSG (aclID) and rule; tuples of a group in time order
    flows = doc["records"][0]["flowRecords"]["flows"]
    assert {f["aclID"] for f in flows} == {acl_id("web-nsg"), acl_id("")}
    web = next(f for f in flows if f["aclID"] == acl_id("web-nsg"))
    allow = next(g for g in web["flowGroups"] if g["rule"] == "UserRule_allow-web")
    times = [int(t.split(",")[0]) for t in allow["flowTuples"]]
    assert times == sorted(times)
    back = tuples_of(doc)
    assert {t.rule for t in back} == {"UserRule_allow-web", "DefaultRule_DenyAllInBound", "PlatformRule_BlockGre"}
    assert {t.nic for t in back} == {"web1"}


def test_one_record_per_nic():
    evs = events() + [FlowEvent(1764586800100, "app1", "app-nsg", "UserRule_x", "10.88.2.4", "10.88.1.4", 1, 2, 17,
                                "O", "B", mac="aa:bb:cc:dd:ee:ff")]
    recs = build_records(evs, Identity("h"), 1764586805.0)
    assert [nic_of(r["targetResourceID"]) for r in recs] == ["app1", "web1"]
    assert recs[0]["macAddress"] == "AABBCCDDEEFF"


def test_parse_tuple_rejects_what_azure_does_not_write():
    parse_tuple("1493763938,185.170.185.105,10.2.0.4,35370,23,6,I,B,NX,,,,")  # the docs' short form
    for bad in ("1,2,3", "1663146003599,10.0.0.6,1.2.3.4,1,2,6,X,B,NX,0,0,0,0",
                "1663146003599,10.0.0.6,1.2.3.4,1,2,6,I,A,NX,0,0,0,0"):
        with pytest.raises(ValueError):
            parse_tuple(bad)


def test_azure_time_and_acl_ids():
    assert azure_time(1663146052.5625) == "2022-09-14T09:00:52.5625000Z"
    assert acl_id("Web-NSG") == acl_id("web-nsg") != acl_id("") != acl_id("other")
