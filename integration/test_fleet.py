"""The fleet (issue 15), with a real etcd and real packets: three hosts, each an agent
(``nsg-agent run --etcd URL --host hN --netns nsgfe-...``) enforcing its own NIC.

The tests share one fleet (module scope) and run in order: each leaves the fleet enforcing a
known published state for the next.

  h1  10.77.1.11  ASG Web   web-nsg:   Internet -> tcp/8080 allowed
  h2  10.77.1.12  ASG Db    db-nsg:    ASG Web -> tcp/5432 allowed, the rest of the VNet denied
  h3  10.77.1.13  (none)    other-nsg: VirtualNetwork -> tcp/8080 denied (no ASG named)
  client 10.77.1.99 (NIC "probe", no host: enforced nowhere, an ASG member when listed)
"""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest

from fleet_fixtures import CLIENT_INTERNET, CLIENT_VNET, Fleet
from host_helpers import poll

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root_nft_guard")]

BOUND = 10.0


def state(fleet: Fleet, *, probe_in_web: bool = False, web_port: int = 8080, broken: bool = False) -> str:
    a = {h: fleet.addr(h) for h in fleet.hosts}
    probe_asgs = "[Web]" if probe_in_web else "[]"
    bad = "\n        - {name: broken, priority: 5, direction: Inbound, access: Allow, protocol: Tcp, " \
          "sourceAddressPrefix: '*', sourcePortRange: '*', destinationAddressPrefix: '*', destinationPortRange: '22'}" \
        if broken else ""
    return f"""\
virtualNetworks:
  - name: fleet
    addressSpace: [10.77.0.0/16]
    subnets:
      - {{name: hosts, addressPrefix: 10.77.1.0/24}}
applicationSecurityGroups:
  - name: Web
  - name: Db
networkInterfaces:
  - {{name: h1-nic, host: h1, interface: eth0, subnet: fleet/hosts, ipAddresses: [{a['h1']}],
      networkSecurityGroup: web-nsg, applicationSecurityGroups: [Web]}}
  - {{name: h2-nic, host: h2, interface: eth0, subnet: fleet/hosts, ipAddresses: [{a['h2']}],
      networkSecurityGroup: db-nsg, applicationSecurityGroups: [Db]}}
  - {{name: h3-nic, host: h3, interface: eth0, subnet: fleet/hosts, ipAddresses: [{a['h3']}],
      networkSecurityGroup: other-nsg}}
  - {{name: probe, subnet: fleet/hosts, ipAddresses: [{CLIENT_VNET}], applicationSecurityGroups: {probe_asgs}}}
networkSecurityGroups:
  - name: web-nsg
    securityRules:
      - {{name: web, priority: 100, direction: Inbound, access: Allow, protocol: Tcp, sourceAddressPrefix: Internet,
          sourcePortRange: '*', destinationApplicationSecurityGroups: [Web], destinationPortRange: '{web_port}'}}
  - name: db-nsg
    securityRules:
      - {{name: from-web, priority: 100, direction: Inbound, access: Allow, protocol: Tcp,
          sourceApplicationSecurityGroups: [Web], sourcePortRange: '*', destinationAddressPrefix: '*',
          destinationPortRange: '5432'}}
      - {{name: no-vnet, priority: 200, direction: Inbound, access: Deny, protocol: Tcp,
          sourceAddressPrefix: VirtualNetwork, sourcePortRange: '*', destinationAddressPrefix: '*',
          destinationPortRange: '5432'}}
  - name: other-nsg
    securityRules:
      - {{name: no-8080, priority: 100, direction: Inbound, access: Deny, protocol: Tcp,
          sourceAddressPrefix: VirtualNetwork, sourcePortRange: '*', destinationAddressPrefix: '*',
          destinationPortRange: '8080'}}{bad}
"""


def published(out) -> int:
    return json.loads(out.stdout)["revision"]


def applies(fleet: Fleet, host: str) -> list[dict]:
    return [e for e in fleet.agents[host].events() if e.get("event") == "config.applied"]


def all_at(fleet: Fleet, revision: int, hosts=None) -> bool:
    return all(fleet.enforced_revision(h) == revision for h in hosts or fleet.hosts)


def matrix(fleet: Fleet, prober) -> dict[str, bool]:
    """The flows that tell the policy apart, with real packets from the client namespace."""
    c = prober(fleet.client_ns)
    t = lambda src, h, port: c.tcp(src, fleet.addr(h), port, timeout=0.3)  # noqa: E731
    return {"internet->h1:8080": t(CLIENT_INTERNET, "h1", 8080),
            "internet->h1:5432": t(CLIENT_INTERNET, "h1", 5432),
            "vnet->h2:5432": t(CLIENT_VNET, "h2", 5432),
            "vnet->h3:8080": t(CLIENT_VNET, "h3", 8080),
            "vnet->h3:5432": t(CLIENT_VNET, "h3", 5432)}


EXPECTED = {"internet->h1:8080": True, "internet->h1:5432": False, "vnet->h2:5432": False,
            "vnet->h3:8080": False, "vnet->h3:5432": True}


def test_publish_is_enforced_on_every_host(fleet3, prober):
    fleet = fleet3
    before = matrix(fleet, prober)
    assert all(before.values()), before  # nothing enforced yet: everything open
    rev = published(fleet.publish(state(fleet), "--expect-revision", "0"))
    for h in fleet.hosts:
        fleet.start_agent(h)
    for h in fleet.hosts:
        fleet.agents[h].wait_for("agent.ready", timeout=20)
    assert poll(lambda: all_at(fleet, rev), BOUND) is not None, [fleet.status(h) for h in fleet.hosts]
    assert matrix(fleet, prober) == EXPECTED
    # every agent reports the revision, under its lease-bound key
    assert poll(lambda: [x["verdict"] for x in fleet.fleet_status()[1]["hosts"]] == ["current"] * 3, BOUND)
    code, data = fleet.fleet_status()
    assert code == 0 and {x["host"]: x["revision"] for x in data["hosts"]} == {h: rev for h in fleet.hosts}
    assert data["unowned_nics"] == ["probe"]


def test_asg_change_reaches_the_hosts_that_reference_it_only(fleet3, prober):
    fleet = fleet3
    counts = {h: len(applies(fleet, h)) for h in fleet.hosts}
    t0 = time.monotonic()
    rev = published(fleet.publish(state(fleet, probe_in_web=True)))
    c = prober(fleet.client_ns)
    took = poll(lambda: c.tcp(CLIENT_VNET, fleet.addr("h2"), 5432, timeout=0.2), BOUND)
    assert took is not None, "h2 did not let the new Web member in"
    print(f"ASG change enforced on h2 {time.monotonic() - t0:.2f}s after the publish began")
    assert poll(lambda: all_at(fleet, rev), BOUND) is not None
    time.sleep(0.5)
    after = {h: len(applies(fleet, h)) for h in fleet.hosts}
    # h1 (its rule names Web) and h2 recompiled and applied; h3's rules name no ASG: untouched
    assert after["h1"] == counts["h1"] + 1 and after["h2"] == counts["h2"] + 1, (counts, after)
    assert after["h3"] == counts["h3"], (counts, after)
    got = matrix(fleet, prober)
    assert got == {**EXPECTED, "vnet->h2:5432": True}, got
    # back to the base state for the next tests
    rev = published(fleet.publish(state(fleet)))
    assert poll(lambda: all_at(fleet, rev), BOUND) is not None
    assert matrix(fleet, prober) == EXPECTED


def test_invalid_state_is_refused_by_every_agent(fleet3, prober):
    """publish refuses it (exit 2); written around publish (the keys and marker by hand), every
    agent refuses it too and keeps the last good state."""
    fleet = fleet3
    out = fleet.publish(state(fleet, broken=True), check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    good = fleet.enforced_revision("h1")
    from pathlib import Path

    from nsg_agent.sources import etcd as etcd_mod
    from nsg_agent.sources import fleetstate as fs

    # the same state with a priority Azure refuses, encoded and written as publish would
    client = fleet.client()
    try:
        from nsg_agent.desired import loader

        p = fleet.tmp / "good.yaml"
        p.write_text(state(fleet))
        keys = fs.encode(loader.load(p), lambda x: Path(x).read_bytes())
        nsg = json.loads(keys["state/nsgs/db-nsg"])
        nsg["securityRules"][0]["priority"] = 5
        keys["state/nsgs/db-nsg"] = fs.canonical(nsg)
        res = etcd_mod.publish(client, keys)
        assert res.succeeded
    finally:
        client.close()
    for h in fleet.hosts:
        fleet.agents[h].wait_for("config.invalid", timeout=BOUND)
    inv = fleet.agents["h2"].wait_for("config.invalid")
    assert any(p["file"].endswith("state/nsgs/db-nsg") and "priority" in p["path"] for p in inv["problems"]), inv
    assert all(fleet.enforced_revision(h) == good for h in fleet.hosts)
    assert matrix(fleet, prober) == EXPECTED
    assert poll(lambda: all(x["verdict"] == "failing" for x in fleet.fleet_status()[1]["hosts"]), BOUND)
    rev = published(fleet.publish(state(fleet)))
    assert poll(lambda: all_at(fleet, rev), BOUND) is not None
    assert poll(lambda: all(x["verdict"] == "current" for x in fleet.fleet_status()[1]["hosts"]), BOUND)


def test_concurrent_publishes_with_the_same_expected_revision(fleet3):
    fleet = fleet3
    base = fleet.fleet_status()[1]["published"]["revision"]
    results = []

    def go(port: int) -> None:
        results.append(fleet.publish(state(fleet, web_port=port), "--expect-revision", str(base), check=False))

    threads = [threading.Thread(target=go, args=(p,)) for p in (8081, 8082)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 4], [r.stdout + r.stderr for r in results]
    loser = next(r for r in results if r.returncode == 4)
    assert json.loads(loser.stdout)["conflict_revision"] > base
    rev = published(fleet.publish(state(fleet)))
    assert poll(lambda: all_at(fleet, rev), BOUND) is not None


def test_etcd_outage_changes_nothing_and_recovery_reaches_every_agent(fleet3, prober):
    fleet = fleet3
    rev = fleet.enforced_revision("h1")
    fleet.etcd.kill()
    for h in fleet.hosts:
        assert poll(lambda h=h: fleet.side(h).get("state") == "degraded", BOUND), fleet.side(h)
    assert matrix(fleet, prober) == EXPECTED  # traffic still filtered, nothing opened or closed
    from host_helpers import run as sh

    out = sh(sys.executable, "-m", "nsg_agent.cli", "status", "--netns", fleet.ns["h2"], "--state-dir",
             str(fleet.state_dir), check=False)
    assert "DEGRADED" in out.stdout and f"revision:  {rev}" in out.stdout, out.stdout
    # an agent restarted while etcd is down enforces its persisted last good state
    fleet.agents["h3"].proc.terminate()
    fleet.agents["h3"].proc.wait(10)
    fleet.start_agent("h3")
    fleet.agents["h3"].wait_for("etcd.cached_state", timeout=BOUND)
    assert matrix(fleet, prober) == EXPECTED
    time.sleep(1.0)
    fleet.etcd.start()
    for h in fleet.hosts:
        assert poll(lambda h=h: fleet.side(h).get("state") == "ok", 15), fleet.side(h)
    t0 = time.monotonic()
    new = published(fleet.publish(state(fleet, probe_in_web=True)))
    took = poll(lambda: all_at(fleet, new), BOUND)
    assert took is not None, [fleet.status(h).get("commit", {}).get("revision") for h in fleet.hosts]
    print(f"first publish after recovery enforced everywhere in {time.monotonic() - t0:.2f}s")
    assert matrix(fleet, prober) == {**EXPECTED, "vnet->h2:5432": True}
    rev = published(fleet.publish(state(fleet)))
    assert poll(lambda: all_at(fleet, rev), BOUND) is not None


def test_compaction_behind_a_watch_recovers_by_a_full_read(fleet3, prober):
    """h2's agent is stopped (SIGSTOP) while two publishes happen and etcd compacts past them;
    resumed, its watch finds its start revision compacted and it reads the whole state."""
    fleet = fleet3
    agent = fleet.agents["h2"]
    import signal

    agent.proc.send_signal(signal.SIGSTOP)
    try:
        # kill its watch stream while it sleeps: when it wakes it must open a new one
        fleet.etcd.kill()
        fleet.etcd.start()
        published(fleet.publish(state(fleet, web_port=8081)))
        rev = published(fleet.publish(state(fleet, probe_in_web=True)))
        client = fleet.client()
        try:
            client.compact(rev)
        finally:
            client.close()
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    agent.wait_for("etcd.watch_compacted", timeout=15)
    assert poll(lambda: all_at(fleet, rev), 15) is not None
    c = prober(fleet.client_ns)
    assert poll(lambda: c.tcp(CLIENT_VNET, fleet.addr("h2"), 5432, timeout=0.2), BOUND) is not None
    rev = published(fleet.publish(state(fleet)))
    assert poll(lambda: all_at(fleet, rev), BOUND) is not None
    assert matrix(fleet, prober) == EXPECTED


def test_a_dead_agent_disappears_from_fleet_status(fleet3):
    fleet = fleet3
    agent = fleet.agents["h3"]
    agent.proc.kill()
    agent.proc.wait(10)
    took = poll(lambda: fleet.fleet_status()[1].get("missing") == ["h3"], 10)
    assert took is not None, fleet.fleet_status()
    code, _ = fleet.fleet_status()
    assert code == 1


def test_etcd_down_at_a_first_start_then_up(fleet3, prober):
    """A new agent (no persisted state) while etcd is down: nothing to enforce yet, it retries
    with backoff; etcd back: it lists, watches and enforces the published revision."""
    fleet = fleet3
    rev = fleet.fleet_status()[1]["published"]["revision"]
    fleet.etcd.kill()
    fresh = fleet.tmp / "run-fresh"
    agent = fleet.start_agent("h3", "--state-dir", str(fresh), "--etcd-cache", str(fresh / "cache"))
    agent.wait_for("source.unavailable", timeout=BOUND)
    assert not (fresh / "cache" / fleet.ns["h3"] / "etcd-last-good.json").exists()
    fleet.etcd.start()
    agent.wait_for("config.applied", timeout=15)  # no record of its own: the table is replaced
    status = json.loads((fresh / fleet.ns["h3"] / "status.json").read_text())
    assert status["commit"]["revision"] == rev
    assert (fresh / "cache" / fleet.ns["h3"] / "etcd-last-good.json").exists()
    assert matrix(fleet, prober) == EXPECTED
