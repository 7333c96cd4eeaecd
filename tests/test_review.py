"""A plan a reviewer can approve (pure): per-rule field changes, shadowed rules, and the live
connections a change revokes (from a fake conntrack table)."""

from __future__ import annotations

import copy
import ipaddress

from foundation_helpers import base_state, load_doc, rule
from nsg_agent.daemon.review import Review, revocations, rule_changes, shadowed_rules, summarize_list
from nsg_agent.host.conntrack import CtFlow
from nsg_agent.semantics.resolver import resolve

IP = ipaddress.ip_address


def _state(rules, **kw):
    return load_doc(base_state(subnet_rules=rules, **kw)).state


def test_field_changes_old_to_new():
    old = _state([rule("web", 100, dport="80", src="203.0.113.0/24"), rule("gone", 200, dport="22")])
    new = _state([rule("web", 100, dport="443", src="203.0.113.0/24", access="Deny"), rule("fresh", 300, dport="25")])
    changes = {(c.rule, c.kind): c for c in rule_changes(old, new)}
    assert set(changes) == {("web", "changed"), ("gone", "removed"), ("fresh", "added")}
    fields = {f.field: (f.old, f.new) for f in changes[("web", "changed")].fields}
    assert fields == {"destinationPorts": ("80", "443"), "access": ("Allow", "Deny")}


def test_nothing_enforced_yet_everything_is_added():
    new = _state([rule("a", 100), rule("b", 110)])
    assert [(c.rule, c.kind) for c in rule_changes(None, new)] == [("a", "added"), ("b", "added")]


def test_long_prefix_lists_are_summarised():
    old = [f"10.1.{i}.0/24" for i in range(200)]
    new = old[:-1] + ["10.9.0.0/24"]
    o, n = summarize_list(old, new)
    assert o == "200 entries" and n == "200 entries (+10.9.0.0/24, -10.1.199.0/24)"
    a = _state([rule("big", 100, src=old)])
    b = _state([rule("big", 100, src=new)])
    (change,) = rule_changes(a, b)
    assert change.fields[0].field == "source" and "+10.9.0.0/24" in change.fields[0].new


def test_reordering_a_list_is_not_reported_as_entries_changed():
    a = _state([rule("x", 100, src=["10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24", "10.4.0.0/24"])])
    b = _state([rule("x", 100, src=["10.4.0.0/24", "10.3.0.0/24", "10.2.0.0/24", "10.1.0.0/24"])])
    (change,) = rule_changes(a, b)
    assert "other order" in change.fields[0].new


def test_shadowed_rules():
    """A rule fully covered by earlier rules never matches; a partly covered one does; the
    last of several covering rules is named."""
    state = _state([
        rule("allow-web", 100, protocol="Tcp", dport="80-443"),
        rule("deny-http", 110, protocol="Tcp", dport="80", access="Deny"),  # inside 80-443: dead
        rule("deny-8080", 120, protocol="Tcp", dport="8080", access="Deny"),  # live
        rule("all-tcp", 130, protocol="Tcp"),
        rule("any-22", 140, protocol="Tcp", dport="22"),  # all-tcp decides all of TCP: dead
        rule("udp-53", 150, protocol="Udp", dport="53"),  # live
        rule("outbound-dup-a", 100, direction="Outbound", dst="10.0.0.0/16"),
        rule("outbound-dup-b", 110, direction="Outbound", dst="10.0.1.0/24"),  # inside a: dead
    ])
    found = {(s.rule, s.direction): s for s in shadowed_rules(resolve(state))}
    assert set(found) == {("deny-http", "Inbound"), ("any-22", "Inbound"), ("outbound-dup-b", "Outbound")}
    assert "all-tcp" in found[("any-22", "Inbound")].reason


def test_rule_matching_no_address_is_reported():
    doc = base_state(subnet_rules=[rule("to-empty", 100, src=None, sourceApplicationSecurityGroups=["Empty"])])
    doc["applicationSecurityGroups"] = [{"name": "Empty"}]
    (s,) = shadowed_rules(resolve(load_doc(doc).state))
    assert s.rule == "to-empty" and "matches no address" in s.reason


def test_rule_live_for_one_vnet_is_not_shadowed():
    """An NSG shared by NICs of two VNets: a rule covered by a VirtualNetwork rule in one
    VNet's resolution but not in the other's is live."""
    doc = base_state(subnet_rules=[rule("vnet", 100, src="VirtualNetwork"), rule("ten-nine", 110, src="10.9.0.0/16")])
    doc["virtualNetworks"].append({"name": "v2", "addressSpace": ["10.9.0.0/16"], "subnets": [
        {"name": "s9", "addressPrefix": "10.9.1.0/24", "networkSecurityGroup": "subnet-nsg"}]})
    doc["networkInterfaces"].append({"name": "n9", "subnet": "v2/s9", "ipAddresses": ["10.9.1.4"]})
    assert shadowed_rules(resolve(load_doc(doc).state)) == []


def _ct(src, sport, dst, dport, proto=6):
    return CtFlow(4, proto, IP(src), IP(dst), sport, dport)


def test_revocations_from_a_fake_conntrack_table():
    """Live flows allowed before and denied after are listed; with flushConnection they are
    cut at apply, else they live on."""
    old_doc = base_state(subnet_rules=[rule("ssh", 100, protocol="Tcp", dport="22"),
                                       rule("web", 110, protocol="Tcp", dport="80")])
    new_doc = base_state(subnet_rules=[rule("web", 110, protocol="Tcp", dport="80")])
    old, new = resolve(load_doc(old_doc).state), resolve(load_doc(new_doc).state)
    entries = [_ct("203.0.113.5", 50000, "10.0.1.4", 22),  # ssh to n1: revoked
               _ct("203.0.113.5", 50001, "10.0.1.4", 80),  # web: still allowed
               _ct("203.0.113.6", 50002, "10.0.1.4", 8080)]  # denied before and after: not revoked
    (r,) = revocations(old, new, entries)
    assert (r.nic, r.direction, r.destination, r.dport, r.cut) == ("n1", "Inbound", "10.0.1.4", 22, False)
    assert "DenyAllInBound" in r.rule and "refused if reopened" in r.text()
    flush_doc = copy.deepcopy(new_doc)
    flush_doc["networkSecurityGroups"][0]["flushConnection"] = True
    (r,) = revocations(old, resolve(load_doc(flush_doc).state), entries)
    assert r.cut and "cut at apply" in r.text()
    review = Review(rule_changes(load_doc(old_doc).state, load_doc(new_doc).state), [], [r])
    body = review.as_dict()
    assert body["ruleChanges"][0]["rule"] == "ssh" and body["revokedConnections"][0]["dport"] == 22
    assert any(line.startswith("  x n1 Inbound") for line in review.lines())


def test_nothing_enforced_revokes_whatever_the_new_policy_denies():
    new = resolve(load_doc(base_state(subnet_rules=[])).state)
    (r,) = revocations(None, new, [_ct("203.0.113.5", 50000, "10.0.1.4", 22)])
    assert r.nic == "n1"
