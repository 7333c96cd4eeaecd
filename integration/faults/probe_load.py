"""A bounded traffic prober, run inside the client namespace (``ip netns exec NS python
probe_load.py ...``) while the agent reloads: new TCP connections to an allowed and to a
denied port, plus one long-lived connection, each outcome time-stamped.

Bounded: at most ``--max-seconds`` of probing and ``--max-attempts`` connections per port,
one connection at a time per port (no flood); it stops early when its stdin is closed. On
exit it prints one JSON object: counts, and the wall-clock times of every failure (an
allowed connect refused or timed out, a denied connect admitted, a long-lived echo lost), so
the test can line failures up with the agent's ``config.applied`` events.

A lost SYN is retransmitted after 1 s, so the connect timeout (0.8 s) turns one dropped
first SYN into one refused attempt.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]
from host_helpers import tcp_echo as attempt  # noqa: E402 - the same probe as the tests'

CONNECT_TIMEOUT = 0.8
DENIED_TIMEOUT = 0.25  # a denied SYN is dropped: waiting longer proves nothing more


class Counter:
    def __init__(self) -> None:
        self.attempts = 0
        self.failures: list[float] = []  # wall times of the unexpected outcomes


def probe_port(stop: threading.Event, c: Counter, src: str, dst: str, port: int, expect: bool,
               deadline: float, max_attempts: int, pause: float) -> None:
    timeout = CONNECT_TIMEOUT if expect else DENIED_TIMEOUT
    while not stop.is_set() and time.monotonic() < deadline and c.attempts < max_attempts:
        t = time.time()
        ok = attempt(src, dst, port, timeout)
        c.attempts += 1
        if ok != expect:
            c.failures.append(t)
        time.sleep(pause)


def long_lived(stop: threading.Event, c: Counter, src: str, dst: str, port: int, deadline: float,
               every: float) -> None:
    try:
        s = socket.create_connection((dst, port), timeout=2, source_address=(src, 0))
    except OSError:
        c.failures.append(time.time())
        return
    s.settimeout(1.5)
    with s:
        while not stop.is_set() and time.monotonic() < deadline:
            t = time.time()
            try:
                s.sendall(b"ping")
                ok = s.recv(16) == b"ping"
            except OSError:
                ok = False
            c.attempts += 1
            if not ok:
                c.failures.append(t)
                return  # a lost connection stays lost
            time.sleep(every)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--allowed", type=int, required=True)
    p.add_argument("--denied", type=int, required=True)
    p.add_argument("--max-seconds", type=float, default=120)
    p.add_argument("--max-attempts", type=int, default=200_000)
    p.add_argument("--pause", type=float, default=0.002)
    args = p.parse_args(argv)

    stop = threading.Event()
    deadline = time.monotonic() + args.max_seconds
    allowed, denied, stream = Counter(), Counter(), Counter()
    threads = [
        threading.Thread(target=probe_port, args=(stop, allowed, args.src, args.dst, args.allowed, True,
                                                  deadline, args.max_attempts, args.pause)),
        threading.Thread(target=probe_port, args=(stop, denied, args.src, args.dst, args.denied, False,
                                                  deadline, args.max_attempts, args.pause)),
        threading.Thread(target=long_lived, args=(stop, stream, args.src, args.dst, args.allowed,
                                                  deadline, 0.05)),
    ]
    for t in threads:
        t.start()
    print("started", flush=True)
    while time.monotonic() < deadline:  # until the test closes stdin, or the bound
        r, _, _ = select.select([sys.stdin], [], [], 0.2)
        if r and not sys.stdin.read(1):
            break
    stop.set()
    for t in threads:
        t.join(5)
    print(json.dumps({
        "allowed_attempts": allowed.attempts, "allowed_refused": allowed.failures,
        "denied_attempts": denied.attempts, "denied_admitted": denied.failures,
        "stream_echoes": stream.attempts, "stream_lost": stream.failures,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
