"""The lab with real packets: every example probes clean; statefulness, intra-subnet
filtering, the seed's port-80 combinations, anti-spoofing and unpeered VNets, each shown by
packets crossing (or not) the fabric's bridges and routes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lab_fixtures import EXAMPLES, REPO, Lab, root_lab_links
from nsg_agent.cli.main import main
from nsg_agent.host import netns as host_netns

pytestmark = [pytest.mark.root]

EXAMPLE_FILES = sorted(p for p in EXAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=[p.stem for p in EXAMPLE_FILES])
def test_example_probe_has_no_mismatch(example: Path, make_lab, capsys):
    """lab up FILE, then lab probe: every cell's real packets agree with the prediction."""
    lab = make_lab(f"x{EXAMPLE_FILES.index(example)}", file=example, up=False)
    assert main(["lab", "up", str(example), "--name", lab.name]) == 0
    capsys.readouterr()
    rc = main(["lab", "probe", "--name", lab.name, "--json"])
    report = json.loads(capsys.readouterr().out)
    bad = [c for c in report["cells"] if not c["match"]]
    assert bad == [] and rc == 0
    summary = report["summary"]
    assert summary["cells"] > 0 and summary["allowed"] > 0 and summary["denied"] > 0
    assert root_lab_links() == []


SCENARIO = """\
virtualNetworks:
  - name: v1
    addressSpace: [10.41.0.0/16]
    subnets:
      - {name: s1, addressPrefix: 10.41.1.0/24}
  - name: v2
    addressSpace: [10.42.0.0/16]
    subnets:
      - {name: s2, addressPrefix: 10.42.1.0/24}
networkInterfaces:
  - {name: a, subnet: v1/s1, ipAddresses: [10.41.1.4]}
  - {name: b, subnet: v1/s1, ipAddresses: [10.41.1.5], networkSecurityGroup: b-nsg}
  - {name: c, subnet: v1/s1, ipAddresses: [10.41.1.6], networkSecurityGroup: c-nsg}
  - {name: d, subnet: v2/s2, ipAddresses: [10.42.1.4]}
networkSecurityGroups:
  - name: b-nsg
    securityRules:
      - {name: allow-80-from-a, priority: 100, direction: Inbound, access: Allow, protocol: Tcp,
         sourceAddressPrefix: 10.41.1.4, sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "80"}
      - {name: allow-53-from-a, priority: 110, direction: Inbound, access: Allow, protocol: Udp,
         sourceAddressPrefix: 10.41.1.4, sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "53"}
      - {name: deny-vnet-in, priority: 200, direction: Inbound, access: Deny, protocol: "*",
         sourceAddressPrefix: VirtualNetwork, sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "*"}
      - {name: deny-all-to-a, priority: 100, direction: Outbound, access: Deny, protocol: "*",
         sourceAddressPrefix: "*", sourcePortRange: "*", destinationAddressPrefix: 10.41.1.4, destinationPortRange: "*"}
  - name: c-nsg
    securityRules:
      - {name: deny-from-b, priority: 100, direction: Inbound, access: Deny, protocol: "*",
         sourceAddressPrefix: 10.41.1.5, sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "*"}
lab:
  externalHosts:
    - {name: inet, address: 198.51.100.20}
"""


@pytest.fixture(scope="module")
def scenario(module_labs) -> tuple[Lab, object]:
    lab = module_labs("scen", SCENARIO)
    return lab, lab.probe(ports=[53, 80, 8080])


def test_scenario_probes_clean(scenario):
    """The whole matrix of the scenario agrees with the prediction, cell by cell."""
    lab, report = scenario
    assert [r.as_dict() for r in report.mismatches] == []


@pytest.mark.parametrize("src, dst, service, observed, reason", [
    ("a", "b", "tcp/80", "allowed", "allow b-nsg (nic, inbound at b): UserRule_allow-80-from-a"),
    ("a", "b", "udp/53", "allowed", "allow b-nsg (nic, inbound at b): UserRule_allow-53-from-a"),
    ("b", "a", "tcp/80", "denied", "deny b-nsg (nic, outbound at b): UserRule_deny-all-to-a"),
    ("b", "a", "icmp", "denied", "deny b-nsg (nic, outbound at b): UserRule_deny-all-to-a"),
], ids=["tcp-handshake-returns", "udp-answer-returns", "reverse-tcp-is-new", "reverse-icmp-is-new"])
def test_statefulness(scenario, src, dst, service, observed, reason):
    """A reply passes with no rule for it (b's outbound denies everything to a, yet a's
    connection to b completes); the same traffic started by b is denied."""
    lab, report = scenario
    cell = lab.cell(report, src, dst, service)
    assert (cell.observed, cell.match) == (observed, True)
    assert reason.split(' ', 1)[1] in cell.predicted.reason and cell.predicted.reason.startswith(reason.split(' ', 1)[0])


@pytest.mark.parametrize("src, dst, service, observed, reason", [
    ("b", "c", "tcp/8080", "denied", "deny c-nsg (nic, inbound at c): UserRule_deny-from-b"),
    ("b", "c", "icmp", "denied", "deny c-nsg (nic, inbound at c): UserRule_deny-from-b"),
    ("a", "c", "tcp/8080", "allowed", "allow c-nsg (nic, inbound at c): DefaultRule_AllowVnetInBound"),
    ("c", "b", "udp/53", "denied", "deny b-nsg (nic, inbound at b): UserRule_deny-vnet-in"),
    ("a", "b", "tcp/8080", "denied", "deny b-nsg (nic, inbound at b): UserRule_deny-vnet-in"),
], ids=["b-to-c-denied", "b-to-c-icmp-denied", "a-to-c-allowed", "c-to-b-denied", "a-to-b-other-port"])
def test_intra_subnet_filtering(scenario, src, dst, service, observed, reason):
    """NICs sharing one subnet (one bridge) are filtered by their NSGs like any others."""
    lab, report = scenario
    cell = lab.cell(report, src, dst, service)
    assert (cell.observed, cell.match) == (observed, True)
    assert reason.split(' ', 1)[1] in cell.predicted.reason and cell.predicted.reason.startswith(reason.split(' ', 1)[0])


@pytest.mark.parametrize("src, dst, service, observed", [
    ("a", "d", "tcp/80", "denied"), ("d", "a", "icmp", "denied"), ("d", "inet", "tcp/80", "allowed"),
    ("inet", "d", "tcp/8080", "allowed"), ("inet", "a", "udp/53", "allowed"),
], ids=["v1-to-v2", "v2-to-v1", "v2-to-internet", "internet-to-open-nic", "internet-to-v1"])
def test_unpeered_vnets_have_no_route(scenario, src, dst, service, observed):
    """Unpeered VNets cannot reach each other although neither has an NSG; both still reach
    the Internet (and a NIC with no NSG at all is open to it, as in Azure)."""
    lab, report = scenario
    cell = lab.cell(report, src, dst, service)
    assert cell.observed == observed and cell.match
    if observed == "denied":
        assert cell.predicted.reason.startswith("no route: VNet")


def test_antispoofing(scenario):
    """A NIC sending from an address that is not its own is dropped at its bridge port."""
    lab, _ = scenario
    a, c = lab.plan.nic("a"), lab.plan.nic("c")
    subprocess.run(["ip", "netns", "exec", a.netns, "ip", "addr", "add", "10.41.1.99/24", "dev", "eth0"],
                   check=True)
    try:
        def reaches(source: str) -> bool:
            """Does a SYN from ``source`` get an answer (a reset: nothing listens there)?"""
            with host_netns.socket_in(a.netns) as s:
                s.settimeout(0.5)
                s.bind((source, 0))
                try:
                    s.connect((c.address, 8080))
                    return True
                except ConnectionRefusedError:
                    return True
                except OSError:
                    return False

        assert reaches(a.address) is True
        assert reaches("10.41.1.99") is False
    finally:
        subprocess.run(["ip", "netns", "exec", a.netns, "ip", "addr", "del", "10.41.1.99/24", "dev", "eth0"],
                       check=True)


PORT80 = """\
# The seed's port-80 cases, inbound TCP 80 from the Internet, one NIC per case.
virtualNetworks:
  - name: v
    addressSpace: [10.44.0.0/16]
    subnets:
      - {name: sub-allow-1, addressPrefix: 10.44.1.0/24, networkSecurityGroup: allow-80}
      - {name: sub-allow-2, addressPrefix: 10.44.2.0/24, networkSecurityGroup: allow-80}
      - {name: no-nsg, addressPrefix: 10.44.3.0/24}
      - {name: sub-allow-3, addressPrefix: 10.44.4.0/24, networkSecurityGroup: allow-80}
      - {name: sub-default, addressPrefix: 10.44.5.0/24, networkSecurityGroup: defaults}
networkInterfaces:
  - {name: both-allow, subnet: v/sub-allow-1, ipAddresses: [10.44.1.4], networkSecurityGroup: allow-80}
  - {name: subnet-only, subnet: v/sub-allow-2, ipAddresses: [10.44.2.4]}
  - {name: nic-only, subnet: v/no-nsg, ipAddresses: [10.44.3.4], networkSecurityGroup: allow-80}
  - {name: nic-denies, subnet: v/sub-allow-3, ipAddresses: [10.44.4.4], networkSecurityGroup: defaults}
  - {name: subnet-denies, subnet: v/sub-default, ipAddresses: [10.44.5.4], networkSecurityGroup: allow-80}
networkSecurityGroups:
  - name: allow-80
    securityRules:
      - {name: allow-http, priority: 100, direction: Inbound, access: Allow, protocol: Tcp,
         sourceAddressPrefix: Internet, sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "80"}
  - name: defaults
    securityRules: []
lab:
  externalHosts:
    - {name: client, address: 203.0.113.44}
"""


@pytest.mark.parametrize("nic, observed, reason", [
    ("both-allow", "allowed", "allow allow-80 (nic, inbound at both-allow): UserRule_allow-http"),
    ("subnet-only", "allowed", "allow allow-80 (subnet, inbound at subnet-only): UserRule_allow-http"),
    ("nic-only", "allowed", "allow allow-80 (nic, inbound at nic-only): UserRule_allow-http"),
    ("nic-denies", "denied", "deny defaults (nic, inbound at nic-denies): DefaultRule_DenyAllInBound"),
    ("subnet-denies", "denied", "deny defaults (subnet, inbound at subnet-denies): DefaultRule_DenyAllInBound"),
], ids=["subnet-and-nic-allow", "subnet-nsg-only", "nic-nsg-only", "subnet-allows-nic-denies",
        "nic-allows-subnet-denies"])
def test_port80_combinations(module_labs, nic, observed, reason):
    """Inbound port 80 from the Internet: both levels must allow; a missing level allows."""
    lab = module_labs("p80", PORT80) if not hasattr(test_port80_combinations, "lab") else test_port80_combinations.lab
    test_port80_combinations.lab = lab
    report = lab.probe(ports=[80], only=["client", nic])
    cell = lab.cell(report, "client", nic, "tcp/80")
    assert (cell.observed, cell.match) == (observed, True)
    assert reason.split(' ', 1)[1] in cell.predicted.reason and cell.predicted.reason.startswith(reason.split(' ', 1)[0])
    assert report.mismatches == []


# --- issue 9: Azure's Internet tag, platform drops and routes, with real packets ------------

EXACT = """\
virtualNetworks:
  - name: v
    addressSpace: [10.44.0.0/16]
    subnets:
      - {{name: s1, addressPrefix: 10.44.1.0/24, networkSecurityGroup: s-nsg}}
networkInterfaces:
  - {{name: web, subnet: v/s1, ipAddresses: [10.44.1.4]}}
  - {{name: peer, subnet: v/s1, ipAddresses: [10.44.1.5]}}
networkSecurityGroups:
  - name: s-nsg
    securityRules:
      - {{name: internet-80, priority: 100, direction: Inbound, access: Allow, protocol: Tcp,
         sourceAddressPrefix: Internet, sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "80"}}
      - {{name: vnet-any-in, priority: 110, direction: Inbound, access: Allow, protocol: "*",
         sourceAddressPrefix: VirtualNetwork, sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "*"}}
      - {{name: any-out, priority: 100, direction: Outbound, access: Allow, protocol: "*",
         sourceAddressPrefix: "*", sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "*"}}
platform: {{platformDrops: {drops}}}
lab:
  externalHosts:
    - {{name: inet, address: 198.51.100.44}}
    - {{name: private, address: 172.31.0.100}}
    - {{name: unrouted, address: 10.200.0.44}}
"""


def test_internet_tag_gre_and_none_routes_with_real_packets(make_lab):
    """Real packets agree with Azure's recorded semantics: an 'allow Internet' rule admits a
    public host but not 172.31.0.100 (private space is neither tag); GRE is dropped by the
    platform although every rule allows it (and passes once platform drops are off, so the
    drop is the platform's, not an artifact); a host at 10.200.0.44 (system route 10.0.0.0/8,
    next hop None) is unreachable whatever the NSG says."""
    lab = make_lab("exact", EXACT.format(drops="true"))
    report = lab.probe(ports=[80])
    assert [r.as_dict() for r in report.mismatches] == []
    assert lab.cell(report, "inet", "web", "tcp/80").observed == "allowed"
    private = lab.cell(report, "private", "web", "tcp/80")
    assert private.observed == "denied" and "DenyAllInBound" in private.predicted.reason
    gre = lab.cell(report, "peer", "web", "gre")
    assert gre.observed == "denied" and "PlatformRule_BlockGre" in gre.predicted.reason
    assert lab.cell(report, "peer", "web", "icmp").observed == "allowed"  # the same pair, not GRE: passes
    unrouted = lab.cell(report, "web", "unrouted", "tcp/80")
    assert unrouted.observed == "denied" and "next hop None" in unrouted.predicted.reason
    assert lab.cell(report, "web", "private", "tcp/80").observed_allowed  # 172.16/12 has no None route

    lab.up(EXACT.format(drops="false"))
    report = lab.probe(ports=[80], only=["peer", "web"])
    assert [r.as_dict() for r in report.mismatches] == []
    assert lab.cell(report, "peer", "web", "gre").observed == "allowed"


def test_kernel_verify_agrees_with_every_cell_and_detects_an_edit(make_lab):
    """verify --kernel: every cell of a lab's matrix (TCP, UDP, ICMP, GRE) run through a
    traced copy of the fabric's live table decides as the prediction, through the rule the
    prediction names; then an accept inserted in the kernel by someone else is detected."""
    import ipaddress
    import subprocess

    from nsg_agent.kernel.backend import NftBackend
    from nsg_agent.lab import kernelverify, probe

    lab = make_lab("kver", EXACT.format(drops="true"))
    policy = lab.policy()
    cells = probe.plan_cells([e for e in probe.endpoints(lab.plan) if e.name in ("web", "peer", "inet", "private")],
                             [probe.Service("tcp", 80), probe.Service("udp", 53), probe.Service("icmp"),
                              probe.Service("gre")])
    backend = NftBackend(lab.plan.fabric)
    try:
        listing = backend.list_table()
    finally:
        backend.close()
    with kernelverify.Tracer(listing, "fabric") as tracer:
        for cell in cells:
            pred = probe.predict(policy, cell, 40000, lab.plan.isolation, lab.plan.unrouted)
            if pred.reason.startswith("no route"):
                continue  # routing, not the table, drops these: the lab's own table
            got = tracer.trace(ipaddress.ip_address(cell.source.address), ipaddress.ip_address(cell.destination.address),
                               probe.PROTO_NUMBER[cell.service.protocol],
                               40000 if cell.service.port else None, cell.service.port)
            assert (got.access == "Allow") == pred.allowed, (cell, pred, got.rules)
            if not pred.allowed:
                deciding = pred.reason.split(": ", 1)[1]
                assert any(r.endswith(deciding) for r in got.rules), (cell, pred.reason, got.rules)
    # someone opens tcp/22 to web in the kernel: the model still says Deny, the kernel Allow
    subprocess.run(["ip", "netns", "exec", lab.plan.fabric, "nft", "insert", "rule", "inet", "nsg_agent",
                    "nic_web_in", "tcp", "dport", "22", "accept"], check=True)
    r = subprocess.run([str(REPO / ".venv/bin/nsg-agent"), "verify", str(lab.file), "--nic", "web",
                        "--direction", "Inbound", "--protocol", "tcp", "--local", "10.44.1.4:22",
                        "--remote", "198.51.100.44:40000", "--kernel", "--lab", lab.name, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 4, r.stderr
    body = json.loads(r.stdout)
    assert body["access"] == "Deny" and body["kernel"]["access"] == "Allow" and not body["kernel"]["agrees"]
