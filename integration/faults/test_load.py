"""Under load: a bounded prober opens new connections to an allowed and to a denied port,
and keeps one long-lived connection, through 100 reloads (70 full replaces, then 30 deltas
after a restart that adopts the table, with kill -9 and restarts among them): 0 denied
admitted, 0 allowed refused, 0 established dropped (namespaces nsgf-*; the prober:
probe_load.py, bounded in time and count)."""

from __future__ import annotations

import copy
import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest
from faultlib import bench_state, poll, read_record, record, write_atomically

from host_helpers import PYTHON, stop_process

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root_nft_guard")]

PROBER = Path(__file__).with_name("probe_load.py")


def variants(state: dict, n: int) -> list[str]:
    """``n`` versions of the policy that differ only in one middle rule's destination port
    (a random-range port, far from the probe ports): allowed stays allowed, denied denied."""
    out = []
    for i in range(n):
        s = copy.deepcopy(state)
        rule = s["networkSecurityGroups"][0]["securityRules"][5]
        rule["destinationPortRange"] = str(20000 + (i % 2))
        rule.pop("destinationPortRanges", None)
        out.append(json.dumps(s))
    return out


def test_no_connection_lost_or_admitted_through_reloads(fault_pair, echo_server, agents, tmp_path, long_mode):
    pair = fault_pair
    state, gen = bench_state(pair, rules=200)
    allowed, denied = gen.flows["first"].port, gen.flows["none"].port
    assert (gen.flows["first"].access, gen.flows["none"].access) == ("Allow", "Deny")
    full, deltas = (210, 90) if long_mode else (70, 30)
    kill_every = 3 if long_mode else 10  # during the delta phase: kill -9 and restart
    texts = variants(state, full + deltas + 1)
    config = tmp_path / "desired-state.json"
    config.write_text(texts[0])
    state_dir = tmp_path / "run"
    echo_server(pair.srv, [allowed, denied], [])

    def committed(text: str) -> bool:
        status, intent = read_record(state_dir, pair.srv)
        sha = ((status or {}).get("commit") or {}).get("sha256")
        return intent is None and sha == hashlib.sha256(text.encode()).hexdigest()

    agent = agents.start(config, pair.srv, state_dir, "--no-delta")
    agent.wait_for("agent.ready", timeout=60)
    prober = subprocess.Popen(
        ["ip", "netns", "exec", pair.cli, PYTHON, str(PROBER), "--src", "10.70.200.1", "--dst", "10.70.0.10",
         "--allowed", str(allowed), "--denied", str(denied), "--max-seconds", "900" if long_mode else "300"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert prober.stdout.readline().strip() == "started"
        lagging = []
        kills = 0
        for i in range(1, full + deltas + 1):
            if i == full + 1:  # a restart without --no-delta: it adopts, then edits go as deltas
                stop_process(agent.proc)
                agent = agents.start(config, pair.srv, state_dir)
                agent.wait_for("config.adopted", timeout=60)
            elif i > full + 1 and (i - full) % kill_every == 0:
                agent.proc.send_signal(signal.SIGKILL)
                agent.proc.wait(10)
                agent = agents.start(config, pair.srv, state_dir)
                agent.wait_for("agent.ready", timeout=60)
                kills += 1
            write_atomically(config, texts[i])
            if not poll(lambda: committed(texts[i]), timeout=30, interval=0.02):
                lagging.append(i)
        out, err = prober.communicate("", timeout=60)
    finally:
        stop_process(prober)
    result = json.loads(out.strip().splitlines()[-1])
    hows = [e["how"] for a in agents.started for e in a.events() if e["event"] == "config.applied"]
    record("under load", reloads=full + deltas, kill_restarts=kills, full_replaces=hows.count("replace") - 1,
           deltas=hows.count("delta"), new_allowed=result["allowed_attempts"],
           allowed_refused=len(result["allowed_refused"]), new_denied=result["denied_attempts"],
           denied_admitted=len(result["denied_admitted"]), stream_echoes=result["stream_echoes"],
           established_dropped=len(result["stream_lost"]))
    assert not lagging, f"reloads not committed within 30 s: {lagging}"
    assert hows.count("delta") >= deltas // 2, hows  # the second phase really went as deltas
    assert kills >= 2
    assert result["allowed_attempts"] > 0 and result["denied_attempts"] > 0 and result["stream_echoes"] > 0
    assert result["denied_admitted"] == [], "a denied connection was admitted"
    assert result["allowed_refused"] == [], "an allowed connection was refused"
    assert result["stream_lost"] == [], "the established connection was dropped"
