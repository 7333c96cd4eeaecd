"""Prometheus metrics (prometheus-client): what the firewall does and how the agent is doing.

Served by ``run --metrics 127.0.0.1:9464`` (localhost by default: the counters describe the
host's traffic) or written by ``nsg-agent metrics --textfile PATH`` for node_exporter's
textfile collector. Names and labels (documented in docs/metrics.md):

  nsg_agent_rule_packets_total{nsg,direction,rule,nics}    kernel counters per NSG rule
  nsg_agent_rule_bytes_total{nsg,direction,rule,nics}      (summed over the rule's chains;
                                                            ``nics``: who shares them)
  nsg_agent_enforced_rules, nsg_agent_enforced_set_elements, nsg_agent_enforced_chains
  nsg_agent_last_apply_timestamp_seconds                   the commit's time
  nsg_agent_kernel_matches_commit                          1 when the kernel holds the commit
  nsg_agent_reconcile_total{outcome}                       unchanged|delta|replace|invalid|failed
  nsg_agent_reconcile_duration_seconds{outcome}            histogram
  nsg_agent_drift_repairs_total
  nsg_agent_conntrack_flushed_total
  nsg_agent_flowlog_tuples_written_total{state}            flow-log tuples written: B|C|E|D
  nsg_agent_flowlog_tuples_dropped_total{reason}           queue|disk|error|kernel
  nsg_agent_flowlog_records_written_total                  records (one per NIC and flush)

The kernel-side families are read at scrape time from the kernel and the status record (a
custom collector), so they are never stale; the reconcile families are counted by the daemon
as it works (``Metrics.reconciled``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from nsg_agent.compiler.results import Summary
from nsg_agent.kernel import counters as counting

OUTCOMES = ("unchanged", "delta", "replace", "invalid", "failed")


class KernelCollector:
    """Rule counters and enforcement gauges, read when Prometheus scrapes."""

    def __init__(self, read: Callable[[], tuple[Any, dict | None, bool | None]]):
        # read() -> (status, {(chain, comment): RuleCounter} or None, kernel matches commit)
        self.read = read

    def describe(self) -> list:
        return []  # read at scrape time only (no kernel call at registration)

    def collect(self) -> Iterator:
        status, kernel_counters, matches = self.read()
        commit = getattr(status, "commit", None)
        packets = CounterMetricFamily("nsg_agent_rule_packets", "Packets that met an NSG rule (kernel counters)",
                                      labels=["nsg", "direction", "rule", "nics"])
        nbytes = CounterMetricFamily("nsg_agent_rule_bytes", "Bytes that met an NSG rule (kernel counters)",
                                     labels=["nsg", "direction", "rule", "nics"])
        if commit is not None and kernel_counters is not None:
            for h in counting.by_rule(kernel_counters, commit.rule_index):
                labels = [h.nsg or "platform", h.direction, h.rule, ",".join(sorted(h.nics))]
                packets.add_metric(labels, h.packets)
                nbytes.add_metric(labels, h.bytes)
        yield packets
        yield nbytes
        s = commit.summary if commit is not None else Summary()  # no commit: an empty table's zeros
        for name, value, text in (("nsg_agent_enforced_rules", s.rules, "nft rules in the agent's table"),
                                  ("nsg_agent_enforced_chains", s.chains, "chains in the agent's table"),
                                  ("nsg_agent_enforced_set_elements", s.set_elements, "set and map elements")):
            g = GaugeMetricFamily(name, text)
            g.add_metric([], float(value))
            yield g
        g = GaugeMetricFamily("nsg_agent_last_apply_timestamp_seconds", "When the enforced commit was applied")
        g.add_metric([], float(commit.applied_at) if commit is not None else 0.0)
        yield g
        g = GaugeMetricFamily("nsg_agent_kernel_matches_commit", "1 if the kernel holds the enforced commit")
        g.add_metric([], 1.0 if matches else 0.0)
        yield g


class FlowLogCollector:
    """The flow-log writer's counts, read at scrape time (nsg_agent/flowlogs)."""

    def __init__(self, stats: Callable[[], dict]):
        self.stats = stats

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        s = self.stats()
        written = CounterMetricFamily("nsg_agent_flowlog_tuples_written",
                                      "Flow-log tuples written, by flow state (B, C, E, D)", labels=["state"])
        for state in ("B", "C", "E", "D"):
            written.add_metric([state], float(s.get("written", {}).get(state, 0)))
        yield written
        dropped = CounterMetricFamily(
            "nsg_agent_flowlog_tuples_dropped",
            "Flow-log tuples not written: queue full, disk bound, write error; kernel = socket overruns",
            labels=["reason"])
        for reason in ("queue", "disk", "error", "kernel"):
            dropped.add_metric([reason], float(s.get("dropped", {}).get(reason, 0)))
        yield dropped
        records = CounterMetricFamily("nsg_agent_flowlog_records_written", "Flow-log records written")
        records.add_metric([], float(s.get("records", 0)))
        yield records


class Metrics:
    """The agent's registry: daemon counters plus the kernel collector."""

    def __init__(self, read: Callable[[], tuple[Any, dict | None, bool | None]] | None = None,
                 daemon: bool = True):
        from prometheus_client import disable_created_metrics

        disable_created_metrics()  # no *_created series: nothing here restarts its counters but the process
        self.registry = CollectorRegistry(auto_describe=False)
        if read is not None:
            self.registry.register(KernelCollector(read))
        if not daemon:  # a one-shot 'nsg-agent metrics': the kernel side only
            return
        self.reconciles = Counter("nsg_agent_reconcile", "Reconcile passes by outcome", ["outcome"],
                                  registry=self.registry)
        self.durations = Histogram("nsg_agent_reconcile_duration_seconds", "Reconcile duration by outcome",
                                   ["outcome"], registry=self.registry,
                                   buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.drift = Counter("nsg_agent_drift_repairs", "Kernel drift repaired", registry=self.registry)
        self.flushed = Counter("nsg_agent_conntrack_flushed", "Conntrack entries removed (flushConnection)",
                               registry=self.registry)
        for outcome in OUTCOMES:  # every series exists from the start (rate() needs it)
            self.reconciles.labels(outcome)
            self.durations.labels(outcome)

    def reconciled(self, outcome: str, seconds: float) -> None:
        self.reconciles.labels(outcome).inc()
        self.durations.labels(outcome).observe(seconds)
        if self.textfile:
            try:
                self.write_textfile(self.textfile)
            except OSError:
                pass  # a full disk must not stop the firewall's agent

    textfile: str | None = None

    def add_flow_logs(self, stats: Callable[[], dict]) -> None:
        """Export a flow-log collector's counts (``run --flow-logs``)."""
        self.registry.register(FlowLogCollector(stats))

    # The reconciler's observer (Reconciler(observers=[metrics.outcome])): each reconcile's
    # Outcome, a drift repair's and a rollback's included. Kinds beyond the five documented
    # labels fold into them: adopted -> unchanged, none -> replace, refused -> invalid,
    # unavailable -> failed; unsettled (looked at again in 0.25 s) is not a reconcile.
    _LABELS = {"replace": "replace", "delta": "delta", "unchanged": "unchanged", "adopted": "unchanged",
               "none": "replace", "invalid": "invalid", "refused": "invalid", "failed": "failed",
               "unavailable": "failed"}

    def outcome(self, outcome: Any) -> None:
        label = self._LABELS.get(outcome.kind)
        if label is None:
            return
        if outcome.reason == "drift" and outcome.ok:
            self.drift.inc()
        self.reconciled(label, outcome.duration)

    def conntrack_flushed(self, count: int) -> None:
        """A listener of the reconciler's conntrack flush (``rec.conntrack.listeners``)."""
        if count:
            self.flushed.inc(count)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def write_textfile(self, path: str) -> None:
        from prometheus_client import write_to_textfile

        write_to_textfile(path, self.registry)

    def serve(self, address: str) -> Any:
        """Serve /metrics on ``HOST:PORT`` (HOST defaults to 127.0.0.1)."""
        from prometheus_client import start_http_server

        host, _, port = address.rpartition(":")
        server, thread = start_http_server(int(port), addr=(host or "127.0.0.1").strip("[]"), registry=self.registry)
        return server


def reader(store: Any, backend: Any) -> Callable[[], tuple[Any, dict | None, bool | None]]:
    """The kernel collector's read function for one namespace's status store and backend."""
    def read() -> tuple[Any, dict | None, bool | None]:
        from nsg_agent.daemon.operations import kernel_matches, read_record

        status, _ = read_record(store)  # a foreign status file: scraped as no commit
        try:
            fingerprint = backend.fingerprint()
            kernel = backend.counters() if fingerprint is not None else None
            matches = kernel_matches(backend, status, fingerprint)
        except Exception:  # noqa: BLE001 - a scrape must not fail on a busy kernel
            return status, None, None
        return status, kernel, matches
    return read
