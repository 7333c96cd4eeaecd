"""Prometheus metrics: kernel counters per NSG rule (summed over chains, with the NICs that
share them), enforcement gauges, and reconcile outcomes counted from the daemon's events."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from nsg_agent.compiler.results import RuleIndex, RuleRef, Summary
from nsg_agent.daemon import metrics
from nsg_agent.daemon.status import Commit, Status
from nsg_agent.kernel import counters
from nsg_agent.kernel.backend import RuleCounter

INDEX = RuleIndex({
    ("lvl_a_r0", "web-nsg: UserRule_allow-web"): RuleRef("web-nsg", "UserRule_allow-web", "Inbound", "lvl_a_r0",
                                                         ("web1/subnet", "web2/subnet")),
    ("lvl_a_r0v2", "web-nsg: UserRule_allow-web"): RuleRef("web-nsg", "UserRule_allow-web", "Inbound", "lvl_a_r0v2",
                                                           ("far1/subnet",)),
    ("nic_web1_out", "PlatformRule_BlockGre"): RuleRef("", "PlatformRule_BlockGre", "Outbound", "nic_web1_out",
                                                       ("web1",)),
})
KERNEL = {("lvl_a_r0", "web-nsg: UserRule_allow-web"): RuleCounter(10, 1000),
          ("lvl_a_r0v2", "web-nsg: UserRule_allow-web"): RuleCounter(5, 500),
          ("nic_web1_out", "PlatformRule_BlockGre"): RuleCounter(2, 120),
          ("input", "conntrack: established,related"): RuleCounter(99, 9999)}


def _status() -> Status:
    return Status(commit=Commit(source="/x.yaml", sha256="s", files={}, applied_at=1700000000.0, mode="classify",
                                ruleset_sha256="r", summary=Summary(rules=42, chains=7, set_elements=100),
                                rule_index=INDEX, rules={}, sets={}))


def test_counters_summed_per_rule_with_the_nics_that_share_them():
    hits = {(h.nsg, h.rule): h for h in counters.by_rule(KERNEL, INDEX)}
    web = hits[("web-nsg", "UserRule_allow-web")]
    assert (web.packets, web.bytes, web.nics) == (15, 1500, {"web1", "web2", "far1"})
    assert hits[("", "PlatformRule_BlockGre")].levels == {"platform"}
    assert len(hits) == 2  # conntrack's counter is no NSG rule
    per_nic = counters.for_nic(KERNEL, INDEX, "far1")
    assert per_nic == {("subnet", "web-nsg", "Inbound", "UserRule_allow-web"): (5, 500, ("far1",))}


def _families(m: metrics.Metrics) -> dict:
    return {f.name: f for f in text_string_to_metric_families(m.text().decode())}


def test_kernel_families_at_scrape_time():
    m = metrics.Metrics(lambda: (_status(), KERNEL, True))
    fam = _families(m)
    samples = {tuple(sorted(s.labels.items())): s.value for s in fam["nsg_agent_rule_packets"].samples}
    assert samples[(("direction", "Inbound"), ("nics", "far1,web1,web2"), ("nsg", "web-nsg"),
                    ("rule", "UserRule_allow-web"))] == 15
    assert fam["nsg_agent_enforced_rules"].samples[0].value == 42
    assert fam["nsg_agent_kernel_matches_commit"].samples[0].value == 1
    assert fam["nsg_agent_last_apply_timestamp_seconds"].samples[0].value == 1700000000.0


def test_outcomes_counted_from_the_reconcilers_outcomes(tmp_path):
    """Metrics observe the reconciler's Outcome values (no log parsing): kinds, durations,
    drift repairs, conntrack entries flushed; unsettled reads are not reconciles."""
    from nsg_agent.daemon.outcome import Outcome

    m = metrics.Metrics(lambda: (Status(), None, None))
    m.textfile = str(tmp_path / "nsg.prom")
    for kind, reason in (("delta", "file:x"), ("invalid", "file:x"), ("unchanged", "sighup"),
                         ("replace", "drift"), ("unsettled", "file:x"), ("adopted", "startup"),
                         ("unavailable", "retry")):
        m.outcome(Outcome(kind=kind, reason=reason, origin="f", at=0.0, duration=0.02))
    m.conntrack_flushed(3)  # the reconciler's conntrack flush tells its listeners
    m.conntrack_flushed(0)
    fam = _families(m)
    got = {s.labels["outcome"]: s.value for s in fam["nsg_agent_reconcile"].samples if s.name.endswith("_total")}
    assert got == {"unchanged": 2, "delta": 1, "replace": 1, "invalid": 1, "failed": 1}
    assert fam["nsg_agent_drift_repairs"].samples[0].value == 1
    assert fam["nsg_agent_conntrack_flushed"].samples[0].value == 3
    assert "nsg_agent_reconcile_total" in (tmp_path / "nsg.prom").read_text()
