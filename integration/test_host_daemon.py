"""Host mode, the daemon: ``nsg-agent run --netns`` as a subprocess keeps a namespace's
kernel equal to the file through edits, bad edits, drift and reloads; flushConnection cuts
live flows the new policy denies (and, without it, they live on)."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import pytest

from host_helpers import echo, host_policy, poll, run, write_atomically

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root_nft_guard")]

BOUND = 10.0  # generous upper bound for any asynchronous step (behaviour, not timing)

UNRELATED_RULE = """\
      - {name: deny-ssh, priority: 200, direction: Inbound, access: Deny, protocol: Tcp,
          sourceAddressPrefix: "*", sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "22"}
"""

BAD_RULE = """\
      - {name: broken, priority: 5, direction: Inbound, access: Allow, protocol: Tcp,
          sourceAddressPrefix: "*", sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "22"}
"""


def status(tmp_path: Path, ns: str) -> dict:
    path = tmp_path / "run" / ns / "status.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def committed(tmp_path: Path, ns: str, config: Path) -> bool:
    """Has the daemon recorded the current file content as enforced?"""
    commit = status(tmp_path, ns).get("commit") or {}
    return commit.get("sha256") == hashlib.sha256(config.read_bytes()).hexdigest()


def table_present(ns: str) -> bool:
    return "inet nsg_agent" in run("ip", "netns", "exec", ns, "nft", "list", "tables").stdout


def test_daemon_follows_edits_bad_edits_and_drift(host_pair, echo_server, prober, agent_daemon, tmp_path):
    """Good edit enforced, bad edit keeps old rules and is reported, deleted table restored,
    SIGHUP reloads, a later good edit applies, SIGTERM leaves the rules in place."""
    pair = host_pair
    echo_server(pair.srv, [8080, 9000], [])
    cli = prober(pair.cli)
    web = lambda: cli.tcp(pair.cli_internet, pair.srv_addr, 8080, timeout=0.3)  # noqa: E731
    other = lambda: cli.tcp(pair.cli_internet, pair.srv_addr, 9000, timeout=0.3)  # noqa: E731
    config = tmp_path / "etc" / "desired-state.yaml"
    config.parent.mkdir()
    config.write_text(host_policy(pair))
    assert web() and other()  # nothing enforced yet

    agent = agent_daemon(config, pair.srv)
    agent.wait_for("agent.ready")
    assert web() and not other()

    # 1. an edit (replaced by rename, as editors do) is enforced
    write_atomically(config, host_policy(pair, web_access="Deny"))
    took = poll(lambda: not web(), timeout=BOUND)
    assert took is not None, "the edit was not enforced"
    print(f"edit enforced after {took:.2f}s (probe-polled)")
    agent.wait_for("config.applied", count=2)
    applied = [e for e in agent.events() if e["event"] == "config.applied"]
    assert [e["how"] for e in applied[:2]] == ["replace", "delta"], applied  # the edit: only what changed
    changed = [e for e in agent.events() if e["event"] == "config.changed"]
    assert any(e.get("change") in ("moved", "created", "modified", "closed") for e in changed), \
        "the file watcher (not only the periodic resync) must notice the rename"

    # 2. a bad edit: the old rules stay, the error is logged and in the status file
    write_atomically(config, host_policy(pair, web_access="Allow", extra=BAD_RULE))
    invalid = agent.wait_for("config.invalid")
    assert any("priority" in p["path"] for p in invalid["problems"])
    assert poll(lambda: (status(tmp_path, pair.srv).get("last_error") or {}).get("kind") == "config", BOUND)
    assert not web() and not other()  # still the last good state (web denied)

    # 3. the table deleted behind the agent's back is restored
    run("ip", "netns", "exec", pair.srv, "nft", "delete", "table", "inet", "nsg_agent")
    assert poll(lambda: table_present(pair.srv), BOUND) is not None
    agent.wait_for("drift.repaired")
    assert not web() and not other()

    # 4. a later good edit is applied; SIGHUP reloads
    write_atomically(config, host_policy(pair, web_access="Allow"))
    assert poll(web, BOUND) is not None
    assert not other()
    hows = [(e["reason"], e["how"]) for e in agent.events() if e["event"] == "config.applied"]
    assert ("drift", "replace") in hows and hows[-1][1] == "delta", hows
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for("signal.reload")
    agent.wait_for("config.unchanged", reason="sighup")
    assert status(tmp_path, pair.srv).get("last_error") is None

    # 5. SIGTERM: the daemon exits, the rules stay
    agent.proc.terminate()
    assert agent.proc.wait(10) == 0
    assert table_present(pair.srv) and web() and not other()


def test_remove_on_exit_removes_the_table(host_pair, agent_daemon, tmp_path):
    """With --remove-on-exit the table is gone after SIGTERM."""
    config = tmp_path / "desired-state.yaml"
    config.write_text(host_policy(host_pair))
    agent = agent_daemon(config, host_pair.srv, "--remove-on-exit")
    agent.wait_for("agent.ready")
    assert table_present(host_pair.srv)
    agent.proc.terminate()
    assert agent.proc.wait(10) == 0
    assert not table_present(host_pair.srv)


@pytest.mark.parametrize("flush", [True, False], ids=["flushConnection-true", "flushConnection-false"])
def test_established_connection_across_reloads(host_pair, echo_server, prober, agent_daemon, tmp_path, flush):
    """A live connection survives a reload that still allows it; after a reload that denies
    it, it is cut when flushConnection is true and lives on when false (Azure's default)."""
    pair = host_pair
    echo_server(pair.srv, [8080], [])
    cli = prober(pair.cli)
    config = tmp_path / "desired-state.yaml"
    config.write_text(host_policy(pair, flush=flush))
    agent = agent_daemon(config, pair.srv)
    agent.wait_for("agent.ready")

    conn = cli.open_tcp(pair.cli_internet, pair.srv_addr, 8080)
    try:
        assert echo(conn)
        # a reload that still allows the flow
        write_atomically(config, host_policy(pair, flush=flush, extra=UNRELATED_RULE))
        assert poll(lambda: committed(tmp_path, pair.srv, config), BOUND) is not None
        if flush:
            flushed = agent.wait_for("conntrack.flushed", count=2)  # startup, this reload
            assert flushed["count"] == 0
        assert echo(conn), "an allowed connection must survive a reload"

        # a reload that denies it
        write_atomically(config, host_policy(pair, web_access="Deny", flush=flush, extra=UNRELATED_RULE))
        assert poll(lambda: committed(tmp_path, pair.srv, config), BOUND) is not None
        assert not cli.tcp(pair.cli_internet, pair.srv_addr, 8080, timeout=0.3), "new connections are denied"
        if flush:
            flushed = agent.wait_for("conntrack.flushed", count=3)
            assert flushed["count"] >= 1
            assert any(f["dport"] == 8080 and f["rule"] == "srv-nsg: UserRule_web" for f in flushed["flows"])
            assert not echo(conn), "flushConnection: the denied live flow must be cut"
        else:
            assert echo(conn), "without flushConnection existing flows live on"
    finally:
        conn.close()
