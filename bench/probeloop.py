"""A persistent TCP prober for the file save -> enforced measurement (runs in the client
namespace; driven by bench.control.Prober).

Each stdin line "Allow T" or "Deny T" makes it probe HOST:PORT with fresh connections (10 ms
connect timeout, so the time resolution is about 10 ms) until the verdict is seen, then print
the CLOCK_MONOTONIC time (shared by all namespaces) at which it was first seen, or "timeout"
after T seconds. Allow = a connection completes (or is refused: the packet got through).
Deny = three attempts in a row time out (the SYN is dropped); the time printed is the start
of the first of them.

Polling is bounded: after an attempt that got through (while waiting for a Deny) it pauses
PAUSE (5 ms) before the next one. Without the pause it connected in a tight loop that kept
both cores of a 2-core machine busy and slowed the daemon it measures 2-4x (p99 save ->
enforced 0.6-0.8 s instead of about 0.4 s at the comparison policy). Attempts that time out
already take ATTEMPT_TIMEOUT each, so the resolution stays about 10 ms.

    python -m bench.probeloop HOST PORT
"""

from __future__ import annotations

import sys
import time

from nsg_agent.host import packets

ATTEMPT_TIMEOUT = 0.01
DENY_CONFIRM = 3
PAUSE = 0.005  # seconds between attempts that got through (bounded polling)


def attempt(host: str, port: int) -> bool:
    """True if the connection got through (open or refused), False if it timed out
    (nsg_agent.host.packets, the lab probe's own TCP exchange)."""
    return packets.tcp(None, host, port, timeout=ATTEMPT_TIMEOUT, reset=False).through


def wait_for(host: str, port: int, verdict: str, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    first_drop: float | None = None
    drops = 0
    while time.monotonic() < deadline:
        start = time.monotonic()
        through = attempt(host, port)
        if verdict == "Allow":
            if through:
                return time.monotonic()
        elif through:
            first_drop, drops = None, 0
            time.sleep(PAUSE)
        else:
            if first_drop is None:
                first_drop = start
            drops += 1
            if drops >= DENY_CONFIRM:
                return first_drop
    return None


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    for line in sys.stdin:
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("Allow", "Deny"):
            print("bad command", flush=True)
            continue
        seen = wait_for(host, port, parts[0], min(float(parts[1]), 60.0))
        print("timeout" if seen is None else f"{seen:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
