"""verify --kernel's pure part: reading nft monitor trace output into the kernel's answer."""

from __future__ import annotations

from foundation_helpers import base_state, check, rule
from nsg_agent.lab.kernelverify import answer, model_rules, parse_trace

TRACE = """\
trace id 11aa inet nsgv_trace pre packet: iif "eth0" ip saddr 203.0.113.10 ip daddr 10.0.1.4 tcp dport 80
trace id 11aa inet nsgv_trace pre rule ip saddr 203.0.113.10 meta nftrace set 1 (verdict continue)
trace id 11aa inet nsg_agent input rule ct state established,related counter packets 0 bytes 0 accept comment "conntrack: established,related" (verdict continue)
trace id 11aa inet nsg_agent input rule iifname vmap { "eth0" : jump nic_n1_in } (verdict jump nic_n1_in)
trace id 11aa inet nsg_agent nic_n1_in rule jump lvl_0a1b2c3d (verdict jump lvl_0a1b2c3d)
trace id 11aa inet nsg_agent lvl_0a1b2c3d_r0 rule counter packets 0 bytes 0 return comment "subnet-nsg: UserRule_web" (verdict return)
trace id 11aa inet nsg_agent input policy accept
trace id 22bb inet nsg_agent input rule counter packets 0 bytes 0 drop comment "other" (verdict drop)
"""

DENY = """\
trace id 33cc inet nsg_agent nic_n1_in rule jump lvl_x (verdict jump lvl_x)
trace id 33cc inet nsg_agent lvl_x_r9 rule counter packets 0 bytes 0 drop comment "subnet-nsg: DefaultRule_DenyAllInBound" (verdict drop)
"""


def test_parse_the_first_packets_events_in_the_agents_table():
    events = parse_trace(TRACE.splitlines())
    assert [e.chain for e in events] == ["input", "input", "nic_n1_in", "lvl_0a1b2c3d_r0", "input"]
    ans = answer(events)
    assert ans.access == "Allow" and ans.rules == ["subnet-nsg: UserRule_web"]


def test_a_drop_decides():
    ans = answer(parse_trace(DENY.splitlines()))
    assert ans.access == "Deny" and ans.rules == ["subnet-nsg: DefaultRule_DenyAllInBound"]


def test_model_rules_are_the_compilers_comments():
    v = check(base_state(subnet_rules=[rule("web", 100, dport="80")]), "n1", "Inbound", "tcp",
              "10.0.1.4", "203.0.113.10", 80, 40000)
    assert model_rules(v) == ["subnet-nsg: UserRule_web"]
    v = check(base_state(subnet_rules=[]), "n1", "Outbound", "47", "10.0.1.4", "10.0.1.5")
    assert model_rules(v) == ["PlatformRule_BlockGre"]
