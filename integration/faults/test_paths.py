"""Privilege and paths with the real daemon (namespaces nsgf-*): a planted symlink as the
state directory is refused, never followed; a corrupt or foreign status file is named, set
aside and rebuilt; a second daemon on the namespace is refused; ``plan``, ``status`` and
``apply`` see an element someone added to a verdict map and ``apply`` removes it."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from faultlib import NSG_AGENT, bench_state, compiled, content, nft_script, poll, record, tables

from host_helpers import host_policy

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root_nft_guard")]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NSG_AGENT, *args], capture_output=True, text=True, timeout=120)


def test_a_symlinked_state_dir_is_refused_never_followed(fault_pair, agents, tmp_path):
    config = tmp_path / "desired-state.yaml"
    config.write_text(host_policy(fault_pair))
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "run").symlink_to(target)
    agent = agents.start(config, fault_pair.srv, tmp_path / "run")
    assert agent.proc.wait(30) == 3
    assert "symbolic link" in agent.log_path.read_text()
    assert list(target.iterdir()) == [], "something was written through the planted link"
    assert ("inet", "nsg_agent") not in tables(fault_pair.srv)  # refused before any apply
    out = cli("apply", str(config), "--netns", fault_pair.srv, "--state-dir", str(tmp_path / "run"))
    assert "Traceback" not in out.stderr and list(target.iterdir()) == []
    record("paths", symlink_followed=len(list(target.iterdir())))


@pytest.mark.parametrize("content_", ["[1, 2]", "null", '"text"', '{"commit": {"source": "x"}}',
                                      '{"netns": null, "commit": null, "owner": "someone"}'],
                         ids=["json-list", "null", "string", "missing-keys", "extra-keys"])
def test_a_foreign_status_file_is_set_aside_and_rebuilt(content_, fault_pair, agents, tmp_path):
    config = tmp_path / "desired-state.yaml"
    config.write_text(host_policy(fault_pair))
    status = tmp_path / "run" / fault_pair.srv / "status.json"
    status.parent.mkdir(parents=True, mode=0o750)
    (tmp_path / "run").chmod(0o750)
    status.write_text(content_)
    for cmd in (["status", "--netns", fault_pair.srv], ["plan", str(config), "--netns", fault_pair.srv]):
        out = cli(*cmd, "--state-dir", str(tmp_path / "run"))
        assert out.returncode == 0 and "Traceback" not in out.stderr and str(status) in out.stdout, out
    agent = agents.start(config, fault_pair.srv, tmp_path / "run")
    agent.wait_for("agent.ready", timeout=30)
    corrupt = agent.wait_for("status.corrupt")
    assert str(status) in corrupt["error"]
    moved = [p for p in status.parent.iterdir() if p.name.startswith("status.json.bad-")]
    assert [p.read_text() for p in moved] == [content_]
    assert json.loads(status.read_text())["commit"]["ruleset_sha256"] == compiled(config).digest
    record("paths", foreign_status_files=1)


def test_a_second_daemon_on_the_namespace_is_refused(fault_pair, agents, tmp_path):
    """Another file, the same namespace: the second daemon exits 3 naming the first's pid;
    the first goes on alone (no fight: its table is rewritten by nobody)."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(host_policy(fault_pair))
    b.write_text(host_policy(fault_pair, web_access="Deny"))
    first = agents.start(a, fault_pair.srv, tmp_path / "run")
    first.wait_for("agent.ready", timeout=30)
    second = agents.start(b, fault_pair.srv, tmp_path / "run")
    assert second.proc.wait(30) == 3
    log = second.log_path.read_text()
    assert f"pid {first.proc.pid}" in log and fault_pair.srv in log
    applied = len([e for e in first.events() if e["event"] == "config.applied"])
    time.sleep(2)
    assert len([e for e in first.events() if e["event"] == "config.applied"]) == applied
    assert tables(fault_pair.srv)[("inet", "nsg_agent")].stamp == compiled(a).digest
    record("paths", second_daemon_refused=1)


def test_plan_status_apply_see_an_added_element(fault_pair, tmp_path):
    """The issue's row: '7003 : accept' added to a verdict map. plan reports drift, status
    says DIFFERS, apply of the same file makes the kernel equal to the file again."""
    state, _ = bench_state(fault_pair, rules=40)
    config = tmp_path / "state.json"
    config.write_text(json.dumps(state))
    run_dir = str(tmp_path / "run")
    common = ("--netns", fault_pair.srv, "--state-dir", run_dir)
    assert cli("apply", str(config), *common).returncode == 0
    good = content(fault_pair.srv, "nsg_agent")
    assert "no changes" in cli("plan", str(config), *common).stdout
    assert "matches the commit" in cli("status", *common).stdout
    ports = next(i["map"]["name"] for i in json.loads(subprocess.run(
        ["ip", "netns", "exec", fault_pair.srv, "nft", "-j", "list", "ruleset"], capture_output=True,
        text=True).stdout)["nftables"] if "map" in i and any(e[0] == 7001 for e in i["map"].get("elem", [])))
    nft_script(fault_pair.srv, "add table inet nsgf_other\n"  # the generation moves for another reason too
                               f"add element inet nsg_agent {ports} {{ 7003 : accept }}")
    plan = cli("plan", str(config), *common).stdout
    status = cli("status", *common).stdout
    assert "drift" in plan and "no changes" not in plan, plan
    assert "DIFFERS" in status, status
    assert cli("apply", str(config), *common).returncode == 0
    assert poll(lambda: content(fault_pair.srv, "nsg_agent") == good, timeout=5)
    assert "no changes" in cli("plan", str(config), *common).stdout
    record("paths", element_drift_seen_by_plan_status_apply=1)
