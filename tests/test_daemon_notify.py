"""The sd_notify client: datagrams to $NOTIFY_SOCKET (path or abstract), watchdog interval."""

from __future__ import annotations

import os
import socket

import pytest

from nsg_agent.host.notify import Notifier


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    """A datagram socket standing in for systemd's notify socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        addr = str(tmp_path / "notify.sock")
        s.bind(addr)
    else:
        name = f"nsg-agent-test-{os.getpid()}-{id(s)}"
        s.bind("\0" + name)
        addr = "@" + name
    s.settimeout(2)
    yield s, addr
    s.close()


def test_messages_arrive(listener):
    """READY with STATUS arrives as one datagram; STOPPING too."""
    sock, addr = listener
    n = Notifier({"NOTIFY_SOCKET": addr})
    assert n.ready("enforcing x")
    assert sock.recv(4096) == b"READY=1\nSTATUS=enforcing x"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_without_socket_is_a_noop():
    """Without $NOTIFY_SOCKET nothing is sent and nothing fails."""
    n = Notifier({})
    assert not n.enabled and n.ready("x") is False and n.watchdog_interval is None


@pytest.mark.parametrize("env,interval", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({}, None),
], ids=["half-of-watchdogsec", "other-pid", "zero", "unset"])
def test_watchdog_interval(env, interval):
    """Keep-alives go every WatchdogSec/2, only when meant for this process."""
    assert Notifier(env).watchdog_interval == interval
