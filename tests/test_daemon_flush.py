"""flushConnection: which conntrack entries the new policy denies (pure part, no netlink)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from daemon_helpers import DENY_SSH, policy_text
from nsg_agent.desired import loader
from nsg_agent.desired.vocabulary import Direction
from nsg_agent.host.conntrack import CtFlow, denied_entries
from nsg_agent.semantics import resolver as semantics

SRV, INTERNET, VNET = "10.50.1.4", "203.0.113.10", "10.50.1.5"


def policy(tmp_path: Path, flush: bool):
    f = tmp_path / "s.yaml"
    f.write_text(policy_text(extra_rule=DENY_SSH, flush=flush))
    loaded = loader.load(f)
    return semantics.resolve(loaded.state, loaded.tags)


def ct(proto, src, dst, sport=None, dport=None) -> CtFlow:
    return CtFlow(2, proto, ipaddress.ip_address(src), ipaddress.ip_address(dst), sport, dport)


ROWS = [
    ("inbound-allowed-by-rule", ct(6, INTERNET, SRV, 40000, 8080), None),
    ("inbound-denied-by-rule", ct(6, VNET, SRV, 40000, 22), ("srv", Direction.INBOUND, "srv-nsg: UserRule_deny-ssh")),
    ("inbound-denyall", ct(6, INTERNET, SRV, 40000, 9000), ("srv", Direction.INBOUND, "srv-nsg: DefaultRule_DenyAllInBound")),
    ("inbound-icmp-vnet-allowed", ct(1, VNET, SRV), None),
    ("outbound-internet-allowed", ct(6, SRV, INTERNET, 40000, 443), None),
    ("outbound-smtp-platform-block", ct(6, SRV, INTERNET, 40000, 25), ("srv", Direction.OUTBOUND, "platform: PlatformRule_BlockOutboundSmtp")),
    ("not-this-nics-traffic", ct(6, INTERNET, "10.99.0.1", 1, 22), None),
]


@pytest.mark.parametrize("entry,expected", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_denied_entries_follow_the_semantics(tmp_path, entry, expected):
    """An entry is cut exactly when the NIC's new policy denies the flow it represents."""
    cuts = denied_entries(policy(tmp_path, flush=True), [entry])
    if expected is None:
        assert cuts == []
    else:
        assert [(c.nic, c.direction, c.deciding) for c in cuts] == [expected]


def test_without_flush_connection_nothing_is_cut(tmp_path):
    """Azure's default: with flushConnection false no entry is ever selected."""
    entries = [r[1] for r in ROWS]
    assert denied_entries(policy(tmp_path, flush=False), entries) == []
