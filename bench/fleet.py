"""python -m bench.fleet: the fleet benchmark (issue 15), written into docs/fleet.md.

Publish -> enforced on every host, p50/p99, with 1, 10 and 50 simulated hosts (one agent
process per host namespace, one real etcd on 127.0.0.1), etcd's costs per publish (from its
own /metrics: bytes sent and received, puts, ranges, watchers), and the ratio against the
same change made by a single host reading a file (its agent in one namespace, the file
replaced by rename). Every publish is an ASG membership change that every host's rules
reference, so every host must recompile and apply it.

Needs root. Everything runs in ``nsgfe-`` namespaces (integration/fleet_fixtures.py), removed
at the end, also on failure or Ctrl-C. Not a test: nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import machine
from bench.stats import percentile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "integration"))
DOC = ROOT / "docs" / "fleet.md"
START, END = "<!-- bench-fleet:start -->", "<!-- bench-fleet:end -->"


def log(msg: str) -> None:
    print(msg, flush=True)


def state_text(n_hosts: int, probe_in_web: bool) -> str:
    from fleet_fixtures import CLIENT_VNET, host_addr

    nics = "\n".join(
        f"  - {{name: h{i}-nic, host: h{i}, interface: eth0, subnet: fleet/hosts, ipAddresses: [{host_addr(i)}], "
        f"networkSecurityGroup: host-nsg, applicationSecurityGroups: [Hosts]}}" for i in range(1, n_hosts + 1))
    return f"""\
virtualNetworks:
  - name: fleet
    addressSpace: [10.77.0.0/16]
    subnets:
      - {{name: hosts, addressPrefix: 10.77.1.0/24}}
applicationSecurityGroups: [{{name: Web}}, {{name: Hosts}}]
networkInterfaces:
{nics}
  - {{name: probe, subnet: fleet/hosts, ipAddresses: [{CLIENT_VNET}], applicationSecurityGroups: {"[Web]" if probe_in_web else "[]"}}}
networkSecurityGroups:
  - name: host-nsg
    securityRules:
      - {{name: db-from-web, priority: 100, direction: Inbound, access: Allow, protocol: Tcp,
          sourceApplicationSecurityGroups: [Web], sourcePortRange: '*', destinationAddressPrefix: '*',
          destinationPortRange: '5432'}}
      - {{name: web-from-internet, priority: 110, direction: Inbound, access: Allow, protocol: Tcp,
          sourceAddressPrefix: Internet, sourcePortRange: '*', destinationApplicationSecurityGroups: [Hosts],
          destinationPortRange: '8080'}}
      - {{name: no-vnet-db, priority: 200, direction: Inbound, access: Deny, protocol: Tcp,
          sourceAddressPrefix: VirtualNetwork, sourcePortRange: '*', destinationAddressPrefix: '*',
          destinationPortRange: '5432'}}
"""


def encode(tmp: Path, text: str) -> dict[str, bytes]:
    from nsg_agent.desired import loader
    from nsg_agent.sources import fleetstate as fs

    p = tmp / f"s{abs(hash(text))}.yaml"
    p.write_text(text)
    return fs.encode(loader.load(p), lambda x: Path(x).read_bytes())


METRICS = ("etcd_network_client_grpc_sent_bytes_total", "etcd_network_client_grpc_received_bytes_total",
           "etcd_mvcc_put_total", "etcd_mvcc_range_total", "etcd_mvcc_txn_total",
           "etcd_debugging_mvcc_watcher_total", "etcd_mvcc_db_total_size_in_bytes", "etcd_debugging_mvcc_keys_total")


def etcd_metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    out = {}
    for name in METRICS:
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


class Watcher:
    """Reads each host's status file (only when its mtime moved) for the revision enforced."""

    def __init__(self, fleet):
        self.fleet = fleet
        self.mtimes: dict[str, float] = {}
        self.revs: dict[str, int | None] = {}

    def poll(self) -> dict[str, int | None]:
        for h in self.fleet.hosts:
            p = self.fleet.state_dir / self.fleet.ns[h] / "status.json"
            try:
                m = p.stat().st_mtime_ns
            except OSError:
                continue
            if self.mtimes.get(h) != m:
                self.mtimes[h] = m
                try:
                    self.revs[h] = (json.loads(p.read_text()).get("commit") or {}).get("revision")
                except ValueError:
                    self.mtimes.pop(h, None)
        return self.revs


def wait_all(w: Watcher, hosts: list[str], rev: int, t0: float, timeout: float) -> dict[str, float]:
    seen: dict[str, float] = {}
    deadline = time.perf_counter() + timeout
    while len(seen) < len(hosts) and time.perf_counter() < deadline:
        revs = w.poll()
        now = time.perf_counter()
        for h in hosts:
            if h not in seen and (revs.get(h) or 0) >= rev:
                seen[h] = now - t0
        time.sleep(0.003)
    return seen


def run_fleet(n: int, publishes: int, tmp: Path) -> dict:
    from fleet_fixtures import make_fleet
    from nsg_agent.sources import etcd as etcd_mod

    states = [encode(tmp, state_text(n, False)), encode(tmp, state_text(n, True))]
    with make_fleet(n, tcp_ports=(), tmp=tmp / f"fleet{n}") as fleet:
        client = fleet.client()
        try:
            rev = etcd_mod.publish(client, states[0]).revision
            t = time.perf_counter()
            for h in fleet.hosts:
                # the daemon's defaults, not the fixture's fast test settings
                fleet.start_agent(h, "--log-level", "info", "--resync", "5", "--debounce", "0.15",
                                  "--report-ttl", "10")
            w = Watcher(fleet)
            seen = wait_all(w, fleet.hosts, rev, t, 180)
            log(f"  {n} agents started and enforcing revision {rev} in {time.perf_counter() - t:.1f} s "
                f"({len(seen)}/{n})")
            time.sleep(2.0)
            idle0, i0 = etcd_metrics(fleet.etcd.url), time.perf_counter()
            time.sleep(3.0)
            idle1, i1 = etcd_metrics(fleet.etcd.url), time.perf_counter()
            idle_rate = {k: (idle1[k] - idle0[k]) / (i1 - i0) for k in METRICS}
            lat_all, lat_first, txn, missing = [], [], [], 0
            cpu0 = agent_cpu(fleet)
            m0, p0 = etcd_metrics(fleet.etcd.url), time.perf_counter()
            put_bytes = 0
            for k in range(publishes):
                keys = states[(k + 1) % 2]
                t0 = time.perf_counter()
                res = etcd_mod.publish(client, keys)
                txn.append(time.perf_counter() - t0)
                put_bytes += res.bytes_written
                seen = wait_all(w, fleet.hosts, res.revision, t0, 30)
                if len(seen) < n:
                    missing += n - len(seen)
                else:
                    lat_all.append(max(seen.values()))
                    lat_first.append(min(seen.values()))
                time.sleep(0.3)
            m1, p1 = etcd_metrics(fleet.etcd.url), time.perf_counter()
            cpu1 = agent_cpu(fleet)
            cpu = sorted((cpu1[h] - cpu0[h]) / publishes for h in cpu0 if h in cpu1)
            per = {k: ((m1[k] - m0[k]) - idle_rate[k] * (p1 - p0)) / publishes for k in METRICS}
            rss = agent_rss(fleet)
        finally:
            client.close()
    return {"hosts": n, "publishes": publishes, "all": lat_all, "first": lat_first, "txn": txn,
            "missing": missing, "per_publish": per, "put_bytes": put_bytes / publishes,
            "watchers": m1["etcd_debugging_mvcc_watcher_total"], "keys": m1["etcd_debugging_mvcc_keys_total"],
            "state_bytes": sum(len(v) for v in states[0].values()), "state_keys": len(states[0]),
            "idle_rate": idle_rate, "rss_mib": rss, "cpu_s": cpu[len(cpu) // 2] if cpu else 0.0}


def agent_cpu(fleet) -> dict[str, float]:
    """CPU seconds (user + system) each agent process has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for h, a in fleet.agents.items():
        try:
            fields = Path(f"/proc/{a.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[h] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return out


def agent_rss(fleet) -> float:
    vals = []
    for a in fleet.agents.values():
        try:
            for line in Path(f"/proc/{a.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    vals.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return sorted(vals)[len(vals) // 2] if vals else 0.0


def run_file(edits: int, tmp: Path) -> dict:
    """The baseline: one host, its agent reading a file; the same ASG change as an edit."""
    from fleet_fixtures import make_fleet
    from host_helpers import AgentProcess, stop_process

    with make_fleet(1, tcp_ports=(), start_etcd=False, tmp=tmp / "file") as fleet:
        config = fleet.tmp / "etc" / "state.yaml"
        config.parent.mkdir(parents=True)
        texts = [state_text(1, False), state_text(1, True)]
        config.write_text(texts[0])
        log_path = fleet.tmp / "file-agent.log"
        with open(log_path, "w") as logf:
            proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "nsg-agent"), "run", "--config", str(config),
                                     "--netns", fleet.ns["h1"], "--state-dir", str(fleet.state_dir),
                                     "--log-format", "json"], stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        agent = AgentProcess(proc, log_path)
        try:
            agent.wait_for("agent.ready", timeout=60)
            status = fleet.state_dir / fleet.ns["h1"] / "status.json"
            import hashlib

            lat = []
            time.sleep(1.0)
            for k in range(edits):
                text = texts[(k + 1) % 2]
                want = hashlib.sha256(text.encode()).hexdigest()
                tmpf = config.with_name(".state.yaml.tmp")
                tmpf.write_text(text)
                t0 = time.perf_counter()
                os.replace(tmpf, config)
                while time.perf_counter() - t0 < 30:
                    try:
                        if (json.loads(status.read_text()).get("commit") or {}).get("sha256") == want:
                            break
                    except (OSError, ValueError):
                        pass
                    time.sleep(0.003)
                lat.append(time.perf_counter() - t0)
                time.sleep(0.3)
        finally:
            stop_process(proc)
    return {"edits": edits, "lat": lat}


def scale_state(hosts: int, nsgs: int, asgs: int, nics_per: int = 2) -> dict:
    """A fleet of ``hosts`` with ``nics_per`` NICs each in 20 subnets, ``nsgs`` NSGs of 10 rules
    that each name an ASG, ``asgs`` ASGs (every NIC in one)."""
    nics = []
    for h in range(hosts):
        for k in range(nics_per):
            i = h * nics_per + k
            nics.append({"name": f"n{i}", "host": f"h{h}", "interface": f"eth{k}", "subnet": f"v/s{i % 20}",
                         "ipAddresses": [f"10.{80 + i % 20}.{(i // 20) // 250}.{(i // 20) % 250 + 4}"],
                         "networkSecurityGroup": f"nsg{i % nsgs}", "applicationSecurityGroups": [f"asg{i % asgs}"]})

    def rules(g: int) -> list[dict]:
        return [{"name": f"r{j}", "priority": 100 + j, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                 "sourceApplicationSecurityGroups": [f"asg{(g + j) % asgs}"], "sourcePortRange": "*",
                 "destinationAddressPrefix": "*", "destinationPortRange": str(1000 + j)} for j in range(10)]

    return {"virtualNetworks": [{"name": "v", "addressSpace": ["10.0.0.0/8"], "subnets": [
                {"name": f"s{j}", "addressPrefix": f"10.{80 + j}.0.0/16"} for j in range(20)]}],
            "applicationSecurityGroups": [{"name": f"asg{j}"} for j in range(asgs)],
            "networkSecurityGroups": [{"name": f"nsg{g}", "securityRules": rules(g)} for g in range(nsgs)],
            "networkInterfaces": nics}


def measure_scale(tmp: Path) -> list[dict]:
    """What one agent's read costs at 50, 1,000 and 10,000 hosts (no etcd: the keys a publish
    would write, handed to EtcdSource as its watch would): the whole state validated, this
    host's part cut and loaded. Also the keys and bytes a first publish writes."""
    from types import SimpleNamespace

    from nsg_agent.desired import loader
    from nsg_agent.logging import configure
    from nsg_agent.sources import etcd as etcd_mod
    from nsg_agent.sources import fleetstate as fs

    configure("error")
    out = []
    for hosts, nsgs, asgs in ((50, 50, 100), (1000, 50, 100), (10000, 500, 1000)):
        d = tmp / f"scale{hosts}"
        d.mkdir()
        p = d / "state.json"
        p.write_text(json.dumps(scale_state(hosts, nsgs, asgs)))
        t = time.perf_counter()
        keys = fs.encode(loader.load(p), lambda x: Path(x).read_bytes())
        publisher = time.perf_counter() - t
        keys[fs.PUBLISHED] = fs.canonical({"sha256": fs.state_digest(keys), "at": time.time()})
        fake = SimpleNamespace(config=etcd_mod.EtcdConfig.parse("http://127.0.0.1:1", "/bench/"))
        src = etcd_mod.EtcdSource(fake, "h7", d / "cache")  # type: ignore[arg-type]
        src._snapshot(keys, 2, time.time())
        changed = dict(keys)
        a = json.loads(changed["state/asgs/asg3"])
        a["members"] = a["members"][:-1]
        changed["state/asgs/asg3"] = fs.canonical(a)
        changed[fs.PUBLISHED] = fs.canonical({"sha256": fs.state_digest(changed), "at": time.time()})
        t = time.perf_counter()
        src._snapshot(changed, 3, time.time())
        read = time.perf_counter() - t
        out.append({"hosts": hosts, "nics": hosts * 2, "nsgs": nsgs, "asgs": asgs, "keys": len(keys),
                    "bytes": sum(len(v) for v in keys.values()), "publisher_s": publisher, "agent_read_s": read})
        log(f"  {hosts} hosts: {len(keys)} keys, agent read {read * 1000:.0f} ms")
    return out


def ms(x: float) -> str:
    return f"{x * 1000:,.0f}"


def render(results: list[dict], base: dict, rec: dict, started: str, took: float, command: str,
           scale: list[dict] | None = None) -> str:
    b50 = percentile(base["lat"], 0.5)
    lines = [f"Written by the benchmark itself: `{command}` (started {started} UTC, took {took / 60:.1f} min). "
             "Not a test: nothing asserts a timing. Every publish is an ASG membership change that every "
             "host's rules reference (every agent recompiles and applies it), published in-process "
             "(no CLI start-up in the figures); 'enforced' is the moment the host's status file records the "
             "revision as committed to its kernel.", "",
             "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rec.items()]
    lines += ["", "| hosts | publishes | all hosts enforced p50 ms | p99 ms | first host p50 ms | "
              "etcd txn p50 ms | × a single host reading a file (p50) | agent CPU ms per publish (median) | "
              "agent RSS MiB (median) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        a = r["all"]
        missed = f" ({r['missing']} host-publishes missed)" if r["missing"] else ""
        lines.append(f"| {r['hosts']} | {r['publishes']}{missed} | "
                     f"{ms(percentile(a, 0.5))} | {ms(percentile(a, 0.99))} | {ms(percentile(r['first'], 0.5))} | "
                     f"{ms(percentile(r['txn'], 0.5))} | {percentile(a, 0.5) / b50:.2f}× | {r['cpu_s'] * 1000:.0f} | {r['rss_mib']:.0f} |")
    lines.append(f"| file (1 host) | {base['edits']} | {ms(b50)} | {ms(percentile(base['lat'], 0.99))} | — | — | 1.00× | — | — |")
    lines += ["", "etcd's side, per publish (its /metrics; the agents' idle traffic, lease keep-alives and "
              "reports, measured for 3 s before and subtracted):", "",
              "| hosts | state keys / bytes | txn bytes written | watchers | bytes sent by etcd | "
              "bytes received | puts | ranges |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r["per_publish"]
        lines.append(f"| {r['hosts']} | {r['state_keys']} / {r['state_bytes']:,} | {r['put_bytes']:,.0f} | "
                     f"{r['watchers']:.0f} | {p['etcd_network_client_grpc_sent_bytes_total']:,.0f} | "
                     f"{p['etcd_network_client_grpc_received_bytes_total']:,.0f} | {p['etcd_mvcc_put_total']:.1f} | "
                     f"{p['etcd_mvcc_range_total']:.1f} |")
    idle = results[-1]["idle_rate"]
    lines += ["", f"Idle, with {results[-1]['hosts']} agents: etcd sends "
              f"{idle['etcd_network_client_grpc_sent_bytes_total']:,.0f} B/s and receives "
              f"{idle['etcd_network_client_grpc_received_bytes_total']:,.0f} B/s "
              f"({idle['etcd_mvcc_put_total']:.1f} puts/s: reports rewritten only when they change; "
              "keep-alives every ttl/3)."]
    if scale:
        lines += ["", "One agent's read at larger fleets (no etcd: the keys a publish writes, handed to the "
                  "agent's source as its watch would; after an ASG change: the whole state validated like a "
                  "file, this host's part cut and loaded; 2 NICs per host, NSGs of 10 rules naming ASGs):", "",
                  "| hosts | NICs / NSGs / ASGs | state keys | state bytes | publisher: load + encode ms | "
                  "agent read after an ASG change ms |", "|---|---|---|---|---|---|"]
        for r in scale:
            lines.append(f"| {r['hosts']:,} | {r['nics']:,} / {r['nsgs']} / {r['asgs']:,} | {r['keys']:,} | "
                         f"{r['bytes']:,} | {ms(r['publisher_s'])} | {ms(r['agent_read_s'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fleet")
    ap.add_argument("--hosts", default="1,10,50")
    ap.add_argument("--publishes", type=int, default=20)
    ap.add_argument("--no-doc", action="store_true", help="print only, do not rewrite docs/fleet.md")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench.fleet needs root (network namespaces)", file=sys.stderr)
        return 3
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t_start = time.perf_counter()
    rec = machine.record()
    rec["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results = []
    with tempfile.TemporaryDirectory(prefix="nsgfe-bench-") as d:
        tmp = Path(d)
        log("baseline: one host reading a file")
        base = run_file(args.publishes, tmp)
        log(f"  p50 {ms(percentile(base['lat'], 0.5))} ms")
        for n in [int(x) for x in args.hosts.split(",")]:
            log(f"fleet: {n} hosts")
            r = run_fleet(n, args.publishes, tmp)
            results.append(r)
            log(f"  all hosts p50 {ms(percentile(r['all'], 0.5))} ms, p99 {ms(percentile(r['all'], 0.99))} ms")
        log("one agent's read at 50, 1,000 and 10,000 hosts")
        scale = measure_scale(tmp)
    rec["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rec["etcd"] = subprocess.run(["/usr/bin/etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    text = render(results, base, rec, started, time.perf_counter() - t_start,
                  os.environ.get("NSG_BENCH_COMMAND", "python -m bench.fleet"), scale)
    print(text)
    if not args.no_doc and DOC.exists():
        doc = DOC.read_text()
        if START in doc and END in doc:
            head, rest = doc.split(START, 1)
            _, tail = rest.split(END, 1)
            DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}")
            log(f"written to {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
