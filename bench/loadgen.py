"""A small, bounded TCP load generator and its server: new connections per second.

Each client worker loops until a fixed deadline: connect, send one 16-byte request, read the
16-byte reply, read the server's close, close. The server (SO_REUSEPORT workers) accepts,
reads the request, replies and closes first, so TIME_WAIT sits on the server and the client
never runs out of ports. Every connection is new to conntrack and meets the ruleset.

    python -m bench.loadgen server --port 7002 [--workers 2]
    python -m bench.loadgen client --host 10.70.0.10 --port 7002 --duration 2.5 [--workers 2]
    python -m bench.loadgen probe --host 10.70.0.10 --ports 7001,7002,7003 [--timeout 0.5]

The client prints one JSON object: connections completed, errors, seconds, rate, and connect
latency percentiles (time for connect() to return: SYN out, SYN/ACK back) and whole-exchange
percentiles, in microseconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import sys
import time

REQUEST = b"nsg-bench-req-16"
REPLY = b"nsg-bench-rep-16"


def serve(port: int, workers: int) -> None:
    def worker() -> None:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        ls.bind(("0.0.0.0", port))
        ls.listen(4096)
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                continue
            try:
                c.settimeout(2.0)
                c.recv(64)
                c.sendall(REPLY)
            except OSError:
                pass
            finally:
                c.close()

    procs = [mp.Process(target=worker, daemon=True) for _ in range(workers)]
    for p in procs:
        p.start()
    print("ready", flush=True)
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        pass


def _client_worker(host: str, port: int, deadline: float, out) -> None:
    connect_us: list[int] = []
    total_us: list[int] = []
    errors = 0
    addr = (host, port)
    pc = time.perf_counter
    while pc() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1.0)
        t0 = pc()
        try:
            s.connect(addr)
            t1 = pc()
            s.sendall(REQUEST)
            got = s.recv(64)
            while got and s.recv(64):
                pass
            t2 = pc()
            if not got:
                errors += 1
                continue
        except OSError:
            errors += 1
            continue
        finally:
            s.close()
        connect_us.append(int((t1 - t0) * 1e6))
        total_us.append(int((t2 - t0) * 1e6))
    out.send((connect_us, total_us, errors))
    out.close()


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return float(sorted_values[k])


def client(host: str, port: int, duration: float, workers: int) -> dict:
    start = time.perf_counter()
    deadline = start + duration
    pipes, procs = [], []
    for _ in range(workers):
        r, w = mp.Pipe(duplex=False)
        p = mp.Process(target=_client_worker, args=(host, port, deadline, w))
        p.start()
        w.close()
        pipes.append(r)
        procs.append(p)
    connect_us: list[int] = []
    total_us: list[int] = []
    errors = 0
    for r in pipes:
        c, t, e = r.recv()
        connect_us += c
        total_us += t
        errors += e
    for p in procs:
        p.join(timeout=10)
    elapsed = max(duration, time.perf_counter() - start - 0.0)
    connect_us.sort()
    total_us.sort()
    n = len(connect_us)
    return {
        "connections": n, "errors": errors, "seconds": duration, "rate": n / duration,
        "connect_p50_us": percentile(connect_us, 0.50), "connect_p99_us": percentile(connect_us, 0.99),
        "exchange_p50_us": percentile(total_us, 0.50), "exchange_p99_us": percentile(total_us, 0.99),
        "wall_seconds": elapsed,
    }


def probe(host: str, ports: list[int], timeout: float) -> dict[str, str]:
    """One TCP connect per port: "open", "refused" (allowed, nothing listening) or "timeout"
    (dropped by the ruleset)."""
    out = {}
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            out[str(port)] = "open"
        except ConnectionRefusedError:
            out[str(port)] = "refused"
        except (socket.timeout, TimeoutError):
            out[str(port)] = "timeout"
        except OSError as e:
            out[str(port)] = f"error: {e.strerror}"
        finally:
            s.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen")
    sub = ap.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--workers", type=int, default=2)
    c = sub.add_parser("client")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--duration", type=float, default=2.5)
    c.add_argument("--workers", type=int, default=2)
    pr = sub.add_parser("probe")
    pr.add_argument("--host", required=True)
    pr.add_argument("--ports", required=True, help="comma-separated")
    pr.add_argument("--timeout", type=float, default=0.5)
    args = ap.parse_args(argv)
    if args.role == "probe":
        print(json.dumps(probe(args.host, [int(p) for p in args.ports.split(",")], args.timeout)))
        return 0
    if args.role == "server":
        serve(args.port, args.workers)
        return 0
    if not 0 < args.duration <= 30:
        ap.error("--duration must be in (0, 30] seconds")
    print(json.dumps(client(args.host, args.port, args.duration, args.workers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
