"""Metrics with real packets: the daemon's /metrics endpoint (on loopback) shows the per-rule
kernel counters rising by the connections sent, and the reconcile outcomes."""

from __future__ import annotations

import pytest

from host_helpers import free_port, host_policy, poll, scrape, write_atomically

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root_nft_guard")]


def rule_packets(m: dict, rule: str) -> float:
    return sum(v for (name, labels), v in m.items()
               if name == "nsg_agent_rule_packets_total" and dict(labels).get("rule") == rule)


def test_metrics_endpoint_counts_rule_hits_and_outcomes(host_pair, echo_server, prober, agent_daemon, tmp_path):
    pair = host_pair
    echo_server(pair.srv, [8080, 9000], [])
    cli = prober(pair.cli)
    config = tmp_path / "desired-state.yaml"
    config.write_text(host_policy(pair))
    port = free_port()
    agent = agent_daemon(config, pair.srv, "--metrics", f"127.0.0.1:{port}")
    agent.wait_for("agent.ready")
    before = scrape(port)
    sent = 5
    for _ in range(sent):
        assert cli.tcp(pair.cli_internet, pair.srv_addr, 8080, timeout=0.5)  # UserRule_web allows
        assert not cli.tcp(pair.cli_internet, pair.srv_addr, 9000, timeout=0.2)  # DenyAllInBound
    after = scrape(port)
    # each allowed connection's first packet meets the rule once (the rest is conntrack's)
    assert rule_packets(after, "UserRule_web") - rule_packets(before, "UserRule_web") == sent
    assert rule_packets(after, "DefaultRule_DenyAllInBound") - rule_packets(before, "DefaultRule_DenyAllInBound") >= sent
    assert after[("nsg_agent_kernel_matches_commit", ())] == 1
    assert after[("nsg_agent_reconcile_total", (("outcome", "replace"),))] >= 1
    write_atomically(config, host_policy(pair, web_access="Deny"))
    assert poll(lambda: scrape(port)[("nsg_agent_reconcile_total", (("outcome", "delta"),))]
                + scrape(port)[("nsg_agent_reconcile_total", (("outcome", "replace"),))] >= 2, timeout=10) is not None


def test_effective_rules_live_shows_the_rules_hits(host_pair, echo_server, prober, tmp_path):
    """effective-rules --live: each rule of the NIC with the packets the kernel counted."""
    import json

    from host_helpers import NSG_AGENT, run

    pair = host_pair
    echo_server(pair.srv, [8080], [])
    cli = prober(pair.cli)
    config = tmp_path / "desired-state.yaml"
    config.write_text(host_policy(pair))
    state = str(tmp_path / "run")
    assert run(NSG_AGENT, "apply", str(config), "--netns", pair.srv, "--state-dir", state, timeout=60).returncode == 0
    for _ in range(3):
        assert cli.tcp(pair.cli_internet, pair.srv_addr, 8080, timeout=0.5)
    r = run(NSG_AGENT, "effective-rules", str(config), "--nic", "srv", "--live", "--netns", pair.srv,
            "--state-dir", state, "--json", timeout=30)
    rules = {x["name"]: x for e in json.loads(r.stdout)["value"] for x in e["effectiveSecurityRules"]}
    assert rules["securityRules/web"]["hits"]["packets"] == 3
    assert rules["securityRules/deny-8081"]["hits"]["packets"] == 0
    table = run(NSG_AGENT, "effective-rules", str(config), "--nic", "srv", "--live", "--netns", pair.srv,
                "--state-dir", state, timeout=30).stdout
    line = next(x for x in table.splitlines() if x.strip().startswith("100") and " web " in f" {x} ")
    assert line.split()[-2] == "3"
