"""Coverage and lock-out checks before the kernel changes (pure)."""

from __future__ import annotations

import ipaddress

from foundation_helpers import base_state, load_doc, rule
from nsg_agent.daemon import coverage
from nsg_agent.host.conntrack import CtFlow
from nsg_agent.semantics.resolver import resolve

IP = ipaddress.ip_address
SSH = coverage.Session(IP("203.0.113.7"), 51000, IP("10.0.1.4"), 22, "SSH_CONNECTION")


def _policy(rules, address="10.0.1.4", asgs=None):
    doc = base_state(subnet_rules=rules)
    doc["networkInterfaces"][0]["ipAddresses"] = [address]
    doc["networkInterfaces"][0]["interface"] = "eth0"
    if asgs:
        doc["applicationSecurityGroups"] = [{"name": a} for a in asgs]
        doc["networkInterfaces"][0]["applicationSecurityGroups"] = asgs
    return resolve(load_doc(doc).state)


SSH_TO_ASG = [rule("ssh", 100, protocol="Tcp", dport="22", dst=None, destinationApplicationSecurityGroups=["Mgmt"])]
LINKS = {"lo": [IP("127.0.0.1")], "eth0": [IP("10.0.1.4")], "eth1": [IP("10.0.1.5")]}


def test_correct_file_has_no_findings():
    new = _policy(SSH_TO_ASG, asgs=["Mgmt"])
    cov = coverage.check(new, {"n1": "eth0"}, {"lo": LINKS["lo"], "eth0": LINKS["eth0"]}, [SSH])
    assert cov.findings == []


def test_typo_in_the_nic_address_is_a_mismatch_and_a_lockout():
    """The reported case: NIC written 10.0.1.40 instead of 10.0.1.4. The ASG rule then names
    10.0.1.40 and the SSH session's class is denied by DenyAllInBound."""
    old = _policy(SSH_TO_ASG, asgs=["Mgmt"])
    new = _policy(SSH_TO_ASG, address="10.0.1.40", asgs=["Mgmt"])
    cov = coverage.check(new, {"n1": "eth0"}, {"eth0": LINKS["eth0"]}, [SSH], old=old)
    kinds = [f.kind for f in cov.findings]
    assert kinds == ["address-mismatch", "lockout"]
    assert "10.0.1.40 is not on eth0 (10.0.1.4); no interface carries it" in cov.findings[0].message
    assert "DenyAllInBound" in cov.lockouts[0].message and "current policy allows it" in cov.lockouts[0].message


def test_session_already_denied_is_not_a_new_lockout():
    old = _policy([])
    new = _policy([])
    assert coverage.check(new, {"n1": "eth0"}, {"eth0": LINKS["eth0"]}, [SSH], old=old).lockouts == []


def test_first_apply_that_denies_the_session_is_a_lockout():
    assert coverage.check(_policy([]), {"n1": "eth0"}, {"eth0": LINKS["eth0"]}, [SSH]).lockouts


def test_missing_interface_and_unmapped_address():
    new = _policy(SSH_TO_ASG, asgs=["Mgmt"])
    cov = coverage.check(new, {"n1": "eth9"}, LINKS, [])
    kinds = {(f.kind, f.interface) for f in cov.findings}
    assert ("missing-interface", "eth9") in kinds
    assert ("unmapped-address", "eth0") in kinds  # eth0 carries n1's address, n1 is on eth9
    assert ("unmapped-address", "eth1") in kinds  # n2 (10.0.1.5) has no interface at all


def test_session_on_an_unfiltered_interface_is_never_a_lockout():
    new = _policy([])
    s = coverage.Session(IP("203.0.113.7"), 51000, IP("10.0.1.5"), 22, "SSH_CONNECTION")
    assert coverage.check(new, {"n1": "eth0"}, LINKS, [s]).lockouts == []


def test_sessions_from_environment_and_conntrack():
    s = coverage.ssh_session({"SSH_CONNECTION": "203.0.113.7 51000 10.0.1.4 22"})
    assert s == SSH
    assert coverage.ssh_session({"SSH_CONNECTION": "garbage"}) is None
    assert coverage.ssh_session({}) is None
    entries = [CtFlow(4, 6, IP("198.51.100.2"), IP("10.0.1.4"), 40000, 22),
               CtFlow(4, 6, IP("198.51.100.2"), IP("10.0.1.4"), 40001, 80),
               CtFlow(4, 17, IP("198.51.100.2"), IP("10.0.1.4"), 40002, 22)]
    assert [x.client_port for x in coverage.conntrack_sessions(entries, {IP("10.0.1.4")})] == [40000]


def test_a_namespace_tracking_no_flow_is_answered_without_a_conntrack_dump(monkeypatch):
    """nf_conntrack_count is per namespace: at 0 there is nothing to list, and a dump (which
    walks the kernel's whole conntrack table, ~10 ms of CPU per family) is not made."""
    import sys

    from nsg_agent.host import conntrack

    monkeypatch.setattr(conntrack, "_count", lambda: 0)
    monkeypatch.setitem(sys.modules, "pyroute2", None)  # any dump attempt would fail to import
    assert conntrack._list_entries(6, 22) == [] and conntrack._list_entries() == []
