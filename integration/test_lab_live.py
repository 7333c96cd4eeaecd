"""The lab changing while it runs: ASG membership and rule edits take effect without
rebuilding anything (same namespaces, same inodes), ``lab run`` follows topology edits (add,
move, remove a NIC), and ``lab down`` leaves nothing behind, also after a crash and when a
test fails half-way."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lab_fixtures import REPO, Lab, leftovers, poll, root_lab_links, write_atomically
from nsg_agent.cli.main import main
from nsg_agent.host import netns as host_netns
from nsg_agent.lab import build, naming

pytestmark = [pytest.mark.root]


def live(port: int = 80, web2_asgs: str = "[]", web2: str = "{subnet: v/s1, ipAddresses: [10.43.1.5]}",
         extra_nics: str = "", priority: int = 100) -> str:
    return f"""\
virtualNetworks:
  - name: v
    addressSpace: [10.43.0.0/16]
    subnets:
      - {{name: s1, addressPrefix: 10.43.1.0/24, networkSecurityGroup: s-nsg}}
      - {{name: s2, addressPrefix: 10.43.2.0/24}}
applicationSecurityGroups:
  - {{name: Web}}
networkInterfaces:
  - {{name: web1, subnet: v/s1, ipAddresses: [10.43.1.4], applicationSecurityGroups: [Web]}}
  - {{name: web2, applicationSecurityGroups: {web2_asgs}, {web2[1:-1]}}}
{extra_nics}networkSecurityGroups:
  - name: s-nsg
    securityRules:
      - {{name: web-in, priority: {priority}, direction: Inbound, access: Allow, protocol: Tcp,
         sourceAddressPrefix: Internet, sourcePortRange: "*",
         destinationApplicationSecurityGroups: [Web], destinationPortRange: "{port}"}}
lab:
  externalHosts:
    - {{name: inet, address: 203.0.113.43}}
"""


def observed(lab: Lab, dst: str, service: str, ports=(80, 8080)) -> str:
    report = lab.probe(ports=list(ports), only=["inet", dst])
    assert [r.as_dict() for r in report.mismatches] == []
    return lab.cell(report, "inet", dst, service).observed


def test_asg_change_and_rule_edit_apply_without_rebuilding(make_lab):
    """lab up on a running lab: an ASG membership change and a rule edit change the verdicts
    while every namespace stays the same one (same inode) and no topology change happens."""
    lab = make_lab("live", live())
    before = lab.inodes()
    assert observed(lab, "web2", "tcp/80") == "denied"
    assert observed(lab, "web1", "tcp/80") == "allowed"

    changes, _ = lab.up(live(web2_asgs="[Web]"))  # web2 joins WebServers-style ASG
    assert changes.empty
    assert observed(lab, "web2", "tcp/80") == "allowed"

    changes, _ = lab.up(live(web2_asgs="[Web]", port=8080))  # the rule now opens 8080, not 80
    assert changes.empty
    assert observed(lab, "web1", "tcp/80") == "denied"
    assert observed(lab, "web1", "tcp/8080") == "allowed"
    assert lab.inodes() == before


def _eth0_addresses(netns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", netns, "-j", "addr", "show", "dev", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", []) if a["family"] == "inet"]


def test_lab_run_follows_edits_of_the_file(make_lab, lab_daemon):
    """nsg-agent lab run: ASG change, rule edit, NIC added, moved and removed, and a bad edit,
    each reconciled on the live lab; unchanged namespaces keep their inode."""
    lab = make_lab("run", live(), up=False)
    d = lab_daemon(lab)
    d.wait_applied(1)
    before = lab.inodes()
    assert observed(lab, "web2", "tcp/80") == "denied"

    write_atomically(lab.file, live(web2_asgs="[Web]"))  # ASG membership
    d.wait_applied(2)
    assert observed(lab, "web2", "tcp/80") == "allowed"
    write_atomically(lab.file, live(web2_asgs="[Web]", port=8080))  # rule edit
    d.wait_applied(3)
    assert observed(lab, "web2", "tcp/8080") == "allowed"
    assert observed(lab, "web2", "tcp/80") == "denied"
    assert lab.inodes() == before

    # add web3 in s2, move web2 to s2 with a new address
    moved = live(web2_asgs="[Web]", port=8080, web2="{subnet: v/s2, ipAddresses: [10.43.2.5]}",
                 extra_nics="  - {name: web3, subnet: v/s2, ipAddresses: [10.43.2.4]}\n")
    write_atomically(lab.file, moved)
    d.wait_applied(4)
    plan = lab.plan
    assert plan.nic("web3") is not None and host_netns.netns_inode(plan.nic("web3").netns)
    web2_ns = plan.nic("web2").netns
    assert host_netns.netns_inode(web2_ns) == before[web2_ns]
    assert _eth0_addresses(web2_ns) == ["10.43.2.5"]
    report = lab.probe(ports=[80, 8080])
    assert [r.as_dict() for r in report.mismatches] == []
    assert lab.cell(report, "inet", "web2", "tcp/80").observed == "allowed"  # s2 has no NSG

    # remove web3 again
    web3_ns = plan.nic("web3").netns
    good = live(web2_asgs="[Web]", port=8080, web2="{subnet: v/s2, ipAddresses: [10.43.2.5]}")
    write_atomically(lab.file, good)
    d.wait_applied(5)
    assert host_netns.netns_inode(web3_ns) is None, d.log()[-4000:]
    assert lab.plan.nic("web3") is None

    # a bad edit: logged, nothing touched, the last good state stays enforced
    inodes = lab.inodes()
    write_atomically(lab.file, live(priority=5))
    assert poll(lambda: '"config.invalid"' in d.log(), timeout=10)
    assert lab.inodes() == inodes
    assert d.applied_count() == 5
    write_atomically(lab.file, good)  # the good file again: nothing to change
    assert poll(lambda: '"config.unchanged"' in d.log(), timeout=10)
    assert d.applied_count() == 5 and lab.inodes() == inodes
    assert observed(lab, "web1", "tcp/8080") == "allowed"


def test_run_with_lab_flag_is_the_lab_daemon(make_lab, lab_daemon):
    """nsg-agent run --lab FILE builds the lab from the file and follows an ASG change live."""
    lab = make_lab("runf", live(), up=False)
    d = lab_daemon(lab, via_run_flag=True)
    d.wait_applied(1)
    before = lab.inodes()
    assert observed(lab, "web2", "tcp/80") == "denied"
    write_atomically(lab.file, live(web2_asgs="[Web]"))
    d.wait_applied(2)
    assert observed(lab, "web2", "tcp/80") == "allowed"
    assert lab.inodes() == before


def test_lab_down_removes_everything(make_lab, capsys):
    """lab down removes every namespace (with their bridges and veths) and the state file;
    a second down is a no-op."""
    lab = make_lab("down", live())
    names = lab.plan.namespaces()
    assert all(host_netns.netns_inode(n) for n in names)
    assert main(["lab", "down", "--name", lab.name]) == 0
    assert leftovers(lab.name) == []
    assert all(host_netns.netns_inode(n) is None for n in names)
    assert root_lab_links() == []
    assert main(["lab", "down", "--name", lab.name]) == 0
    assert "removed 0 namespaces" in capsys.readouterr().out


def test_lab_down_after_a_crash_without_state_file(make_lab):
    """With the state file gone (a crash), down still finds the lab's namespaces by name,
    and leaves other labs' namespaces alone."""
    lab = make_lab("crash", live())
    other = make_lab("crash-x", live())  # "…crash" is a prefix of "…crash-x": must survive
    expected = lab.plan.namespaces()
    naming.state_file(lab.name).unlink()
    assert build.previous_plan(lab.name) is None
    assert sorted(build.destroy(lab.name)) == sorted(expected)
    assert leftovers(lab.name) == []
    assert all(host_netns.netns_inode(n) for n in other.plan.namespaces())


def test_lab_up_after_a_crash_mid_build_starts_clean(make_lab):
    """Namespaces left by an interrupted build (no state file) are cleared by the next up."""
    lab = make_lab("half", live(), up=False)
    subprocess.run(["ip", "netns", "add", naming.fabric_netns(lab.name)], check=True)
    subprocess.run(["ip", "netns", "add", naming.nic_netns(lab.name, 7)], check=True)
    lab.up()
    assert host_netns.netns_inode(naming.nic_netns(lab.name, 7)) is None
    assert sorted(build.lab_namespaces(lab.name)) == sorted(lab.plan.namespaces())
    assert lab.probe(ports=[80]).mismatches == []


FAILING_TEST = """
from lab_fixtures import lab_name

def test_fails_half_way(make_lab):
    lab = make_lab("fail", {text!r})
    assert lab.plan.nics
    raise RuntimeError("boom: the test fails with the lab up")
"""


def test_fixture_tears_the_lab_down_when_a_test_fails(tmp_path):
    """A test that fails half-way with its lab up still leaves no namespace behind."""
    test_dir = tmp_path / "inner"
    test_dir.mkdir()
    (test_dir / "conftest.py").write_text("pytest_plugins = ['lab_fixtures']\n")
    (test_dir / "test_inner.py").write_text(FAILING_TEST.format(text=live()))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(test_dir),
         "-c", "/dev/null", str(test_dir)],
        capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO / "integration"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert "boom: the test fails with the lab up" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1
    # the inner run had its own pid, so its lab name is unknown here: look for any it*fail lab
    inner = [n for n in host_netns.list_netns() if n.startswith("nsgl-it") and "fail-" in n]
    assert inner == []


def test_lab_exec_and_status(make_lab, capsys):
    """lab exec runs in the NIC's namespace and passes the exit code; status --json lists
    the lab's NICs and hosts, all present."""
    lab = make_lab("exec", live())
    capsys.readouterr()
    assert main(["lab", "exec", "web1", "--lab", lab.name, "--", "sh", "-c", "exit 7"]) == 7
    assert main(["lab", "exec", "nope", "--lab", lab.name, "--", "true"]) == 2
    proc = subprocess.run([str(REPO / ".venv/bin/nsg-agent"), "lab", "exec", "inet", "--lab", lab.name,
                           "--", "ip", "-j", "addr", "show", "dev", "eth0"], capture_output=True, text=True)
    assert proc.returncode == 0 and "203.0.113.43" in proc.stdout
    assert main(["lab", "status", "--name", lab.name, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)["labs"][0]
    assert status["up"] and status["missing"] == [] and status["stray"] == []
    assert {n["name"]: n["addresses"] for n in status["nics"]} == {"web1": ["10.43.1.4"], "web2": ["10.43.1.5"]}
    assert [h["name"] for h in status["hosts"]] == ["inet", "platform"]
    assert status["rules"]["sha256"] == lab.loaded().sha256
