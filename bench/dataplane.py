"""Dataplane measurements over veth between namespace pairs, one pair per rendering.

Each variant gets its own client/server namespace pair (same addresses in every pair), so
each ruleset is loaded once and the rounds can interleave freely: round r runs every metric
over all variants in an order rotated by r. The ruleset sits on the server's (receiver's)
input path; the traffic is the generated policy's "last" flow (decided by the last rule), so
a linear rendering pays for every rule.

Metrics per variant and round: new TCP connections per second with connect latency p50/p99
(bench.loadgen), TCP throughput (iperf3), UDP 64-byte packets per second received (iperf3).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench import netns
from bench.generate import LINK_PREFIXLEN, PORT_FIRST, PORT_IPERF, PORT_LAST, PORT_NONE, Generated

BASELINE_TABLE = {
    "nftables": [
        {"metainfo": {"json_schema_version": 1}},
        {"add": {"table": {"family": "inet", "name": "nsg_base"}}},
        {"add": {"chain": {"family": "inet", "table": "nsg_base", "name": "input", "type": "filter",
                           "hook": "input", "prio": 0, "policy": "accept"}}},
        {"add": {"rule": {"family": "inet", "table": "nsg_base", "chain": "input", "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
            {"accept": None}]}}},
        {"add": {"rule": {"family": "inet", "table": "nsg_base", "chain": "input", "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}},
            {"drop": None}]}}},
    ]
}


@dataclass
class Variant:
    key: str
    label: str
    ruleset_json: str  # what is loaded into the server namespace
    scenario: Generated
    expect_filtering: bool = True  # False for the baseline (everything allowed)
    info: dict = field(default_factory=dict)  # nft rules / elements / modes, for the report


@dataclass
class DataplaneResult:
    variants: list[Variant]
    rounds: int
    conn_seconds: float
    iperf_seconds: float
    # metric -> variant key -> per-round values (None: that measurement failed)
    values: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    verdicts: dict[str, dict[str, str]] = field(default_factory=dict)
    load_seconds: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    orders: list[list[str]] = field(default_factory=list)

    def add(self, metric: str, key: str, value: float | None) -> None:
        self.values.setdefault(metric, {}).setdefault(key, []).append(value)


METRICS = ("conn_rate", "connect_p50_us", "connect_p99_us", "tcp_gbps", "udp_kpps")


def baseline_json() -> str:
    return json.dumps(BASELINE_TABLE)


def _py(*args: str) -> list[str]:
    return [netns.python(), "-m", "bench.loadgen", *args]


def run(lab: netns.Lab, variants: list[Variant], *, rounds: int, conn_seconds: float,
        iperf_seconds: float, tmpdir: Path, log: Callable[[str], None]) -> DataplaneResult:
    res = DataplaneResult(variants, rounds, conn_seconds, iperf_seconds)
    pairs: dict[str, netns.Pair] = {}
    for i, v in enumerate(variants):
        sc = v.scenario
        pair = lab.pair(i, sc.client_address, sc.server_address, LINK_PREFIXLEN)
        pairs[v.key] = pair
        res.load_seconds[v.key] = netns.nft_load(pair.server_ns, v.ruleset_json, tmpdir)
        lab.spawn(pair.server_ns, *_py("server", "--port", str(PORT_LAST), "--workers", "2"))
        for port in (PORT_FIRST, PORT_NONE):
            lab.spawn(pair.server_ns, *_py("server", "--port", str(port), "--workers", "1"))
        lab.spawn(pair.server_ns, "iperf3", "-s", "-p", str(PORT_IPERF))
        log(f"  {v.key}: ruleset loaded in {res.load_seconds[v.key]:.2f} s into {pair.server_ns}")
    time.sleep(1.0)  # let the servers bind

    for v in variants:
        res.verdicts[v.key] = _verdicts(pairs[v.key], v, res)

    # warm-up (not recorded): one short run per variant
    for v in variants:
        _conn(pairs[v.key], min(1.0, conn_seconds))

    for r in range(rounds):
        k = r % len(variants)
        order = variants[k:] + variants[:k]
        res.orders.append([v.key for v in order])
        log(f"  round {r + 1}/{rounds}: {' '.join(v.key for v in order)}")
        for v in order:
            out = _conn(pairs[v.key], conn_seconds)
            if out is None or out.get("errors", 0) > max(10, 0.01 * out.get("connections", 0)):
                res.errors.append(f"round {r + 1} {v.key}: connection test: {out}")
            res.add("conn_rate", v.key, out["rate"] if out else None)
            res.add("connect_p50_us", v.key, out["connect_p50_us"] if out else None)
            res.add("connect_p99_us", v.key, out["connect_p99_us"] if out else None)
        for v in order:
            res.add("tcp_gbps", v.key, _iperf_tcp(pairs[v.key], iperf_seconds, res, v.key))
        for v in order:
            res.add("udp_kpps", v.key, _iperf_udp(pairs[v.key], iperf_seconds, res, v.key))
    return res


def _verdicts(pair: netns.Pair, v: Variant, res: DataplaneResult) -> dict[str, str]:
    """Probe the first/last/none flows and compare with the generator's claims."""
    flows = v.scenario.flows
    ports = [flows[n].port for n in ("first", "last", "none")]
    for _ in range(20):  # the servers may still be binding
        out = netns.in_ns(pair.client_ns, *_py("probe", "--host", pair.server_addr, "--ports",
                                                 ",".join(map(str, ports)), "--timeout", "0.5"),
                          check=False).stdout
        try:
            seen = json.loads(out)
        except json.JSONDecodeError:
            seen = {}
        if seen.get(str(PORT_LAST)) == "open":
            break
        time.sleep(0.25)
    verdicts = {}
    for name in ("first", "last", "none"):
        f = flows[name]
        got = seen.get(str(f.port), "no answer")
        observed = "Allow" if got in ("open", "refused") else "Deny"
        expected = f.access if v.expect_filtering else "Allow"
        verdicts[name] = f"{observed} ({'as expected' if observed == expected else 'EXPECTED ' + expected})"
        if observed != expected:
            res.errors.append(f"{v.key}: flow {name} (port {f.port}) was {observed}, expected {expected}")
    return verdicts


def _conn(pair: netns.Pair, seconds: float) -> dict | None:
    try:
        proc = netns.in_ns(pair.client_ns, *_py("client", "--host", pair.server_addr, "--port", str(PORT_LAST),
                                                  "--duration", str(seconds), "--workers", "2"),
                           timeout=seconds + 30, check=False)
        out = json.loads(proc.stdout)
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        out = None
    # Keep conntrack small between runs (TIME_WAIT entries would pile up).
    netns.in_ns(pair.server_ns, "conntrack", "-F", check=False)
    netns.in_ns(pair.client_ns, "conntrack", "-F", check=False)
    return out


def _iperf(pair: netns.Pair, seconds: float, *extra: str) -> dict | None:
    try:
        proc = netns.in_ns(pair.client_ns, "iperf3", "-c", pair.server_addr, "-p", str(PORT_IPERF),
                           "-t", str(seconds), "-J", *extra, timeout=seconds + 20, check=False)
        return json.loads(proc.stdout)
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        return None


def _iperf_tcp(pair: netns.Pair, seconds: float, res: DataplaneResult, key: str) -> float | None:
    out = _iperf(pair, seconds)
    try:
        return out["end"]["sum_received"]["bits_per_second"] / 1e9
    except (TypeError, KeyError):
        res.errors.append(f"{key}: iperf3 TCP failed: {(out or {}).get('error', 'no output')}")
        return None


def _iperf_udp(pair: netns.Pair, seconds: float, res: DataplaneResult, key: str) -> float | None:
    out = _iperf(pair, seconds, "-u", "-l", "64", "-b", "0")
    try:
        s = out["end"]["sum"]
        return (s["packets"] - s["lost_packets"]) / s["seconds"] / 1e3
    except (TypeError, KeyError, ZeroDivisionError):
        res.errors.append(f"{key}: iperf3 UDP failed: {(out or {}).get('error', 'no output')}")
        return None

