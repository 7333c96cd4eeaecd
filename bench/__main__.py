"""python -m bench [--quick]: the whole benchmark, written to docs/benchmarks.md.

Needs root (network namespaces). Everything runs in ``nsgb-`` namespaces that are removed at
the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import control, dataplane, fabric, generate, machine, naive, netns, report
from bench.report import Target, fmt, fmt_summary, ms, steps_table
from bench.stats import percentile, summarize

DOC = netns.ROOT / "docs" / "benchmarks.md"


def log(msg: str) -> None:
    print(msg, flush=True)


def _resolve(gen: generate.Generated, tmpdir: Path, name: str):
    from agent import loader, semantics

    path = gen.write(tmpdir / name, name=name, interface="nsgb-s0")
    loaded = loader.load(path)
    return semantics.resolve(loaded.state, loaded.tags)


def _compiler():
    try:
        from agent.compiler import HostPlacement, compile_ruleset
    except ImportError:
        return None
    return compile_ruleset, HostPlacement


def _ruleset_label(summary: dict) -> str:
    inbound = [lv for lv in summary.get("levels", {}).values() if lv.get("direction") == "Inbound"]
    mode = ", ".join(sorted({lv.get("mode", "?") for lv in inbound})) or "?"
    text = f"{summary.get('rules', 0):,} nft rules, {summary.get('set_elements', 0):,} set/map elements; inbound level: {mode}"
    fb = [lv["fallback"] for lv in inbound if lv.get("fallback")]
    if fb:
        text += f" (classify fell back: {fb[0]})"
    return text


def build_variants(cmp_gen, max_gen, tmpdir: Path, rep: report.Report) -> list[dataplane.Variant]:
    cmp_policy = _resolve(cmp_gen, tmpdir, "cmp")
    variants = [dataplane.Variant("nofw", "no firewall (conntrack only)", dataplane.baseline_json(), cmp_gen,
                                  expect_filtering=False, info={"ruleset": "ct state rules only"})]
    cmds = naive.render(cmp_policy, {generate.SERVER_NIC: "nsgb-s1"})
    variants.append(dataplane.Variant("naive", "naive, comparison policy", naive.to_json(cmds), cmp_gen,
                                      info={"ruleset": f"{naive.rule_count(cmds):,} nft rules (one per prefix×port)"}))
    comp = _compiler()
    if comp is None:
        rep.not_measured.append("the compiler's simple and classify modes: agent.compiler is missing")
        return variants
    compile_ruleset, HostPlacement = comp
    max_policy = _resolve(max_gen, tmpdir, "max")
    for scale_key, gen, policy in (("cmp", cmp_gen, cmp_policy), ("max", max_gen, max_policy)):
        for mode in ("simple", "classify"):
            idx = len(variants)
            rs = compile_ruleset(policy, HostPlacement(interfaces={generate.SERVER_NIC: f"nsgb-s{idx}"}), mode=mode)
            label = f"{mode}, {'comparison' if scale_key == 'cmp' else 'maximum'} policy"
            variants.append(dataplane.Variant(f"{mode}-{scale_key}", label, rs.to_json(), gen,
                                              info={"ruleset": _ruleset_label(rs.summary), "summary": rs.summary}))
    return variants


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a ~2-3 minute smoke run (smaller sizes, fewer rounds)")
    ap.add_argument("--out", type=Path, default=DOC, help=f"report file (default {DOC.relative_to(netns.ROOT)})")
    ap.add_argument("--skip-dataplane", action="store_true", help="control plane only")
    ap.add_argument("--skip-control", action="store_true", help="dataplane only")
    ap.add_argument("--skip-fabric", action="store_true", help="no measurement through the lab fabric")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench: needs root (network namespaces)", file=sys.stderr)
        return 3

    quick = args.quick
    given = argv if argv is not None else sys.argv[1:]
    cmd = os.environ.get("NSG_BENCH_COMMAND") or shlex.join(["python", "-m", "bench", *given])
    if os.environ.get("NSG_BENCH_COMMAND") and [a for a in given if a != "--quick"]:
        cmd += " " + shlex.join(a for a in given if a != "--quick")
    t_start = time.monotonic()
    rep = report.Report(command=cmd, mode="quick" if quick else "full",
                        started=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                        machine=machine.record())
    cfg = {
        "rounds": 2 if quick else 5, "conn_seconds": 1.0 if quick else 2.0, "iperf_seconds": 1 if quick else 3,
        "reps": 1, "change_reps": 2 if quick else 3, "edits_cmp": 6 if quick else 20,
        "edits_max": 2,
    }
    cmp_scale = generate.NAIVE_COMPARISON
    max_scale = generate.QUICK_MAXIMUM if quick else generate.MAXIMUM
    log(f"generating policies (seed {cmp_scale.seed})")
    cmp_gen, max_gen = generate.generate(cmp_scale), generate.generate(max_scale)
    rep.scenarios["comparison policy"] = (
        f"{cmp_scale.describe()}; {cmp_gen.prefix_count():,} prefixes. The size design.md measured; "
        "the naive rendering is loaded at this size only (at the maximum it would be millions of nft rules).")
    rep.scenarios["maximum policy" + (" (reduced for --quick)" if quick else "")] = (
        f"{max_scale.describe()}; {max_gen.prefix_count():,} prefixes in rules and the service-tag file; "
        "rules alternate Allow/Deny, Tcp/Udp/*, destinations *, an ASG, VirtualNetwork or the NIC's address.")
    rep.scenarios["probe flows"] = (
        "TCP from 10.70.200.1 (outside the VNet) to the server NIC 10.70.0.10: port 7001 is decided by the "
        "first rule, 7002 and iperf3's 5201 by the last rule (Allow, protocol *), 7003 by DenyAllInBound "
        "(tests/test_bench_generator.py checks these against agent.semantics).")

    swept = netns.sweep()
    if swept:
        log(f"removed stale benchmark namespaces: {' '.join(swept)}")
    status = 0
    with tempfile.TemporaryDirectory(prefix="nsgb-") as tmp, netns.Lab() as lab:
        tmpdir = Path(tmp)
        try:
            if not args.skip_dataplane:
                run_dataplane(lab, rep, cmp_gen, max_gen, tmpdir, cfg)
            if not args.skip_dataplane and not args.skip_fabric:
                run_fabric(lab, rep, max_gen, tmpdir, cfg, quick)
            if not args.skip_control:
                run_control(lab, rep, cmp_gen, max_gen, tmpdir, cfg, quick)
        except KeyboardInterrupt:
            log("interrupted: cleaning up")
            return 130
        except Exception:  # write what we have, with the failure
            status = 3
            tb = traceback.format_exc()
            log(tb)
            rep.not_measured.append("the run stopped on an error:\n\n```\n" + tb.strip() + "\n```")
    rep.duration_s = time.monotonic() - t_start
    rep.machine["load average at end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3]) + \
        " (1/5/15 min; other work on this shared machine shows up as noise)"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(rep.render())
    log(f"wrote {args.out} ({rep.duration_s / 60:.1f} min)")
    return status


def run_dataplane(lab, rep, cmp_gen, max_gen, tmpdir, cfg) -> None:
    log("dataplane: building variants")
    variants = build_variants(cmp_gen, max_gen, tmpdir, rep)
    res = dataplane.run(lab, variants, rounds=cfg["rounds"], conn_seconds=cfg["conn_seconds"],
                        iperf_seconds=cfg["iperf_seconds"], tmpdir=tmpdir, log=log)
    keys = [v.key for v in variants]
    section, ratios = report.dataplane_section(res, "nofw", "naive" if "naive" in keys else None)
    rep.sections.append(section)
    top = "classify-max" if "classify-max" in ratios else None
    if top:
        r = ratios[top]
        rep.targets.append(Target("new conns/s at the maximum NSG vs no firewall", "≥ 0.90×",
                                  report.fmt_ratio(r["conn"]), r["conn"].median >= 0.9))
        rep.targets.append(Target("new conns/s at the maximum NSG vs naive", "≥ 5×",
                                  report.fmt_ratio(r["naive"]), r["naive"].median >= 5,
                                  "naive measured at the comparison size (200 rules × 50 prefixes); at the maximum "
                                  "size it cannot be loaded, and it only gets slower with more rules"))
        rep.targets.append(Target("TCP throughput vs no firewall", "≥ 0.95×",
                                  report.fmt_ratio(r["tcp"]), r["tcp"].median >= 0.95))
        summary = next(v for v in variants if v.key == top).info.get("summary", {})
        fb = [lv for lv in summary.get("levels", {}).values() if lv.get("fallback")]
        if fb:
            rep.findings.append(
                f"- **classify mode at the maximum size is not classified**: the compiler fell back to the "
                f"simple rendering for the inbound level ({fb[0]['fallback']}; limits MAX_LEVEL_ELEMENTS / "
                "MAX_LEVEL_WORK in agent/compiler/render.py). So the 'classify, maximum policy' row measures "
                "one nft rule per NSG rule with anonymous sets, whose per-packet cost grows with the rule count.")
    else:
        rep.targets += [Target("new conns/s at the maximum NSG", "≥ 0.9× no fw, ≥ 5× naive", "n/a", None),
                        Target("TCP throughput vs no firewall", "≥ 0.95×", "n/a", None)]


def run_fabric(lab, rep, max_gen, tmpdir, cfg, quick) -> None:
    from bench.stats import paired_ratio

    try:
        import agent.lab  # noqa: F401
    except ImportError:
        rep.not_measured.append("dataplane through the lab fabric: agent.lab is missing")
        return
    log("dataplane through the lab fabric")
    try:
        out = fabric.run(lab, max_gen, tmpdir, cfg["rounds"], cfg["conn_seconds"], log)
    except Exception as e:  # the lab is another component; report, keep going
        rep.not_measured.append(f"dataplane through the lab fabric: {e}")
        return
    rates = out["rates"]
    ratio = paired_ratio(rates["nsg"], rates["open"])
    lines = [
        "## Dataplane through the lab fabric", "",
        "`nsg-agent lab up` builds two labs from the maximum policy" + (" (quick size)" if quick else "")
        + " (the server NIC only, the client as an external host): one with the NSG on the NIC, one with it "
        "detached; the rules sit in the fabric namespace (fabric placement, forward hook). New TCP connections "
        f"from the client host to the NIC, {cfg['rounds']} interleaved rounds of {cfg['conn_seconds']:g} s; "
        "median (min–max).", "",
        "| lab | fabric ruleset | lab up s | new conns/s | × without NSG | connect p50 µs | connect p99 µs |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, label in (("open", "NSG detached"), ("nsg", "maximum NSG on the NIC")):
        r = out["rules"].get(k, {})
        lines.append(f"| {label} | {r.get('mode', '?')}: {r.get('rules', 0):,} rules, {r.get('set_elements', 0):,} elements "
                     f"| {out['up_seconds'].get(k, float('nan')):.1f} | {fmt_summary(summarize(rates[k]))} | "
                     f"{report.fmt_ratio(ratio) if k == 'nsg' else '1.00×'} | {fmt_summary(summarize(out['p50'][k]))} | "
                     f"{fmt_summary(summarize(out['p99'][k]))} |")
    if out["errors"]:
        lines += ["", "Problems:", ""] + [f"- {e}" for e in out["errors"][:10]]
    rep.sections.append("\n".join(lines))


def run_control(lab, rep, cmp_gen, max_gen, tmpdir, cfg, quick) -> None:
    try:
        import agent.nft  # noqa: F401
        from agent.compiler import compile_ruleset  # noqa: F401
    except ImportError as e:
        rep.not_measured.append(f"control plane: {e}")
        return
    log("control plane: compile + apply")
    rows = []
    cp: dict[str, control.Timings] = {}
    for gen, name, modes in ((cmp_gen, "comparison", ("classify", "simple")), (max_gen, "maximum", ("classify",))):
        for mode in modes:
            t = control.compile_apply(lab, gen, tmpdir / name, mode, cfg["reps"], log)
            cp[f"{mode}-{name}"] = t
            info = t.info["summary"]
            rows.append((f"{name}, {mode} ({info['rules']:,} rules, {info['set_elements']:,} elements)", t))
    section = [steps_table(
        "## Control plane: full table\n\nEach step in the agent's own code, in a throwaway namespace: "
        "load (parse + validate the file and its service tags), resolve (tags, ASGs), compile, "
        "check (libnftables dry run), replace (one transaction replacing the table). Replacing an "
        "existing table, median (min–max) over the repetitions:", rows, control.STEPS)]
    section.append("")
    section.append("First apply into an empty namespace: " + "; ".join(
        f"{k}: compile {t.info['first_apply']['compile'] * 1000:.0f} ms, check {t.info['first_apply']['check'] * 1000:.0f} ms, "
        f"replace {t.info['first_apply']['replace'] * 1000:.0f} ms" for k, t in cp.items()))
    rep.sections.append("\n".join(section))
    tmax = cp["classify-maximum"]
    tot = [tmax.steps["compile"][i] + tmax.steps["check"][i] + tmax.steps["replace"][i]
           for i in range(len(tmax.steps["compile"]))]
    end_to_end = [tot[i] + tmax.steps["load"][i] + tmax.steps["resolve"][i] for i in range(len(tot))]
    rep.targets.append(Target("compile + apply of the maximum NSG", "≤ 2 s",
                              f"{summarize(tot).median:.2f} s (with load + resolve: {summarize(end_to_end).median:.2f} s)",
                              summarize(tot).median <= 2.0))

    log("control plane: ASG and service-tag changes (rebuild and swap)")
    rows = []
    for kind in ("asg", "tag"):
        t = control.change(lab, max_gen, tmpdir, kind, "classify", cfg["change_reps"], log)
        rows.append((f"{kind}: {t.info['change']} ({t.info['distinct_tables']} distinct tables)", t))
        tot = [sum(t.steps[s][i] for s in ("compile", "check", "replace")) for i in range(len(t.steps["compile"]))]
        rep.targets.append(Target(f"{'ASG membership' if kind == 'asg' else 'service-tag file'} change at the maximum NSG",
                                  "≤ 100 ms", f"{summarize(tot).median * 1000:.0f} ms compile+apply "
                                  f"(with load + resolve: {summarize([a + b + c for a, b, c in zip(tot, t.steps['load'], t.steps['resolve'])]).median * 1000:.0f} ms)",
                                  summarize(tot).median <= 0.1))
    rep.sections.append(steps_table(
        "## Control plane: changes at the maximum policy\n\nA full rebuild and swap per change, classify mode; "
        "each repetition toggles the change so every apply really changes the table:", rows, control.STEPS))

    log("control plane: daemon, file save -> enforced")
    daemon_rows = []
    daemon_phase_rows: list[str] = []
    runs: dict[str, control.DaemonRun] = {}
    for gen, name, edits, idx in ((cmp_gen, "comparison", cfg["edits_cmp"], 20), (max_gen, "maximum", cfg["edits_max"], 21)):
        try:
            r = control.save_to_enforced(lab, gen, tmpdir, edits, idx, "classify", log)
        except Exception as e:  # the daemon may not exist yet
            rep.not_measured.append(f"file save → enforced ({name}): {e}")
            continue
        runs[name] = r
        lat = sorted(x * 1000 for x in r.latencies)
        daemon_rows.append(
            f"| {name} | {len(lat)}{f' (+{r.misses} not seen)' if r.misses else ''} | {fmt(percentile(lat, 0.5))} | "
            f"{fmt(percentile(lat, 0.99))} | {fmt(max(lat) if lat else None)} | "
            f"{fmt(r.startup_seconds, 1)} s | {fmt(r.vmhwm_kb / 1024 if r.vmhwm_kb else None, 1)} MiB | {(r.note or '')[:300]} |")
        ph = r.phases
        if ph.get("reconcile"):
            daemon_phase_rows.append(
                f"| {name} | " + " | ".join(fmt(summarize([x * 1000 for x in ph[k]]).median)
                                            for k in ("event", "to_reconcile", "reconcile", "to_probe")) + " |")
        log(f"  {name}: p50 {fmt(percentile(lat, 0.5))} ms, p99 {fmt(percentile(lat, 0.99))} ms, "
            f"VmHWM {fmt((r.vmhwm_kb or 0) / 1024, 1)} MiB {r.note}")
    if daemon_rows:
        rep.sections.append("\n".join([
            "## Daemon: file save → enforced, and peak memory", "",
            "`nsg-agent run --config F --netns nsgb-s… --mode classify` as a subprocess; each edit flips the verdict "
            "of TCP port 7100 (a priority-100 rule from the client, Allow ↔ Deny) by saving the file the way "
            "editors do (write a temporary file, rename it over the original). The latency runs from the rename to "
            "the moment a prober in the client namespace sees the new verdict with fresh connections (10 ms connect "
            "timeout: about 10 ms resolution; Deny = three timeouts in a row, timed from the first). Peak RSS is "
            "the daemon's VmHWM (/proc/PID/status) after the edits (the periodic resync ran several times).", "",
            "| policy | edits measured | p50 ms | p99 ms | max ms | startup to first apply | VmHWM | note |",
            "|---|---|---|---|---|---|---|---|", *daemon_rows,
            "", "Where each edit's latency goes (medians in ms, from the arrival times of the daemon's own log "
            "lines `config.changed`, `reconcile.start`, `config.applied`):", "",
            "| policy | save → file event | event → reconcile start (debounce, loop) | reconcile (load … replace, status) "
            "| config.applied logged → probe sees it (negative: enforced before the daemon logged it) |", "|---|---|---|---|---|", *daemon_phase_rows]))
    for name in ("comparison", "maximum"):
        r = runs.get(name)
        lat = sorted(r.latencies) if r else []
        rep.targets.append(Target(f"file save → enforced p99 ({name} policy)", "≤ 1 s",
                                  f"{percentile(lat, 0.99) * 1000:.0f} ms over {len(lat)} edits" if lat else "n/a",
                                  (percentile(lat, 0.99) <= 1.0 and not r.misses) if lat else None))
    r = runs.get("maximum")
    rep.targets.append(Target("agent peak RSS at the maximum policy", "≤ 150 MB",
                              f"{r.vmhwm_kb / 1024:.0f} MiB (VmHWM)" if r and r.vmhwm_kb else "n/a",
                              (r.vmhwm_kb / 1024 <= 150) if r and r.vmhwm_kb else None))

    missed = [t for t in rep.targets if t.met is False and ("compile" in t.name or "change" in t.name or "save" in t.name)]
    if missed:
        log("profiling load + resolve + compile at the maximum policy")
        prof, hot = control.profile_pipeline(max_gen, tmpdir, "classify")
        split = {s: summarize(tmax.steps[s]).median for s in control.STEPS}
        total = sum(split.values())
        rep.findings.append(
            "- **Rebuild at the maximum policy, where the time goes** (median seconds, classify mode): "
            + ", ".join(f"{s} {v:.2f} s ({100 * v / total:.0f}%)" for s, v in split.items())
            + f"; total {total:.2f} s. Every change (file edit, ASG membership, service tag) pays all of it, "
            "because the daemon rebuilds and swaps the whole table.")
        rep.findings.append("- **Hotspots** (cProfile of load + resolve + compile, the project's functions with "
                            "the most self time, stdlib ipaddress included): " + "; ".join(f"`{w}` {tt:.2f} s self / {ct:.2f} s cumulative"
                                                              for w, tt, ct in hot) + ".")
        rep.sections.append("## Profile: load + resolve + compile of the maximum policy (cProfile)\n\n"
                            "```\n" + prof + "\n```")
    del quick


if __name__ == "__main__":
    sys.exit(main())
