"""The two kernel feeds of flow logs, over netfilter netlink (NETLINK_NETFILTER).

* **NFLOG** (nfnetlink_log): the ruleset's ``log group 3456`` statements on deny paths
  (compiler/flowmark.py). One socket bound to the group receives a copy of the first bytes
  of each logged packet with its prefix and interfaces.
* **ctnetlink events** (NFNLGRP_CONNTRACK_NEW and _DESTROY) and a table dump for the periodic
  counts: the allowed connections, whose ct mark names the rule that allowed them.

Parsing uses pyroute2's netlink message classes (``nfct_msg`` as it ships; an ``nflog_msg``
declared here in the same way, since pyroute2 0.9 has no NFLOG class), so the bytes the
kernel sends are decoded by the same well-tested attribute machinery the project already
uses for conntrack. The sockets are plain ``socket.socket(AF_NETLINK, ...)``: they are made
by a thread inside the target namespace (``host.netns.NetnsRunner``) and belong to it for
their lifetime, whichever thread reads them. Everything from bytes to values is a pure
function, unit tested from captured messages (tests/test_flowlogs_netlink.py).

Nothing here can slow the dataplane: both feeds are asynchronous in the kernel. A socket
buffer that overflows makes ``recv`` fail with ENOBUFS and the kernel drops the *messages*,
never packets (this module never sets NETLINK_BROADCAST_ERROR/NO_ENOBUFS, the conntrackd
"reliable events" options that would make the kernel drop packets instead).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterator

from pyroute2.netlink import nla
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK, NFNL_SUBSYS_ULOG, nfgen_msg
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_CREATE = 0x400

NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_NLBUFSIZ, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 3, 4, 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
COPY_RANGE = 128  # IPv6 header (40) + transport ports, with room for options

IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
GROUP_CT_NEW, GROUP_CT_DESTROY = 1, 3  # NFNLGRP_CONNTRACK_NEW / _DESTROY
RCVBUF = 8 << 20


class nflog_msg(nfgen_msg):
    """struct nfgenmsg + NFULA_* attributes (include/uapi/linux/netfilter/nfnetlink_log.h)."""

    prefix = "NFULA_"
    nla_map = (
        ("NFULA_UNSPEC", "none"),
        ("NFULA_PACKET_HDR", "packet_hdr"),
        ("NFULA_MARK", "be32"),
        ("NFULA_TIMESTAMP", "timestamp"),
        ("NFULA_IFINDEX_INDEV", "be32"),
        ("NFULA_IFINDEX_OUTDEV", "be32"),
        ("NFULA_IFINDEX_PHYSINDEV", "be32"),
        ("NFULA_IFINDEX_PHYSOUTDEV", "be32"),
        ("NFULA_HWADDR", "hex"),
        ("NFULA_PAYLOAD", "cdata"),
        ("NFULA_PREFIX", "asciiz"),
        ("NFULA_UID", "be32"),
        ("NFULA_SEQ", "be32"),
        ("NFULA_SEQ_GLOBAL", "be32"),
        ("NFULA_GID", "be32"),
        ("NFULA_HWTYPE", "be16"),
        ("NFULA_HWHEADER", "hex"),
        ("NFULA_HWLEN", "be16"),
        ("NFULA_CT", "hex"),
        ("NFULA_CT_INFO", "be32"),
        ("NFULA_VLAN", "hex"),
        ("NFULA_L2HDR", "hex"),
    )

    class packet_hdr(nla):
        fields = (("hw_protocol", ">H"), ("hook", "B"), ("pad", "B"))

    class timestamp(nla):
        fields = (("sec", ">Q"), ("usec", ">Q"))


@dataclass(frozen=True)
class Packet:
    """The addresses and ports of a logged packet's first bytes."""

    family: int  # 4 or 6
    src: str
    dst: str
    protocol: int
    sport: int | None
    dport: int | None
    length: int  # the IP packet's length as its header says


@dataclass(frozen=True)
class LogMessage:
    prefix: str
    indev: int | None
    outdev: int | None
    packet: Packet | None
    time: float | None  # the kernel's timestamp, when it gave one


@dataclass(frozen=True)
class CtTuple:
    family: int
    protocol: int
    src: str
    dst: str
    sport: int | None
    dport: int | None


@dataclass(frozen=True)
class CtEntry:
    """One conntrack event or dump entry."""

    kind: str  # "new" | "destroy" | "dump"
    id: int | None
    orig: CtTuple | None
    mark: int
    packets_orig: int
    bytes_orig: int
    packets_reply: int
    bytes_reply: int


# --- pure: bytes to values --------------------------------------------------------------


def split(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, flags, whole message) for each netlink message in a datagram."""
    offset = 0
    while offset + 16 <= len(data):
        length, mtype, flags = struct.unpack_from("=IHH", data, offset)
        if length < 16 or offset + length > len(data):
            return
        yield mtype, flags, data[offset:offset + length]
        offset += (length + 3) & ~3


PORT_PROTOCOLS = (6, 17, 132, 136)  # TCP, UDP, SCTP, UDP-Lite: ports in the first 4 bytes


def parse_ip(payload: bytes) -> Packet | None:
    """Addresses, protocol and ports of an IPv4/IPv6 packet's first bytes (IPv6 extension
    headers are not followed: the protocol is then the first next-header)."""
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4 and len(payload) >= 20:
        ihl = (payload[0] & 0x0F) * 4
        total, proto = struct.unpack_from(">H", payload, 2)[0], payload[9]
        src, dst = str(ipaddress.IPv4Address(payload[12:16])), str(ipaddress.IPv4Address(payload[16:20]))
        l4 = payload[ihl:]
        family = 4
    elif version == 6 and len(payload) >= 40:
        total = struct.unpack_from(">H", payload, 4)[0] + 40
        proto = payload[6]
        src, dst = str(ipaddress.IPv6Address(payload[8:24])), str(ipaddress.IPv6Address(payload[24:40]))
        l4 = payload[40:]
        family = 6
    else:
        return None
    sport = dport = None
    if proto in PORT_PROTOCOLS and len(l4) >= 4:
        sport, dport = struct.unpack_from(">HH", l4, 0)
    return Packet(family, src, dst, proto, sport, dport, total)


def parse_log(message: bytes) -> LogMessage | None:
    """An NFULNL_MSG_PACKET message (the whole netlink message), or None for another."""
    mtype = struct.unpack_from("=H", message, 4)[0]
    if mtype != (NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET):
        return None
    msg = nflog_msg(message)
    msg.decode()
    payload = msg.get_attr("NFULA_PAYLOAD")
    if isinstance(payload, str):
        payload = payload.encode("latin-1")
    ts = msg.get_attr("NFULA_TIMESTAMP")
    when = ts["sec"] + ts["usec"] / 1e6 if ts else None
    return LogMessage(prefix=msg.get_attr("NFULA_PREFIX") or "",
                      indev=msg.get_attr("NFULA_IFINDEX_INDEV"), outdev=msg.get_attr("NFULA_IFINDEX_OUTDEV"),
                      packet=parse_ip(payload or b""), time=when)


def _tuple(t) -> CtTuple | None:
    if t is None:
        return None
    ip, proto = t.get_attr("CTA_TUPLE_IP"), t.get_attr("CTA_TUPLE_PROTO")
    if ip is None or proto is None:
        return None
    src = ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC")
    dst = ip.get_attr("CTA_IP_V4_DST") or ip.get_attr("CTA_IP_V6_DST")
    if src is None or dst is None:
        return None
    num = proto.get_attr("CTA_PROTO_NUM")
    ports = num in PORT_PROTOCOLS
    return CtTuple(4 if ip.get_attr("CTA_IP_V4_SRC") else 6, int(num), str(src), str(dst),
                   proto.get_attr("CTA_PROTO_SRC_PORT") if ports else None,
                   proto.get_attr("CTA_PROTO_DST_PORT") if ports else None)


def _counters(c) -> tuple[int, int]:
    if c is None:
        return 0, 0
    packets = c.get_attr("CTA_COUNTERS_PACKETS")
    nbytes = c.get_attr("CTA_COUNTERS_BYTES")
    if packets is None:
        packets, nbytes = c.get_attr("CTA_COUNTERS32_PACKETS"), c.get_attr("CTA_COUNTERS32_BYTES")
    return int(packets or 0), int(nbytes or 0)


def parse_ct(message: bytes, dump: bool = False) -> CtEntry | None:
    """A ctnetlink message (the whole netlink message): new, destroy or a dump entry."""
    mtype, flags = struct.unpack_from("=HH", message, 4)
    if mtype >> 8 != NFNL_SUBSYS_CTNETLINK:
        return None
    kind = {IPCTNL_MSG_CT_NEW: "new", IPCTNL_MSG_CT_DELETE: "destroy"}.get(mtype & 0xFF)
    if kind is None:
        return None
    if dump:
        kind = "dump"
    msg = nfct_msg(message)
    msg.decode()
    po, bo = _counters(msg.get_attr("CTA_COUNTERS_ORIG"))
    pr, br = _counters(msg.get_attr("CTA_COUNTERS_REPLY"))
    return CtEntry(kind, msg.get_attr("CTA_ID"), _tuple(msg.get_attr("CTA_TUPLE_ORIG")),
                   int(msg.get_attr("CTA_MARK") or 0), po, bo, pr, br)


def error_code(message: bytes) -> int | None:
    """The errno of an NLMSG_ERROR (0 for an ACK), None for another message."""
    mtype = struct.unpack_from("=H", message, 4)[0]
    if mtype != NLMSG_ERROR or len(message) < 20:
        return None
    return -struct.unpack_from("=i", message, 16)[0]


# --- building requests ------------------------------------------------------------------


def _attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * ((-length) % 4)


def _message(mtype: int, flags: int, family: int, res_id: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 0) + body


def nflog_config(group: int, seq: int = 1) -> list[bytes]:
    """Bind ``group`` and ask for the first COPY_RANGE bytes of each packet, delivered at
    once (queue threshold 1) or within 0.1 s."""
    t = NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_CONFIG
    f = NLM_F_REQUEST | NLM_F_ACK
    return [
        _message(t, f, socket.AF_UNSPEC, group, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])), seq),
        _message(t, f, socket.AF_UNSPEC, group,
                 _attr(NFULA_CFG_MODE, struct.pack(">IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)), seq + 1),
        _message(t, f, socket.AF_UNSPEC, group, _attr(NFULA_CFG_QTHRESH, struct.pack(">I", 1)), seq + 2),
        _message(t, f, socket.AF_UNSPEC, group, _attr(NFULA_CFG_TIMEOUT, struct.pack(">I", 10)), seq + 3),
    ]


def ct_dump_request(seq: int = 1) -> bytes:
    """IPCTNL_MSG_CT_GET with NLM_F_DUMP for every family (AF_UNSPEC)."""
    return _message(NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP,
                    socket.AF_UNSPEC, 0, b"", seq)


# --- sockets (call these inside the namespace's runner thread) ----------------------------


def _socket(groups: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (CAP_NET_ADMIN)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind((0, groups))
    return sock


def _expect_acks(sock: socket.socket, count: int) -> None:
    seen = 0
    sock.settimeout(5.0)
    try:
        while seen < count:
            for _, _, message in split(sock.recv(65536)):
                code = error_code(message)
                if code:
                    raise OSError(code, f"nfnetlink_log refused the configuration: {os.strerror(code)}")
                if code == 0:
                    seen += 1
    finally:
        sock.settimeout(None)


def open_nflog(group: int) -> socket.socket:
    """A socket receiving NFLOG group ``group`` of the calling thread's namespace (EBUSY if
    another process holds the group there)."""
    sock = _socket()
    try:
        requests = nflog_config(group)
        for request in requests:
            sock.send(request)
        _expect_acks(sock, len(requests))
    except BaseException:
        sock.close()
        raise
    return sock


def open_ct_events() -> socket.socket:
    """A socket receiving conntrack NEW and DESTROY events of the calling thread's namespace."""
    return _socket((1 << (GROUP_CT_NEW - 1)) | (1 << (GROUP_CT_DESTROY - 1)))


def dump_conntrack() -> list[CtEntry]:
    """Every conntrack entry of the calling thread's namespace, with its counters and mark."""
    sock = _socket()
    out: list[CtEntry] = []
    try:
        sock.settimeout(10.0)
        sock.send(ct_dump_request())
        while True:
            data = sock.recv(1 << 20)
            for mtype, _, message in split(data):
                if mtype == NLMSG_DONE:
                    return out
                code = error_code(message)
                if code:
                    raise OSError(code, "conntrack dump failed")
                entry = parse_ct(message, dump=True)
                if entry is not None:
                    out.append(entry)
    finally:
        sock.close()


def set_sysctl(name: str, value: str) -> str | None:
    """Write /proc/sys/<name> as the calling thread sees it (net.* is per namespace: call it
    in the namespace's runner). Returns the previous value, or None if unreadable."""
    path = "/proc/sys/" + name.replace(".", "/")
    try:
        with open(path) as f:
            old = f.read().strip()
        if old != value:
            with open(path, "w") as f:
                f.write(value)
        return old
    except OSError:
        return None
