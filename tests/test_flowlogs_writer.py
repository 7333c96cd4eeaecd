"""The flow-log writer: one file per NIC and hour in Azure's layout, always valid JSON, a disk
bound that removes the oldest hours first, a bounded queue whose overflow is counted; the
metrics that export it; and ``nsg-agent flows`` reading it back."""

from __future__ import annotations

import json
import re

from nsg_agent.daemon.metrics import Metrics
from nsg_agent.flowlogs.format import FlowEvent, Identity, acl_id
from nsg_agent.flowlogs.writer import Writer, log_files

H10 = 1764583200.0  # 2025-12-01T10:00:00Z


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def ev(t: float, nic: str = "web1", state: str = "D", mac: str = "00:22:48:71:c2:05", sport: int = 40000) -> FlowEvent:
    return FlowEvent(int(t * 1000), nic, "web-nsg", "DefaultRule_DenyAllInBound", "198.51.100.7", "10.88.1.4",
                     sport, 22, 6, "I", state, mac=mac)


def test_one_file_per_nic_and_hour_in_azures_layout(tmp_path):
    clock = Clock(H10 + 3598)
    w = Writer(tmp_path, Identity("h"), clock=clock)
    w.submit(ev(clock.t))
    w.submit(ev(clock.t, nic="app1", mac="aa:bb:cc:dd:ee:ff"))
    assert w.flush() == 2
    clock.t = H10 + 3599
    w.submit(ev(clock.t, sport=40001))
    w.flush()
    clock.t = H10 + 3601  # the next hour
    w.submit(ev(clock.t, sport=40002))
    w.flush()
    rel = [str(p.relative_to(tmp_path)) for p in log_files(tmp_path)]
    assert rel == ["y=2025/m=12/d=01/h=10/m=00/macAddress=00224871C205/PT1H.json",
                   "y=2025/m=12/d=01/h=10/m=00/macAddress=AABBCCDDEEFF/PT1H.json",
                   "y=2025/m=12/d=01/h=11/m=00/macAddress=00224871C205/PT1H.json"]
    first = json.loads(log_files(tmp_path)[0].read_text())
    assert len(first["records"]) == 2  # two flushes appended, the file still one JSON document
    assert [r["targetResourceID"].rsplit("/", 1)[1] for r in first["records"]] == ["web1", "web1"]
    assert w.stats()["written"]["D"] == 4 and w.stats()["records"] == 4
    assert json.loads((tmp_path / "acls.json").read_text()) == {acl_id("web-nsg"): "web-nsg"}


def test_disk_bound_removes_the_oldest_hours_first(tmp_path):
    clock = Clock(H10)
    w = Writer(tmp_path, Identity("h"), clock=clock, max_bytes=6000)
    hours = []
    for h in range(8):
        clock.t = H10 + 3600 * h
        for i in range(5):
            w.submit(ev(clock.t + i, sport=40000 + i))
        w.flush()
        total = sum(p.stat().st_size for p in log_files(tmp_path))
        assert total <= 6000, (h, total)
        hours.append([re.search(r"h=(\d\d)", str(p)).group(1) for p in log_files(tmp_path)])
    kept = hours[-1]
    assert kept[-1] == "17" and "10" not in kept, hours  # the newest hour kept, the oldest gone
    assert kept == sorted(kept) and len(kept) >= 2
    assert not (tmp_path / "y=2025" / "m=12" / "d=01" / "h=10").exists()  # empty directories pruned
    assert w.stats()["dropped"]["disk"] == 0


def test_a_record_that_cannot_fit_is_dropped_and_counted(tmp_path):
    clock = Clock(H10)
    w = Writer(tmp_path, Identity("h"), clock=clock, max_bytes=1500)
    total_dropped = 0
    for i in range(20):
        w.submit(ev(clock.t, sport=41000 + i))
        w.flush()
        assert sum(p.stat().st_size for p in log_files(tmp_path)) <= 1500
    total_dropped = w.stats()["dropped"]["disk"]
    assert total_dropped > 0 and w.stats()["written"]["D"] + total_dropped == 20


def test_queue_overflow_drops_and_counts_without_blocking(tmp_path):
    w = Writer(tmp_path, Identity("h"), queue_size=5)
    results = [w.submit(ev(H10 + i, sport=42000 + i)) for i in range(12)]  # nobody drains
    assert results == [True] * 5 + [False] * 7
    assert w.stats()["dropped"]["queue"] == 7 and w.stats()["queued"] == 5
    assert w.flush() == 5


def test_writer_thread_and_close(tmp_path):
    w = Writer(tmp_path, Identity("h"), flush_interval=0.05).start()
    w.submit(ev(H10))
    w.close()
    assert w.stats()["written"]["D"] == 1


def test_metrics_export_written_and_dropped(tmp_path):
    w = Writer(tmp_path, Identity("h"), queue_size=1)
    w.submit(ev(H10))
    w.submit(ev(H10))
    w.flush()
    m = Metrics(None)
    m.add_flow_logs(w.stats)
    text = m.text().decode()
    assert 'nsg_agent_flowlog_tuples_written_total{state="D"} 1.0' in text
    assert 'nsg_agent_flowlog_tuples_dropped_total{reason="queue"} 1.0' in text
    assert "nsg_agent_flowlog_records_written_total 1.0" in text


def test_flows_command_prints_a_table_and_json(tmp_path, capsys):
    from nsg_agent.cli.main import main

    clock = Clock(H10 + 10)
    w = Writer(tmp_path, Identity("h"), clock=clock)
    w.submit(ev(clock.t))
    w.submit(FlowEvent(int(clock.t * 1000), "app1", "app-nsg", "UserRule_allow", "10.88.1.4", "10.88.2.4", 5000, 443,
                       6, "O", "E", 5, 600, 4, 3000))
    w.flush()
    assert main(["flows", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "198.51.100.7:40000 -> 10.88.1.4:22" in out and "web-nsg: DefaultRule_DenyAllInBound" in out
    assert "denied" in out and "5/4" in out and "600/3000" in out and "2 flow tuples, 1 denied" in out
    assert main(["flows", "--dir", str(tmp_path), "--denied", "--nic", "web1", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["nsg"] == "web-nsg" and rows[0]["state"] == "D"
    assert main(["flows", "--dir", str(tmp_path), "--since", "2025-12-01T10:30:00Z", "--json"]) == 0
    assert capsys.readouterr().out == ""


def test_follow_reads_only_what_was_appended(tmp_path):
    from nsg_agent.flowlogs import reader

    clock = Clock(H10 + 10)
    w = Writer(tmp_path, Identity("h"), clock=clock)
    w.submit(ev(clock.t, sport=1))
    w.flush()
    path = log_files(tmp_path)[0]
    first, offset = reader.read_from(path, 0)
    assert [t.sport for t in first] == [1]
    assert reader.read_from(path, offset) == ([], offset)  # nothing new
    w.submit(ev(clock.t, sport=2))
    w.submit(ev(clock.t, sport=3))
    w.flush()
    more, offset2 = reader.read_from(path, offset)
    assert sorted(t.sport for t in more) == [2, 3] and offset2 > offset
    # a record cut in the middle of its write is not read until it is complete
    data = path.read_bytes()
    partial = tmp_path / "partial.json"
    partial.write_bytes(data[: offset2 - 40])
    cut, cut_offset = reader.read_from(partial, offset)
    assert cut == [] and cut_offset == offset
    got = list(reader.follow(tmp_path, poll=0.01, stop_after=0.05))
    assert sorted(t.sport for t in got) == [1, 2, 3]
