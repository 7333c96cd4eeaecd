"""NFLOG and ctnetlink messages parsed from bytes the kernel sent (captured on kernel 6.18 in a
throwaway namespace: an nft ``log group 3456`` on a denied UDP packet, and the conntrack NEW,
DESTROY and dump messages of one marked UDP exchange with accounting on), and the collector
turning them into attributed flow tuples."""

from __future__ import annotations

import socket
import struct

from nsg_agent.compiler import flowmark
from nsg_agent.compiler.results import NicSummary, RuleIndex, RuleRef, Summary
from nsg_agent.flowlogs import netlink as N
from nsg_agent.flowlogs.collector import Collector, FlowContext, NicInfo
from nsg_agent.flowlogs.context import context_from

NFLOG_PACKET = bytes.fromhex(
    "8800000000040000000000000000000002000d8008000100080003002b000a004f207765622d6e73673a2044656661756c7452756c"
    "655f44656e79416c6c4f7574426f756e640000080005000000000108000b000000000008000e000000000025000900450000216cad"
    "40004011d01b7f0000017f000002d20d270e000dfe2168656c6c6f000000")
CT_NEW = bytes.fromhex(
    "9c000000000100060000000000000000020000003400018014000180080001007f000001080002007f0000011c0002800500010011"
    "000000060002009c4000000600030014e900003400028014000180080001007f000001080002007f0000011c000280050001001100"
    "00000600020014e90000060003009c40000008000c005cc09afa080003000000000808000700000000010800080000000300")
CT_DESTROY = bytes.fromhex(
    "cc000000020100000000000000000000020000003400018014000180080001007f000001080002007f0000011c0002800500010011"
    "000000060002009c4000000600030014e900003400028014000180080001007f000001080002007f0000011c000280050001001100"
    "00000600020014e90000060003009c40000008000c005cc09afa080003000000020a1c0009800c0001000000000000000001"
    "0c00020000000000000000301c000a800c00010000000000000000010c000200000000000000003a0800080000000300")
CT_DUMP = bytes.fromhex(
    "dc0000000001020001000000d2353c93020000003400018014000180080001007f000001080002007f0000011c0002800500010011"
    "000000060002009c4000000600030014e900003400028014000180080001007f000001080002007f0000011c000280050001001100"
    "00000600020014e90000060003009c400000080003000000000a080008000000030008000c005cc09afa08000b0000000001080007"
    "00000000001c0009800c00010000000000000000010c00020000000000000000301c000a800c00010000000000000000010c0002"
    "00000000000000003a")


def test_nflog_packet():
    msg = N.parse_log(NFLOG_PACKET)
    assert msg.prefix == "O web-nsg: DefaultRule_DenyAllOutBound"
    assert msg.outdev == 1 and msg.indev is None
    assert msg.packet == N.Packet(4, "127.0.0.1", "127.0.0.2", 17, 53773, 9998, 33)
    assert N.parse_ct(NFLOG_PACKET) is None and N.parse_log(CT_NEW) is None


def test_conntrack_new_destroy_and_dump():
    new, gone, dump = N.parse_ct(CT_NEW), N.parse_ct(CT_DESTROY), N.parse_ct(CT_DUMP, dump=True)
    tup = N.CtTuple(4, 17, "127.0.0.1", "127.0.0.1", 40000, 5353)
    assert new == N.CtEntry("new", 1556126458, tup, 0x300, 0, 0, 0, 0)
    assert gone == N.CtEntry("destroy", 1556126458, tup, 0x300, 1, 48, 1, 58)  # accounting: 20+28, 30+28
    assert dump == N.CtEntry("dump", 1556126458, tup, 0x300, 1, 48, 1, 58)
    assert flowmark.decode_mark(new.mark) == {"Inbound": 3}


def test_split_datagrams_and_errors():
    data = CT_NEW + CT_DESTROY
    assert [m for _, _, m in N.split(data)] == [CT_NEW, CT_DESTROY]
    assert list(N.split(data[:20])) == []  # a truncated message is not parsed
    ack = struct.pack("=IHHII", 36, N.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", 0) + b"\0" * 16
    err = struct.pack("=IHHII", 36, N.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -16) + b"\0" * 16
    assert N.error_code(ack) == 0 and N.error_code(err) == 16 and N.error_code(CT_NEW) is None


def test_ipv6_and_portless_packets():
    v6 = (bytes([0x60, 0, 0, 0]) + struct.pack(">HBB", 8, 6, 64) + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
          + socket.inet_pton(socket.AF_INET6, "fd00::4") + struct.pack(">HH", 1234, 443))
    assert N.parse_ip(v6) == N.Packet(6, "2001:db8::1", "fd00::4", 6, 1234, 443, 48)
    gre = bytes([0x45, 0, 0, 24]) + b"\0" * 5 + bytes([47]) + b"\0\0" + bytes([10, 88, 1, 4, 10, 88, 2, 4]) + b"\0" * 4
    assert N.parse_ip(gre) == N.Packet(4, "10.88.1.4", "10.88.2.4", 47, None, None, 24)
    assert N.parse_ip(b"") is None and N.parse_ip(b"\x45\x00") is None


def test_config_and_dump_requests_are_well_formed():
    msgs = N.nflog_config(3456)
    for i, m in enumerate(msgs):
        length, mtype, flags, seq, _ = struct.unpack_from("=IHHII", m)
        assert length == len(m) and mtype == (4 << 8 | 1) and flags == N.NLM_F_REQUEST | N.NLM_F_ACK
        assert struct.unpack_from(">H", m, 18)[0] == 3456 and seq == 1 + i
    dump = N.ct_dump_request()
    assert struct.unpack_from("=HH", dump, 4) == (1 << 8 | 1, N.NLM_F_REQUEST | N.NLM_F_DUMP)


class FakeWriter:
    def __init__(self):
        self.events = []

    def submit(self, e):
        self.events.append(e)
        return True

    def stats(self):
        return {"written": {}, "dropped": {}, "records": 0, "queued": 0}


INDEX = RuleIndex({
    ("lvl_a_r0", "web-nsg: UserRule_dns"): RuleRef("web-nsg", "UserRule_dns", "Inbound", "lvl_a_r0", ("lo-nic/nic",)),
    ("lvl_a_r1", "web-nsg: DefaultRule_DenyAllOutBound"): RuleRef("web-nsg", "DefaultRule_DenyAllOutBound", "Outbound",
                                                                  "lvl_a_r1", ("lo-nic/nic",)),
})


def _index(n: int) -> RuleIndex:
    """Rules r0..r<n-1> of NSG n, inbound, one chain each."""
    return RuleIndex({(f"c{i}", f"n: r{i}"): RuleRef("n", f"r{i}", "Inbound", f"c{i}", ()) for i in range(n)})


def collector() -> tuple[Collector, FakeWriter]:
    w = FakeWriter()
    ctx = FlowContext(INDEX, {"lo-nic": NicInfo("lo-nic", frozenset({"127.0.0.1"}), "00224871C205", frozenset({1}))})
    return Collector(w, lambda: ctx), w


def test_collector_turns_messages_into_attributed_tuples():
    c, w = collector()
    ids = flowmark.rule_ids(INDEX.refs())
    assert ids[("Inbound", "web-nsg", "UserRule_dns")] == 1  # the captured mark 0x300 carries id 3
    d = c.on_log(N.parse_log(NFLOG_PACKET), now=100.0)
    assert (d.state, d.direction, d.nic, d.nsg, d.rule, d.src, d.dst, d.sport, d.dport, d.protocol) == (
        "D", "O", "lo-nic", "web-nsg", "DefaultRule_DenyAllOutBound", "127.0.0.1", "127.0.0.2", 53773, 9998, 17)
    assert d.time_ms == 100000 and d.mac == "00224871C205"
    # a mark of an id that the index does not have: "Unattributed", never a wrong rule
    [b] = c.on_ct(N.parse_ct(CT_NEW), now=101.0)
    assert b.state == "B" and b.direction == "I" and b.rule == "Unattributed"


def test_collector_begin_continue_end_counts():
    index = _index(3)
    w = FakeWriter()
    ctx = FlowContext(index, {"lo-nic": NicInfo("lo-nic", frozenset({"127.0.0.1"}))})
    c = Collector(w, lambda: ctx)
    new = N.parse_ct(CT_NEW)  # mark id 3 = ("Inbound", "n", "r2")
    [b] = c.on_ct(new, now=1.0)
    assert (b.state, b.nsg, b.rule, b.nic) == ("B", "n", "r2", "lo-nic")
    assert (b.packets_s2d, b.bytes_s2d, b.packets_d2s, b.bytes_d2s) == (0, 0, 0, 0)
    [cont] = c.on_dump([N.parse_ct(CT_DUMP, dump=True)], now=2.0)
    assert cont.state == "C" and (cont.packets_s2d, cont.bytes_s2d, cont.packets_d2s, cont.bytes_d2s) == (1, 48, 1, 58)
    assert c.on_dump([N.parse_ct(CT_DUMP, dump=True)], now=3.0) == []  # nothing new: no tuple
    [end] = c.on_ct(N.parse_ct(CT_DESTROY), now=4.0)
    assert end.state == "E" and (end.packets_s2d, end.bytes_s2d) == (0, 0)  # all reported by C already
    assert c.flows == {}
    # a flow whose DESTROY was lost in an overrun ends at the next dump that misses it
    c.on_ct(new, now=5.0)
    [lost] = c.on_dump([], now=6.0)
    assert lost.state == "E" and c.flows == {}
    # an unmarked connection (no rule of ours allowed it) is not logged
    unmarked = N.CtEntry("new", 7, new.orig, 0, 0, 0, 0, 0)
    assert c.on_ct(unmarked) == [] and c.on_ct(N.CtEntry("destroy", 7, new.orig, 0, 1, 1, 1, 1)) == []


def test_context_from_summary_and_interfaces():
    summary = Summary(nics={"srv": NicSummary("nic_srv_in", "nic_srv_out", interface="eth7"),
                            "web1": NicSummary("nic_web1_in", "nic_web1_out", addresses=("10.88.1.4",))})
    ctx = context_from(INDEX, summary, {"eth7": {"index": 7, "mac": "02:00:00:00:00:07", "addresses": ["10.88.1.9"]}},
                       macs={"WEB1": "02:00:00:00:00:01"})
    assert ctx.by_address["10.88.1.9"].name == "srv" and ctx.by_ifindex[7].name == "srv"
    assert ctx.nics["srv"].mac == "020000000007" and ctx.nics["web1"].mac == "020000000001"
    assert ctx.by_comment["web-nsg: UserRule_dns"] == ("web-nsg", "UserRule_dns")


def test_the_cli_rereads_the_status_file_only_when_it_changed(tmp_path):
    from nsg_agent.cli.flows import _CommitCache
    from nsg_agent.daemon.status import Commit, Status, StatusStore

    store = StatusStore(tmp_path, "ns1")
    store.ensure_dir()
    commit = Commit("f", "s", {}, 1.0, "classify", "r", Summary(), INDEX, {}, {})
    store.write(Status(netns="ns1", commit=commit))
    cache = _CommitCache(store)
    first = cache.get()
    assert first.rule_index == INDEX and cache.get() is first  # unchanged: not parsed again
    store.write(Status(netns="ns1", commit=Commit("f", "s2", {}, 2.0, "classify", "r", Summary(), RuleIndex(), {}, {})))
    assert cache.get().sha256 == "s2"


def test_a_dump_that_overtakes_a_flows_end_does_not_count_it_twice():
    """The periodic dump runs on one thread, DESTROY events arrive on another: a dump taken
    before a flow ended but processed after its E tuple must not start it again (that wrote
    its whole count a second time: seen in CI under load, 20 packets for a 10-packet flow)."""
    index = _index(3)
    w = FakeWriter()
    c = Collector(w, lambda: FlowContext(index, {"lo-nic": NicInfo("lo-nic", frozenset({"127.0.0.1"}))}))
    new, dump = N.parse_ct(CT_NEW), N.parse_ct(CT_DUMP, dump=True)
    c.on_ct(new, now=1.0)
    [end] = c.on_ct(N.parse_ct(CT_DESTROY), now=2.0)
    assert end.state == "E"
    assert c.on_dump([dump], now=2.1) == [] and c.flows == {}  # the stale dump: nothing counted again
    # the kernel gives the id again to a new connection: that one is followed as usual
    [b] = c.on_ct(new, now=3.0)
    assert b.state == "B" and [t.state for t in c.on_dump([dump], now=4.0)] == ["C"]
