"""Flow logs with real packets (docs/flowlogs.md): the daemon's Azure-format tuples for
allowed flows (B ... E with counts, from conntrack) and denied ones (D, from NFLOG), each
with the deciding rule; the metrics of records written; a bounded flood of denied packets
that the kernel rate-limits and that never fills the directory past its bound; and the
lab's probe matrix, every cell of which leaves its tuples.

Network safety: the namespaces are ``nsgfl-*`` (host pair) and, for the lab, ``nsgfl-<lab>-*``
(NSG_AGENT_LAB_NETNS_PREFIX); all are removed afterwards whatever happened. Addresses are
10.88.0.0/16 for the VNet and 203.0.113.0/24 for "Internet" hosts; nothing touches the root
namespace (root_nft_guard). Conntrack timeouts are shortened only inside those namespaces,
so that ends (E) arrive within seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from host_helpers import NSG_AGENT, HostPair, echo, free_port, host_policy, make_host_pair, poll, run, scrape
from nsg_agent.compiler import flowmark
from nsg_agent.flowlogs import reader
from nsg_agent.flowlogs.format import parse_tuple
from nsg_agent.flowlogs.writer import log_files

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root_nft_guard")]

SRV, CLI_VNET, CLI_NET = "10.88.1.4", "10.88.1.5", "203.0.113.10"
SHORT_TIMEOUTS = {
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait": "1", "net.netfilter.nf_conntrack_tcp_timeout_close": "1",
    "net.netfilter.nf_conntrack_tcp_timeout_fin_wait": "1", "net.netfilter.nf_conntrack_tcp_timeout_last_ack": "1",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait": "1", "net.netfilter.nf_conntrack_udp_timeout": "1",
    "net.netfilter.nf_conntrack_udp_timeout_stream": "1", "net.netfilter.nf_conntrack_icmp_timeout": "1",
}


def shorten_timeouts(ns: str) -> None:
    for key, value in SHORT_TIMEOUTS.items():
        run("ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")


@contextlib.contextmanager
def flowlog_pair() -> Iterator[HostPair]:
    with make_host_pair("nsgfl", srv_addr=SRV, cli_vnet=CLI_VNET, cli_internet=CLI_NET) as pair:
        shorten_timeouts(pair.srv)
        yield pair


@pytest.fixture
def fl_pair() -> Iterator[HostPair]:
    with flowlog_pair() as pair:
        yield pair


def policy(pair: HostPair) -> str:
    """The host suite's policy (host_helpers.host_policy) on this pair's 10.88 plan."""
    return host_policy(pair)


def tuples(directory: Path) -> list:
    return reader.read(directory)


def flow(ts: list, src: str, sport: int | None, dst: str, dport: int | None, proto: int, direction: str) -> list:
    return [t for t in ts if t.src == src and t.dst == dst and t.protocol == proto and t.direction == direction
            and (sport is None or t.sport == sport) and (dport is None or t.dport == dport)]


def tcp_exchange(prober, src: str, dst: str, port: int, payload: bytes = b"x" * 1000) -> int | None:
    """Connect, send ``payload``, read the echo, close; the source port (None if refused)."""
    def go() -> int | None:
        with socket.socket() as s:
            s.settimeout(1.0)
            s.bind((src, 0))
            sport = s.getsockname()[1]
            try:
                s.connect((dst, port))
                s.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                return sport if got == payload else None
            except OSError:
                return -sport
    return prober.runner.call(go, timeout=10)


def test_host_mode_flow_tuples_states_counts_and_rules(fl_pair, echo_server, prober, agent_daemon, tmp_path):
    pair = fl_pair
    echo_server(pair.srv, [8080, 8081], [5353])
    echo_server(pair.cli, [8088, 9001], [])
    cli, srv = prober(pair.cli), prober(pair.srv)
    config = tmp_path / "desired-state.yaml"
    config.write_text(policy(pair))
    logs = tmp_path / "flowlogs"
    port = free_port()
    agent = agent_daemon(config, pair.srv, "--flow-logs", str(logs), "--flow-logs-flush", "0.3",
                         "--flow-logs-interval", "1", "--metrics", f"127.0.0.1:{port}")
    agent.wait_for("agent.ready")
    assert run("ip", "netns", "exec", pair.srv, "sysctl", "-n", "net.netfilter.nf_conntrack_acct").stdout.strip() == "1"
    before = scrape(port)

    allowed = tcp_exchange(cli, CLI_NET, SRV, 8080)  # UserRule_web
    assert allowed and allowed > 0
    denied_user = tcp_exchange(cli, CLI_VNET, SRV, 8081)  # UserRule_deny-8081
    denied_default = tcp_exchange(cli, CLI_NET, SRV, 8088)  # DefaultRule_DenyAllInBound
    assert denied_user < 0 and denied_default < 0
    assert cli.udp(CLI_NET, SRV, 5353)  # UserRule_dns-udp
    assert cli.icmp(CLI_VNET, SRV)  # DefaultRule_AllowVnetInBound
    outbound = tcp_exchange(srv, SRV, CLI_VNET, 8088)  # DefaultRule_AllowVnetOutBound
    assert outbound and outbound > 0
    denied_out = tcp_exchange(srv, SRV, CLI_NET, 9001)  # UserRule_deny-9001
    assert denied_out < 0
    # a long-lived connection: continuing tuples (C) every interval (1 s here) with the counts
    # since the previous tuple, then E with the rest
    long = cli.open_tcp(CLI_NET, SRV, 8080)
    long_port = long.getsockname()[1]
    for _ in range(3):
        assert echo(long)
        time.sleep(1.3)
    long.close()

    def settled():
        ts = tuples(logs)
        ends = [t for t in ts if t.state == "E"]
        return ts if len(ends) >= 5 and len([t for t in ts if t.state == "D"]) >= 3 else None
    assert poll(lambda: settled() is not None, timeout=30) is not None, \
        f"tuples so far: {tuples(logs)}\n{agent.log_path.read_text()[-3000:]}"
    time.sleep(1.5)  # the last ends
    ts = tuples(logs)
    acls = reader.acls_of(logs)

    def rule_of(t):
        return acls.get(t.acl), t.rule

    # allowed TCP: B first, then E (maybe C in between), counts within a tolerance
    tcp = flow(ts, CLI_NET, allowed, SRV, 8080, 6, "I")
    states = [t.state for t in tcp]
    assert states[0] == "B" and states[-1] == "E" and set(states) <= {"B", "C", "E"}, states
    assert {rule_of(t) for t in tcp} == {("srv-nsg", "UserRule_web")}
    assert all(t.nic == "srv" for t in tcp)
    b = tcp[0]
    assert (b.packets_s2d, b.bytes_s2d, b.packets_d2s, b.bytes_d2s) == (0, 0, 0, 0)
    p_s2d = sum(t.packets_s2d for t in tcp)
    p_d2s = sum(t.packets_d2s for t in tcp)
    b_s2d = sum(t.bytes_s2d for t in tcp)
    b_d2s = sum(t.bytes_d2s for t in tcp)
    # SYN, ACK, data, FIN, ACK (+ a few) each way; 1000 bytes of payload plus headers each way
    assert 4 <= p_s2d <= 12 and 3 <= p_d2s <= 12, (p_s2d, p_d2s)
    assert 1000 + 40 * 4 <= b_s2d <= 1000 + 80 * 12 and 1000 + 40 * 3 <= b_d2s <= 1000 + 80 * 12, (b_s2d, b_d2s)

    for src, sport, dst, dport, direction, rule in (
            (CLI_VNET, -denied_user, SRV, 8081, "I", ("srv-nsg", "UserRule_deny-8081")),
            (CLI_NET, -denied_default, SRV, 8088, "I", ("srv-nsg", "DefaultRule_DenyAllInBound")),
            (SRV, -denied_out, CLI_NET, 9001, "O", ("srv-nsg", "UserRule_deny-9001"))):
        d = flow(ts, src, sport, dst, dport, 6, direction)
        assert d and {t.state for t in d} == {"D"}, (src, dport, d)
        assert {rule_of(t) for t in d} == {rule}
        assert all((t.packets_s2d, t.bytes_s2d, t.packets_d2s, t.bytes_d2s) == (0, 0, 0, 0) for t in d)

    kept = flow(ts, CLI_NET, long_port, SRV, 8080, 6, "I")
    states = [t.state for t in kept]
    assert states[0] == "B" and states[-1] == "E" and states.count("C") >= 2, states
    assert all(t.packets_s2d + t.packets_d2s > 0 for t in kept if t.state == "C")
    # 3 x 4 bytes each way, in packets that each carry 40+ bytes of headers
    assert 8 <= sum(t.packets_s2d for t in kept) <= 16 and 6 <= sum(t.packets_d2s for t in kept) <= 16
    assert sum(t.bytes_s2d for t in kept) >= 12 + 40 * 8

    udp = flow(ts, CLI_NET, None, SRV, 5353, 17, "I")
    assert [t.state for t in udp][0] == "B" and udp[-1].state == "E", udp
    assert {rule_of(t) for t in udp} == {("srv-nsg", "UserRule_dns-udp")}
    assert sum(t.packets_s2d for t in udp) == 1 and sum(t.packets_d2s for t in udp) == 1
    icmp = flow(ts, CLI_VNET, None, SRV, None, 1, "I")
    assert icmp and icmp[0].state == "B" and icmp[-1].state == "E", icmp
    assert {rule_of(t) for t in icmp} == {("srv-nsg", "DefaultRule_AllowVnetInBound")}
    out = flow(ts, SRV, outbound, CLI_VNET, 8088, 6, "O")
    assert out[0].state == "B" and out[-1].state == "E"
    assert {rule_of(t) for t in out} == {("srv-nsg", "DefaultRule_AllowVnetOutBound")}

    # the files are Azure's layout and shape, and the MAC is the interface's
    files = log_files(logs)
    assert files and all(re.search(r"/y=\d{4}/m=\d\d/d=\d\d/h=\d\d/m=00/macAddress=[0-9A-F]{12}/PT1H.json$", str(f))
                         for f in files)
    mac = json.loads(run("ip", "-n", pair.srv, "-j", "link", "show", "dev", pair.srv_if).stdout)[0]["address"]
    doc = json.loads(files[0].read_text())
    assert doc["records"][0]["macAddress"] == mac.replace(":", "").upper()
    for rec in doc["records"]:
        for f in rec["flowRecords"]["flows"]:
            for g in f["flowGroups"]:
                for text in g["flowTuples"]:
                    parse_tuple(text)

    # the metrics of tuples written rose by what was written
    after = scrape(port)
    for state in ("B", "E", "D"):
        key = ("nsg_agent_flowlog_tuples_written_total", (("state", state),))
        assert after[key] - before.get(key, 0) >= sum(1 for t in ts if t.state == state), state
    assert after[("nsg_agent_flowlog_records_written_total", ())] >= 1

    # the CLI answers "what was denied, by which rule, from where"
    r = run(NSG_AGENT, "flows", "--dir", str(logs), "--denied", "--since", "1h", timeout=30)
    assert r.returncode == 0, r.stderr
    assert "srv-nsg: UserRule_deny-8081" in r.stdout and f"{CLI_VNET}:{-denied_user} -> {SRV}:8081" in r.stdout
    assert "srv-nsg: UserRule_web" not in r.stdout
    r = run(NSG_AGENT, "flows", "--dir", str(logs), "--nic", "srv", "--json", timeout=30)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert any(x["rule"] == "UserRule_web" and x["state"] == "E" and x["nsg"] == "srv-nsg" for x in rows)


def test_denied_flood_is_rate_limited_and_bounded_on_disk(fl_pair, prober, agent_daemon, tmp_path):
    """3,000 denied UDP packets in about 1.5 s (then the sender stops): the kernel logs at most
    burst + rate x time of them, and the directory stays under its 4 KiB bound (the tuples
    that do not fit are dropped and counted)."""
    pair = fl_pair
    cli = prober(pair.cli)
    config = tmp_path / "desired-state.yaml"
    config.write_text(policy(pair))
    logs = tmp_path / "flowlogs"
    port = free_port()
    bound = 4096
    agent = agent_daemon(config, pair.srv, "--flow-logs", str(logs), "--flow-logs-flush", "0.2",
                         "--flow-logs-max-size", str(bound), "--metrics", f"127.0.0.1:{port}")
    agent.wait_for("agent.ready")

    def flood() -> float:
        start = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((CLI_NET, 0))
            for i in range(3000):
                s.sendto(b"flood", (SRV, 7000 + i % 500))  # DefaultRule_DenyAllInBound
                if i % 100 == 99:
                    time.sleep(0.05)
                if time.monotonic() - start > 5:
                    break
        return time.monotonic() - start
    seconds = cli.runner.call(flood, timeout=30)
    sizes = []
    for _ in range(10):
        time.sleep(0.2)
        sizes.append(sum(f.stat().st_size for f in log_files(logs)))
    m = scrape(port)
    written = m[("nsg_agent_flowlog_tuples_written_total", (("state", "D"),))]
    dropped_disk = m[("nsg_agent_flowlog_tuples_dropped_total", (("reason", "disk"),))]
    logged = written + dropped_disk + m[("nsg_agent_flowlog_tuples_dropped_total", (("reason", "queue"),))]
    limit = flowmark.LOG_BURST + flowmark.LOG_RATE * (seconds + 1)
    assert 1 <= logged <= limit, (logged, limit, seconds)
    assert max(sizes) <= bound, sizes
    assert dropped_disk > 0, ("a 4 KiB bound must have refused some tuples", logged, sizes)
    # the kernel dropped every flood packet (counters) though only a few were logged
    r = run("ip", "netns", "exec", pair.srv, "nft", "-j", "list", "table", "inet", "nsg_agent")
    drops = sum(e["counter"]["packets"] for item in json.loads(r.stdout)["nftables"] if "rule" in item
                for e in item["rule"]["expr"] if "counter" in e and isinstance(e["counter"], dict)
                and item["rule"].get("comment") == "srv-nsg: DefaultRule_DenyAllInBound")
    assert drops >= 2900, drops
    print(f"flood: {drops} packets dropped in {seconds:.2f} s, {int(logged)} logged (limit {limit:.0f}), "
          f"{int(written)} written, {int(dropped_disk)} refused by the {bound}-byte bound, max size {max(sizes)}")


# --- the lab ---------------------------------------------------------------------------------

LAB = """\
virtualNetworks:
  - name: flv
    addressSpace: [10.88.0.0/16]
    subnets:
      - {name: web, addressPrefix: 10.88.1.0/24, networkSecurityGroup: web-subnet-nsg}
      - {name: app, addressPrefix: 10.88.2.0/24}
networkInterfaces:
  - {name: web1, subnet: flv/web, ipAddresses: [10.88.1.4], networkSecurityGroup: web-nic-nsg}
  - {name: app1, subnet: flv/app, ipAddresses: [10.88.2.4], networkSecurityGroup: app-nic-nsg}
  - {name: app2, subnet: flv/app, ipAddresses: [10.88.2.5], networkSecurityGroup: app-nic-nsg}
networkSecurityGroups:
  - name: web-subnet-nsg
    securityRules:
      - {name: allow-http, priority: 100, direction: Inbound, access: Allow, protocol: Tcp,
         sourceAddressPrefix: Internet, sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "80"}
  - name: web-nic-nsg
    securityRules:
      - {name: allow-http-nic, priority: 100, direction: Inbound, access: Allow, protocol: Tcp,
         sourceAddressPrefix: "*", sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "80"}
  - name: app-nic-nsg
    securityRules:
      - {name: deny-from-app1, priority: 100, direction: Inbound, access: Deny, protocol: "*",
         sourceAddressPrefix: 10.88.2.4, sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: "*"}
lab:
  externalHosts:
    - {name: client, address: 203.0.113.10}
"""

_SIDE = re.compile(r"\((?:[a-z]+, )?(inbound|outbound) at ([^)]+)\): (\S+)$")


@pytest.fixture
def fl_lab_prefix(monkeypatch):
    """Labs of this module live in nsgfl-<lab>-* namespaces (and so do their daemons)."""
    from nsg_agent.lab import naming

    monkeypatch.setattr(naming, "NETNS_PREFIX", "nsgfl-")
    monkeypatch.setenv("NSG_AGENT_LAB_NETNS_PREFIX", "nsgfl-")


def test_lab_probe_matrix_leaves_its_flow_tuples(fl_lab_prefix, make_lab, tmp_path):
    from host_helpers import stop_process
    from nsg_agent.lab import build, naming

    lab = make_lab("fl", LAB)
    assert lab.plan.fabric.startswith("nsgfl-")
    shorten_timeouts(lab.plan.fabric)
    logs = tmp_path / "labflows"
    log = open(tmp_path / "lab-run.log", "w")
    proc = subprocess.Popen([NSG_AGENT, "lab", "run", str(lab.file), "--name", lab.name, "--resync", "1",
                             "--flow-logs", str(logs), "--flow-logs-flush", "0.3", "--flow-logs-interval", "1"],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=os.environ.copy())
    log.close()
    try:
        assert poll(lambda: "agent.ready" in (tmp_path / "lab-run.log").read_text(), timeout=30), \
            (tmp_path / "lab-run.log").read_text()[-3000:]
        results = []
        names = [n.name for n in lab.plan.nics] + [h.name for h in lab.plan.hosts]
        # pair by pair, paced, so that no deny rule exceeds its log burst (10/s, burst 20)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                report = lab.probe(only=[a, b])
                results += report.results
                time.sleep(2.0)
        assert results and all(r.match for r in results), [r.as_dict() for r in results if not r.match]

        def settled():
            ts = tuples(logs)
            return ts if len([t for t in ts if t.state == "E"]) >= 10 else None
        poll(lambda: settled() is not None, timeout=30)
        time.sleep(4)  # the last ends
        ts = tuples(logs)
        acls = reader.acls_of(logs)
        checked = {"D": 0, "BE": 0}
        for r in results:
            c = r.cell
            if c.service.protocol not in ("tcp", "udp") or r.source_port is None:
                continue
            proto = 6 if c.service.protocol == "tcp" else 17
            mine = [t for t in ts if t.src == c.source.address and t.dst == c.destination.address
                    and t.protocol == proto and t.sport == r.source_port and t.dport == c.service.port]
            side = _SIDE.search(r.predicted.reason)
            if not r.predicted.allowed:
                assert mine and {t.state for t in mine} == {"D"}, r.as_dict()
                if side:
                    direction, nic, rule = side.groups()
                    assert any(t.rule == rule and t.nic == nic and t.direction == direction[0].upper()
                               for t in mine), (r.as_dict(), mine)
                checked["D"] += 1
            else:
                for letter in {t.direction for t in mine} or {"?"}:
                    states = [t.state for t in mine if t.direction == letter]
                    assert states and states[0] == "B" and states[-1] == "E", (r.as_dict(), mine)
                    ends = [t for t in mine if t.direction == letter and t.state in ("C", "E")]
                    assert sum(t.packets_s2d for t in ends) >= 1 and sum(t.packets_d2s for t in ends) >= 1
                    assert sum(t.packets_s2d for t in ends) <= 12
                assert all(acls.get(t.acl) for t in mine)
                if side:
                    direction, nic, rule = side.groups()
                    assert any(t.rule == rule and t.nic == nic for t in mine), (r.as_dict(), mine)
                checked["BE"] += 1
        assert checked["D"] >= 5 and checked["BE"] >= 5, checked
        out = run(NSG_AGENT, "lab", "flows", "--name", lab.name, "--dir", str(logs), "--denied", timeout=30)
        assert "app-nic-nsg: UserRule_deny-from-app1" in out.stdout, out.stdout[-2000:]
    finally:
        stop_process(proc)
        build.destroy(lab.name)
        assert not [ns for ns in run("ip", "netns", "list").stdout.split() if ns.startswith(naming.fabric_netns(lab.name)[:-3])]
