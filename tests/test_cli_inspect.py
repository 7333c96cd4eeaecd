"""The inspection commands through ``nsg_agent.cli.main.main``: validate, effective-rules, verify —
output, JSON shapes and exit codes (0 ok/allow, 1 deny, 2 invalid input)."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml

from foundation_helpers import EXAMPLES, base_state, rule
from nsg_agent.cli.main import main

PORT80 = str(EXAMPLES / "port80-subnet-nic.yaml")
ASG = str(EXAMPLES / "webservers-asg.yaml")
HUB = str(EXAMPLES / "hub-spoke.yaml")


def run(capsys, *argv):
    """(exit code, stdout, stderr) of one CLI call; a traceback is never acceptable."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# --- validate --------------------------------------------------------------------------------


def test_validate_ok_summary(capsys):
    """validate prints OK, the kind and the counts of every object kind, exit 0."""
    code, out, _ = run(capsys, "validate", HUB)
    assert code == 0
    assert out.startswith(f"OK {HUB} (desired-state)")
    for label, n in (("virtual networks", 3), ("subnets", 3), ("network interfaces", 3),
                     ("network security groups", 4), ("security rules", 9), ("service tags", 7)):
        assert any(line.split()[:-1] and line.strip().startswith(label) and f" {n}" in line
                   for line in out.splitlines()), label
    assert "no warnings" in out


def test_validate_json(capsys):
    """validate --json gives ok, kind, counts and warnings as JSON."""
    code, out, _ = run(capsys, "validate", ASG, "--json")
    body = json.loads(out)
    assert code == 0 and body["ok"] is True and body["kind"] == "desired-state"
    assert body["counts"]["applicationSecurityGroups"] == 2 and body["counts"]["networkInterfaces"] == 3
    assert body["warnings"] == []


def _bad_file(tmp_path):
    doc = base_state(subnet_rules=[rule("a", 99), rule("b", 100, dport="70000")])
    doc["networkInterfaces"][0]["ipAddresses"] = ["10.0.1.4"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_validate_reports_every_problem(capsys, tmp_path):
    """validate lists every problem as file:line: path: message and exits 2."""
    path = _bad_file(tmp_path)
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 2
    lines = out.splitlines()
    assert lines[0] == f"INVALID {path}: 2 problems"
    assert any(line.strip().startswith(f"{path}:") and "networkSecurityGroups[0].securityRules[0].priority:" in line
               for line in lines[1:])
    assert any("securityRules[1].destinationPortRange:" in line and "outside 0-65535" in line for line in lines[1:])


def test_validate_json_problems(capsys, tmp_path):
    """validate --json on a bad file gives ok=false and structured problems with lines."""
    code, out, _ = run(capsys, "validate", str(_bad_file(tmp_path)), "--json")
    body = json.loads(out)
    assert code == 2 and body["ok"] is False
    assert {p["path"] for p in body["problems"]} == {"networkSecurityGroups[0].securityRules[0].priority",
                                                     "networkSecurityGroups[0].securityRules[1].destinationPortRange"}
    assert all(isinstance(p["line"], int) for p in body["problems"])


def test_validate_missing_file(capsys, tmp_path):
    """A file that does not exist is invalid input (exit 2), not a crash."""
    code, out, _ = run(capsys, "validate", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read file" in out


def test_validate_arm_parameters_says_how_it_was_named(capsys, samples_dir):
    """validate on the ARM parameters sample explains the NSG's name in a warning."""
    path = samples_dir / "nsg-real-world/azure-docs-json-samples__multiplesecurityrules.parameters.json"
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 0 and "(arm-parameters)" in out and "imported as an NSG named 'securityRules'" in out


# --- effective-rules -------------------------------------------------------------------------


def test_effective_rules_table(capsys):
    """The table lists per direction and level the NSG and its rules in aligned columns."""
    code, out, _ = run(capsys, "effective-rules", ASG, "--nic", "web1")
    assert code == 0
    lines = out.splitlines()
    assert "Inbound" in lines and "Outbound" in lines
    assert "  subnet NSG MyNSG (on subnet vnet1/web)" in lines
    assert "  NIC NSG: none on NIC web1 (this level allows everything)" in lines
    header = next(line for line in lines if line.strip().startswith("Priority"))
    row = next(line for line in lines if "Allow-Internet-To-WebServers" in line)
    for column, value in (("Priority", "100"), ("Name", "Allow-Internet-To-WebServers"), ("Source", "Internet"),
                          ("Source ports", "*"), ("Destination", "ASG WebServers"),
                          ("Destination ports", "80,443"), ("Protocol", "Tcp"), ("Access", "Allow")):
        assert row[header.index(column):].startswith(value + " ") or row.endswith(value), column
    assert any("DenyAllInBound (default)" in line for line in lines)
    assert "outbound TCP port 25 (SMTP) to Internet is blocked" in out


def test_effective_rules_expand(capsys):
    """--expand shows the prefixes behind ASGs and tags under the name."""
    code, out, _ = run(capsys, "effective-rules", ASG, "--nic", "app1", "--direction", "inbound", "--expand")
    assert code == 0 and "Outbound" not in out.splitlines()
    assert "10.10.1.4/31" in out  # WebServers = web1 + web2
    assert "10.10.2.4/32" in out  # AppServers
    assert "168.63.129.16/32" in out  # VirtualNetwork includes the host VIP


def test_effective_rules_json_shape(capsys):
    """JSON follows Azure's NetworkInterfaceEffectiveNSGList: value[] with networkSecurityGroup,
    association and effectiveSecurityRules (Azure names, expanded prefixes for tags/ASGs)."""
    code, out, _ = run(capsys, "effective-rules", HUB, "--nic", "db1", "--json")
    body = json.loads(out)
    assert code == 0
    assert [e["networkSecurityGroup"]["id"].split("/providers/Microsoft.Network/")[1] for e in body["value"]] == [
        "networkSecurityGroups/spoke2-data-nsg", "networkSecurityGroups/db1-nic-nsg"]
    assert all(e["networkSecurityGroup"]["id"].startswith("/subscriptions/") for e in body["value"])
    assert "subnet" in body["value"][0]["association"] and "networkInterface" in body["value"][1]["association"]
    rules = {r["name"]: r for r in body["value"][1]["effectiveSecurityRules"]}
    deny = rules["securityRules/Deny-Internet-Out"]
    assert (deny["protocol"], deny["access"], deny["priority"], deny["direction"]) == ("All", "Deny", 4096, "Outbound")
    assert deny["destinationAddressPrefix"] == "Internet" and "10.3.0.0/16" not in deny["expandedDestinationAddressPrefix"]
    assert rules["securityRules/Allow-SQL-1433"]["destinationPortRange"] == "1433-1433"
    assert rules["defaultSecurityRules/DenyAllInBound"]["sourceAddressPrefix"] == "0.0.0.0/0"  # as Azure writes '*'
    assert set(body["value"][1]["tagMap"]) >= {"Internet", "VirtualNetwork", "AzureLoadBalancer"}


def test_effective_rules_json_reloads(capsys, tmp_path):
    """The JSON output loads back as NSGs with the same user rules (the importer reads it)."""
    code, out, _ = run(capsys, "effective-rules", ASG, "--nic", "web1", "--format", "json")
    path = tmp_path / "eff.json"
    path.write_text(out)
    code, out, _ = run(capsys, "validate", str(path), "--json")
    body = json.loads(out)
    assert code == 0 and body["kind"] == "effective-rules" and body["counts"]["securityRules"] == 3


def test_effective_rules_csv(capsys):
    """CSV has one row per rule with direction, level, NSG and the rule's columns."""
    code, out, _ = run(capsys, "effective-rules", PORT80, "--nic", "both-allow", "--format", "csv", "--expand")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 2 * (4 + 3)  # two NSGs; inbound 1 user + 3 defaults, outbound 3
    first = rows[0]
    assert (first["direction"], first["level"], first["nsg"], first["name"], first["destinationPorts"]) == (
        "Inbound", "subnet", "allow-80-subnet", "Allow-HTTP-Inbound", "80")
    assert "203.0.113.0" not in first["expandedSource"] or first["expandedSource"]
    assert [r["level"] for r in rows if r["direction"] == "Outbound"][:1] == ["nic"]


def test_effective_rules_unknown_nic(capsys):
    """An unknown NIC is invalid input: exit 2 with the known names."""
    code, _, err = run(capsys, "effective-rules", PORT80, "--nic", "nope")
    assert code == 2 and "no NIC named 'nope'" in err and "both-allow" in err


# --- verify ----------------------------------------------------------------------------------

SEED = [
    ("subnet-nsg-only", "subnet-only", "10.20.1.4", 0, "Allow by rule Allow-HTTP-Inbound of NSG allow-80-subnet",
     ["1. subnet NSG allow-80-subnet: rule Allow-HTTP-Inbound (priority 100) -> Allow",
      "2. NIC NSG: none (allows everything) -> Allow"]),
    ("nic-nsg-only", "nic-only", "10.20.2.4", 0, "Allow by rule Allow-HTTP-Inbound of NSG allow-80-nic",
     ["1. subnet NSG: none (allows everything) -> Allow",
      "2. NIC NSG allow-80-nic: rule Allow-HTTP-Inbound (priority 100) -> Allow"]),
    ("both-allow", "both-allow", "10.20.3.4", 0, "Allow by rule Allow-HTTP-Inbound of NSG allow-80-nic",
     ["1. subnet NSG allow-80-subnet: rule Allow-HTTP-Inbound (priority 100) -> Allow",
      "2. NIC NSG allow-80-nic: rule Allow-HTTP-Inbound (priority 100) -> Allow"]),
    ("both-only-subnet-allows", "subnet-allows", "10.20.4.4", 1, "Deny by rule DenyAllInBound of NSG defaults-nic",
     ["1. subnet NSG allow-80-subnet: rule Allow-HTTP-Inbound (priority 100) -> Allow",
      "2. NIC NSG defaults-nic: default rule DenyAllInBound (priority 65500) -> Deny"]),
    ("both-only-nic-allows", "nic-allows", "10.20.5.4", 1, "Deny by rule DenyAllInBound of NSG defaults-subnet",
     ["1. subnet NSG defaults-subnet: default rule DenyAllInBound (priority 65500) -> Deny",
      "(NIC NSG allow-80-nic not evaluated: already denied)"]),
]


@pytest.mark.parametrize("nic,address,code,headline,path", [r[1:] for r in SEED], ids=[r[0] for r in SEED])
def test_verify_seed_port80(capsys, nic, address, code, headline, path):
    """verify answers the seed's port-80 example in every combination, with the decision path."""
    got, out, _ = run(capsys, "verify", PORT80, "--nic", nic, "--direction", "Inbound", "--protocol", "TCP",
                      "--local", f"{address}:80", "--remote", "203.0.113.10:50000")
    lines = [line.strip() for line in out.splitlines()]
    assert got == code
    assert lines[0] == headline
    assert lines[1] == f"Inbound Tcp 203.0.113.10:50000 -> {address}:80 at NIC {nic}"
    assert lines[2:] == path


@pytest.mark.parametrize("nic,address,code,access,rule_name,nsg,levels", [
    ("subnet-allows", "10.20.4.4", 1, "Deny", "defaultSecurityRules/DenyAllInBound", "defaults-nic", ["subnet", "nic"]),
    ("nic-only", "10.20.2.4", 0, "Allow", "securityRules/Allow-HTTP-Inbound", "allow-80-nic", ["subnet", "nic"]),
], ids=["deny-json", "allow-json"])
def test_verify_json(capsys, nic, address, code, access, rule_name, nsg, levels):
    """verify --json has Azure's access/ruleName plus nsg and the path of level decisions."""
    got, out, _ = run(capsys, "verify", PORT80, "--nic", nic, "--direction", "inbound", "--protocol", "6",
                      "--local", f"{address}:80", "--remote", "203.0.113.10:50000", "--json")
    body = json.loads(out)
    assert got == code
    assert (body["access"], body["ruleName"], body["nsg"]) == (access, rule_name, nsg)
    assert [d["level"] for d in body["path"]] == levels
    assert body["flow"] == {"direction": "Inbound", "protocol": 6, "localIPAddress": address, "localPort": 80,
                            "remoteIPAddress": "203.0.113.10", "remotePort": 50000}


def test_verify_platform_path(capsys):
    """A platform decision (SMTP block) shows as the platform level in the path."""
    got, out, _ = run(capsys, "verify", HUB, "--nic", "app1", "--direction", "Outbound", "--protocol", "tcp",
                      "--local", "10.2.1.4:40000", "--remote", "203.0.113.10:25", "--json")
    body = json.loads(out)
    assert got == 1 and body["path"][0]["level"] == "platform" and body["ruleName"] == "platformRules/BlockOutboundSmtp"
    # Azure's own IP flow verify knows no SMTP block: it answers by the NSG
    assert body["azure"]["access"] == "Allow" and body["azure"]["ruleName"].startswith(("securityRules/", "defaultSecurityRules/"))


def test_verify_icmp_without_ports(capsys):
    """ICMP flows are verified with addresses only."""
    got, out, _ = run(capsys, "verify", HUB, "--nic", "db1", "--direction", "Inbound", "--protocol", "icmp",
                      "--local", "10.3.1.4", "--remote", "10.1.1.4")
    assert got == 0 and out.startswith("Allow by rule AllowVnetInBound")


BAD_VERIFY = [
    ("protocol-star", ["--protocol", "*"], "a flow has one protocol"),
    ("protocol-unknown", ["--protocol", "gre2"], "unknown protocol"),
    ("tcp-needs-ports", ["--local", "10.20.1.4"], "needs ports"),
    ("icmp-has-no-ports", ["--protocol", "icmp"], "has no ports"),
    ("bad-ip", ["--remote", "203.0.113.300:5"], "is not IP or IP:PORT"),
    ("bad-port", ["--remote", "203.0.113.3:70000"], "0-65535"),
    ("mixed-families", ["--remote", "[2001:db8::1]:5"], "both be IPv4 or both IPv6"),
    ("local-not-on-nic", ["--local", "10.20.1.5:80"], "is not an address of NIC subnet-only"),
    ("unknown-nic", ["--nic", "zz"], "no NIC named 'zz'"),
]


@pytest.mark.parametrize("override,message", [r[1:] for r in BAD_VERIFY], ids=[r[0] for r in BAD_VERIFY])
def test_verify_invalid_input(capsys, override, message):
    """Bad verify arguments exit 2 with a one-line message, never a traceback."""
    args = {"--nic": "subnet-only", "--direction": "Inbound", "--protocol": "tcp",
            "--local": "10.20.1.4:80", "--remote": "203.0.113.10:50000"}
    args.update(dict(zip(override[::2], override[1::2])))
    got, _, err = run(capsys, "verify", PORT80, *[x for kv in args.items() for x in kv])
    assert got == 2 and message in err


def test_verify_bad_direction_is_usage_error(capsys):
    """An unknown direction is an argparse usage error (exit 2)."""
    got, _, err = run(capsys, "verify", PORT80, "--nic", "nic-only", "--direction", "Up", "--protocol", "tcp",
                      "--local", "10.20.2.4:80", "--remote", "203.0.113.10:1")
    assert got == 2 and "Inbound or Outbound" in err


def test_verify_invalid_file(capsys, tmp_path):
    """verify on an invalid file exits 2 and lists the file's problems."""
    path = tmp_path / "bad.yaml"
    path.write_text("networkSecurityGroups: [{name: x, securityRules: [{name: r, priority: 1}]}]\n")
    got, _, err = run(capsys, "verify", str(path), "--nic", "n", "--direction", "Inbound", "--protocol", "icmp",
                      "--local", "10.0.0.4", "--remote", "10.0.0.5")
    assert got == 2 and "priority 1 is outside 100..4096" in err


def test_verify_ipv6_endpoints(capsys, tmp_path):
    """IPv6 endpoints are written [addr]:port."""
    doc = base_state(subnet_rules=[rule("web6", 100, protocol="Tcp", dport="443")])
    doc["virtualNetworks"][0]["addressSpace"].append("fd00::/48")
    doc["virtualNetworks"][0]["subnets"].append({"name": "s6", "addressPrefix": "fd00::/64",
                                                 "networkSecurityGroup": "subnet-nsg"})
    doc["networkInterfaces"].append({"name": "n6", "subnet": "v1/s6", "ipAddresses": ["fd00::4"]})
    path = tmp_path / "v6.json"
    path.write_text(json.dumps(doc))
    got, out, _ = run(capsys, "verify", str(path), "--nic", "n6", "--direction", "Inbound", "--protocol", "tcp",
                      "--local", "[fd00::4]:443", "--remote", "[2001:db8::7]:50000")
    assert got == 0 and "[2001:db8::7]:50000 -> [fd00::4]:443" in out


def test_closed_pipe_ends_quietly(examples_dir):
    """A reader that went away (| head) ends the command with SIGPIPE's code, no traceback."""
    import subprocess
    import sys

    code = ("import sys; from nsg_agent.cli.main import main; "
            f"sys.exit(main(['effective-rules', {str(examples_dir / 'lab-demo.yaml')!r}, '--nic', 'web1']))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the interpreter has even started: every write gets EPIPE
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(30) == 141
    assert "Traceback" not in err
