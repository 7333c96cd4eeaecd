"""docs/benchmarks.md, written by the run itself from what it measured."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bench.stats import Summary, paired_ratio, percentile, summarize


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured
    note: str = ""
    context: bool = False  # shown for context: not one of the targets as such


@dataclass
class Report:
    command: str
    mode: str  # "full" | "quick"
    started: str
    duration_s: float = 0.0
    machine: dict[str, str] = field(default_factory=dict)
    scenarios: dict[str, str] = field(default_factory=dict)  # name -> description
    sections: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    not_measured: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    nft_cli_rss: float | None = None  # MiB: the nft command alone loading the maximum table

    def render(self) -> str:
        out = ["# Benchmarks", ""]
        out.append(f"Written by the benchmark run itself: `{self.command}` ({self.mode} run, started "
                   f"{self.started}, took {self.duration_s / 60:.1f} min). Do not edit by hand: "
                   "run the command again. Benchmarks are not tests: nothing here asserts a "
                   "timing; figures are ratios against baselines measured in the same run, "
                   "with absolute values beside them.")
        out += ["", "## Machine", "", "| | |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in self.machine.items()]
        out += ["", "## Targets (issue 5)", "", "| target | goal | measured | met? |", "|---|---|---|---|"]
        for t in self.targets:
            met = "not measured" if t.met is None else ("**met**" if t.met else "**missed**")
            if t.context and t.met is not None:
                met = "context: " + ("reached" if t.met else "not reached")
            out.append(f"| {t.name} | {t.goal} | {t.measured} | {met} |")
        notes = [t for t in self.targets if t.note]
        if notes:
            out.append("")
            out += [f"- {t.name}: {t.note}" for t in notes]
        out += ["", "## Policies measured", ""]
        out += [f"- **{k}**: {v}" for k, v in self.scenarios.items()]
        for s in self.sections:
            out += ["", s.rstrip()]
        if self.findings:
            out += ["", "## Where the time goes (findings)", ""]
            out += self.findings
        if self.not_measured:
            out += ["", "## What could not be measured", ""]
            out += [f"- {n}" for n in self.not_measured]
        return "\n".join(out).rstrip() + "\n"


# --- formatting helpers --------------------------------------------------------------------


def fmt(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.{digits}f}"


def fmt_summary(s: Summary, digits: int = 0, unit: str = "") -> str:
    if not s.n:
        return "n/a"
    if s.n == 1:
        return f"{fmt(s.median, digits)}{unit}"
    return f"{fmt(s.median, digits)}{unit} ({fmt(s.low, digits)}–{fmt(s.high, digits)})"


def fmt_ratio(s: Summary) -> str:
    if not s.n:
        return "n/a"
    if s.n == 1:
        return f"{s.median:.2f}×"
    return f"{s.median:.2f}× ({s.low:.2f}–{s.high:.2f})"


def ms(seconds: list[float]) -> Summary:
    return summarize([v * 1000 for v in seconds])


def dataplane_section(res: Any, baseline: str, naive: str | None,
                      same_size: dict[str, str] | None = None) -> tuple[str, dict[str, dict[str, Summary]]]:
    """The dataplane table; returns it and the ratio summaries per variant. ``same_size`` maps
    a variant to the naive rendering of the same (or, for the maximum, the largest loadable)
    policy: its "× naive, same size" column."""
    v = res.values
    same_size = same_size or {}
    labels = {var.key: var.label for var in res.variants}
    lines = ["## Dataplane: client and server namespaces over veth", ""]
    lines.append(
        f"Ruleset on the server's input path; traffic is the policy's *last* flow (decided by its "
        f"last rule, the worst case for a linear list), conntrack on. {res.rounds} interleaved "
        f"rounds, the variant order rotated each round; per round and variant: new TCP "
        f"connections for {res.conn_seconds:g} s (connect, 16-byte request, 16-byte reply, "
        f"close; 2 client and 2 server processes), iperf3 TCP for {res.iperf_seconds:g} s, "
        f"iperf3 UDP 64-byte datagrams at full speed for {res.iperf_seconds:g} s. Cells: median "
        "(min–max) over the rounds; ratios are per-round ratios against the baseline measured in "
        "the same round, then the median (min–max) of those. '× naive 200×50' compares with the naive "
        "rendering of the comparison policy; '× naive, same size' with the naive rendering of the same "
        "policy (for the maximum policy, which naive cannot load, the large policy's: a lower bound).")
    lines += ["", "| variant | ruleset | new conns/s | × no firewall | × naive 200×50 | × naive, same size "
              "| connect p50 µs | connect p99 µs | TCP Gbit/s | × no firewall | UDP 64 B kpps | × no firewall |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios: dict[str, dict[str, Summary]] = {}
    nan = Summary(float("nan"), 0, 0, 0)
    for var in res.variants:
        k = var.key
        r_conn = paired_ratio(v["conn_rate"][k], v["conn_rate"][baseline])
        r_naive = paired_ratio(v["conn_rate"][k], v["conn_rate"][naive]) if naive else nan
        partner = same_size.get(k)
        r_same = paired_ratio(v["conn_rate"][k], v["conn_rate"][partner]) if partner else nan
        r_tcp = paired_ratio(v["tcp_gbps"][k], v["tcp_gbps"][baseline])
        r_udp = paired_ratio(v["udp_kpps"][k], v["udp_kpps"][baseline])
        ratios[k] = {"conn": r_conn, "naive": r_naive, "same": r_same, "tcp": r_tcp, "udp": r_udp}
        same_cell = "—"
        if partner:
            same_cell = fmt_ratio(r_same) + ("" if partner == "naive" or k.endswith("large")
                                             else f" (vs {labels.get(partner, partner)})")
        lines.append(" | ".join([
            f"| {var.label}", var.info.get("ruleset", ""),
            fmt_summary(summarize(v["conn_rate"][k])), fmt_ratio(r_conn),
            fmt_ratio(r_naive) if naive and k != naive else "—", same_cell,
            fmt_summary(summarize(v["connect_p50_us"][k])), fmt_summary(summarize(v["connect_p99_us"][k])),
            fmt_summary(summarize(v["tcp_gbps"][k]), 1), fmt_ratio(r_tcp),
            fmt_summary(summarize(v["udp_kpps"][k])), fmt_ratio(r_udp) + " |",
        ]))
    lines += ["", "Verdicts seen by a real TCP connect before measuring (first / last / no-rule flow; "
              "the baseline allows everything):", "", "| variant | first rule | last rule | no rule | ruleset load (nft -j -f) |",
              "|---|---|---|---|---|"]
    for var in res.variants:
        vd = res.verdicts.get(var.key, {})
        lines.append(f"| {var.label} | {vd.get('first', 'n/a')} | {vd.get('last', 'n/a')} | "
                     f"{vd.get('none', 'n/a')} | {res.load_seconds.get(var.key, float('nan')):.2f} s |")
    lines += ["", "Round orders: " + "; ".join(" ".join(o) for o in res.orders)]
    if res.errors:
        lines += ["", "Problems during the dataplane run:", ""] + [f"- {e}" for e in res.errors[:20]]
    return "\n".join(lines), ratios


def steps_table(title: str, rows: list[tuple[str, Any]], steps: tuple[str, ...],
                total_steps: tuple[str, ...] = ("compile", "serialize", "replace")) -> str:
    """rows: (label, Timings). Cells: median ms (min–max); then the total of ``total_steps``
    ("compile + apply") and of all steps, per repetition."""
    head = "| " + " | ".join(["case", *[f"{s} ms" for s in steps], f"{' + '.join(total_steps)} ms",
                              "all steps ms"]) + " |"
    lines = [title, "", head, "|" + "---|" * (len(steps) + 3)]
    for label, t in rows:
        cells = [fmt_summary(ms(t.steps.get(s, []))) for s in steps]
        n = len(t.steps.get("compile", []))
        total = [sum(t.steps[s][i] for s in total_steps if s in t.steps) for i in range(n)]
        everything = [sum(t.steps[s][i] for s in steps if s in t.steps) for i in range(n)]
        cells += [fmt_summary(ms(total)), fmt_summary(ms(everything))]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def p(values: list[float], q: float) -> float:
    return percentile(values, q)
