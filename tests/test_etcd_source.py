"""EtcdSource without etcd: a fake client holding keys at revisions. The real etcd, the
watch stream and real packets are in integration/test_fleet.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nsg_agent.desired import loader
from nsg_agent.errors import LoadError
from nsg_agent.sources import etcd as E
from nsg_agent.sources import fleetstate as fs
from nsg_agent.sources.base import SourceUnavailable
from test_fleetstate import FLEET


class FakeEtcd:
    def __init__(self):
        self.config = E.EtcdConfig.parse("http://127.0.0.1:1", "/t/")
        self.kv: dict[str, tuple[bytes, int]] = {}
        self.rev = 1
        self.down = False
        self.ranges = 0

    def _check(self):
        if self.down:
            raise E.EtcdUnavailable("etcd unreachable (http://127.0.0.1:1): connection refused")

    def range(self, prefix, *, revision=None, keys_only=False):
        self._check()
        self.ranges += 1
        return self.rev, {k[len(prefix):]: v for k, v in self.kv.items() if k.startswith(prefix)}

    def get(self, key):
        self._check()
        return self.rev, self.kv.get(key)

    def txn(self, compare, success, failure=None):
        import base64

        self._check()
        key = base64.b64decode(compare[0]["key"]).decode()
        cur = self.kv.get(key, (b"", 0))[1]
        if cur != compare[0]["mod_revision"]:
            return {"header": {"revision": self.rev}, "succeeded": False,
                    "responses": [{"response_range": {"kvs": [{"mod_revision": cur}]}}]}
        self.rev += 1
        for op in success:
            if "request_put" in op:
                self.kv[base64.b64decode(op["request_put"]["key"]).decode()] = (
                    base64.b64decode(op["request_put"]["value"]), self.rev)
            else:
                self.kv.pop(base64.b64decode(op["request_delete_range"]["key"]).decode(), None)
        return {"header": {"revision": self.rev}, "succeeded": True}

    def close(self):
        pass


def _keys(tmp_path: Path, text: str) -> dict[str, bytes]:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return fs.encode(loader.load(p), lambda x: Path(x).read_bytes())


@pytest.fixture
def etcd():
    return FakeEtcd()


def test_read_validates_and_keeps_only_the_host_part(etcd, tmp_path):
    r = E.publish(etcd, _keys(tmp_path, FLEET), expect_revision=0)
    assert r.succeeded and r.revision == 2
    src = E.EtcdSource(etcd, "h2", tmp_path / "cache")
    snap = src.read()
    assert snap.revision == 2 and snap.published_at
    assert [n.name for n in snap.loaded.state.networkInterfaces if n.interface] == ["h2-nic"]
    # the cache holds the keys with the revision
    cached = json.loads((tmp_path / "cache" / E.CACHE_NAME).read_text())
    assert cached["revision"] == 2 and "state/nsgs/db-nsg" in cached["keys"]


def test_compare_and_swap(etcd, tmp_path):
    keys = _keys(tmp_path, FLEET)
    assert E.publish(etcd, keys, expect_revision=0).succeeded
    lost = E.publish(etcd, keys, expect_revision=0)
    assert not lost.succeeded and lost.conflict_revision == 2
    again = E.publish(etcd, keys)  # nothing changed: only the marker
    assert again.succeeded and again.diff.empty


def test_an_unchanged_host_part_is_the_same_loaded_state(etcd, tmp_path):
    E.publish(etcd, _keys(tmp_path, FLEET))
    src = E.EtcdSource(etcd, "h3", tmp_path / "cache")
    first = src.read()
    joined = FLEET.replace("ipAddresses: [10.77.2.99], applicationSecurityGroups: []",
                           "ipAddresses: [10.77.2.99], applicationSecurityGroups: [Web]")
    E.publish(etcd, _keys(tmp_path, joined))
    second = src.read()
    assert second.revision > first.revision
    assert second.loaded is first.loaded  # h3's rules name no ASG: the very same state
    E.publish(etcd, _keys(tmp_path, FLEET))
    h2 = E.EtcdSource(etcd, "h2", tmp_path / "cache2")
    before = h2.read().loaded.sha256
    E.publish(etcd, _keys(tmp_path, joined))
    assert h2.read().loaded.sha256 != before  # h2's rule names Web: its part changed


def test_keys_written_around_publish_are_refused(etcd, tmp_path):
    E.publish(etcd, _keys(tmp_path, FLEET))
    v, rev = etcd.kv["/t/state/nsgs/web-nsg"]
    etcd.kv["/t/state/nsgs/web-nsg"] = (v.replace(b"8080", b"8081"), rev + 1)
    with pytest.raises(LoadError, match="do not match the marker"):
        E.EtcdSource(etcd, "h1", tmp_path / "cache").read()


def test_an_invalid_published_state_names_the_key(etcd, tmp_path):
    keys = _keys(tmp_path, FLEET)
    nsg = json.loads(keys["state/nsgs/db-nsg"])
    nsg["securityRules"][0]["priority"] = 5
    keys["state/nsgs/db-nsg"] = fs.canonical(nsg)
    E.publish(etcd, keys)
    with pytest.raises(LoadError) as e:
        E.EtcdSource(etcd, "h1", tmp_path / "cache").read()
    p = e.value.problems[0]
    assert p.file == "etcd:/t/state/nsgs/db-nsg" and p.path == "securityRules[0].priority"


def test_nothing_published(etcd, tmp_path):
    with pytest.raises(LoadError, match="nothing published"):
        E.EtcdSource(etcd, "h1", tmp_path / "cache").read()


def test_etcd_down_at_start_serves_the_persisted_state_then_raises(etcd, tmp_path):
    E.publish(etcd, _keys(tmp_path, FLEET))
    E.EtcdSource(etcd, "h1", tmp_path / "cache").read()  # a previous run persisted revision 2
    etcd.down = True
    src = E.EtcdSource(etcd, "h1", tmp_path / "cache")
    snap = src.read()
    assert snap.revision == 2 and src.served_cache and src.conn.state == "unreachable"
    with pytest.raises(SourceUnavailable):  # once running: the daemon keeps what it enforces
        src.read()
    etcd.down = False
    assert src.changed() == ["etcd reachable again (serving the cached revision 2)"]
    assert src.read().revision == 2 and not src.served_cache
    # another host's cache is not used
    etcd.down = True
    with pytest.raises(SourceUnavailable):
        E.EtcdSource(etcd, "h2", tmp_path / "cache").read()


def test_the_watch_events_keep_the_key_map(etcd, tmp_path):
    E.publish(etcd, _keys(tmp_path, FLEET))
    src = E.EtcdSource(etcd, "h2", tmp_path / "cache")
    src._full_read(list_for_watch=True)
    src._synced = True
    ranges = etcd.ranges
    joined = _keys(tmp_path, FLEET.replace("ipAddresses: [10.77.2.99], applicationSecurityGroups: []",
                                           "ipAddresses: [10.77.2.99], applicationSecurityGroups: [Web]"))
    E.publish(etcd, joined)
    events = [("PUT", k[len("/t/state/"):], v, r) for k, (v, r) in etcd.kv.items() if r == etcd.rev]
    assert {e[1] for e in events} == {"asgs/Web", "published"}
    src._apply_events(events)
    src._apply_events(events)  # replayed after a reconnect: no effect
    assert src.changed() == [f"etcd revision {etcd.rev} (enforcing None)"]
    snap = src.read()
    assert etcd.ranges == ranges + 1  # the read came from the map (the +1: publish's own read)
    assert snap.revision == etcd.rev
    web = [n.name for n in snap.loaded.state.networkInterfaces if "Web" in n.applicationSecurityGroups]
    assert sorted(web) == ["extra", "h1-nic"]
    assert src.changed() == []


def test_config_parsing():
    c = E.EtcdConfig.parse("127.0.0.1:2379, https://e2:2379", "nsg")
    assert c.endpoints == ("http://127.0.0.1:2379", "https://e2:2379") and c.prefix == "/nsg/"
    from nsg_agent.errors import InvalidInput

    with pytest.raises(InvalidInput):
        E.EtcdConfig.parse("ftp://x", "/")


def test_fleet_status_verdicts(etcd, tmp_path):
    import time as _time

    E.publish(etcd, _keys(tmp_path, FLEET))
    published = etcd.kv["/t/state/published"][1]
    now = _time.time()

    def report(host, **kw):
        etcd.rev += 1
        etcd.kv[f"/t/agents/{host}"] = (fs.canonical({"host": host, "state": "ok", "revision": published,
                                                      "applied_at": now - 5, "updated_at": now, **kw}), etcd.rev)

    report("h1")
    report("h2", revision=published - 3)
    data = E.fleet_status(etcd, now=now)
    v = {h["host"]: (h["verdict"], h["behind"]) for h in data["hosts"]}
    assert v == {"h1": ("current", 0), "h2": ("stale", 3)}
    assert data["missing"] == ["h3"] and data["unowned_nics"] == ["extra"]
    report("h2", last_error={"kind": "invalid", "message": "x", "problems": []}, state="failing")
    report("h3", state="degraded")
    v = {h["host"]: h["verdict"] for h in E.fleet_status(etcd, now=now)["hosts"]}
    assert v == {"h1": "current", "h2": "failing", "h3": "degraded"}
    from nsg_agent.cli.fleet import render_fleet

    text = render_fleet(E.fleet_status(etcd, now=now), now=now)
    assert "h2               failing" in text and "1 current, 1 degraded, 1 failing" in text


def test_the_publish_and_fleet_status_commands(etcd, tmp_path, monkeypatch, capsys):
    from nsg_agent.cli import fleet as cli_fleet
    from nsg_agent.cli.main import main

    monkeypatch.setattr(cli_fleet, "_client", lambda args: etcd)
    p = tmp_path / "fleet.yaml"
    p.write_text(FLEET)
    base = ["--etcd", "http://127.0.0.1:1", "--prefix", "/t/"]
    assert main(["publish", str(p), *base, "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "+ state/nsgs/db-nsg" in out.out and "dry run: 14 added" in out.out
    assert "NICs without a host" in out.err and "extra" in out.err
    assert "/t/state/published" not in etcd.kv
    assert main(["publish", str(p), *base, "--expect-revision", "0"]) == 0
    assert "published revision 2 under /t/" in capsys.readouterr().out
    p.write_text(FLEET.replace("destinationPortRange: '22'", "destinationPortRange: '2222'"))
    assert main(["publish", str(p), *base, "--expect-revision", "0", "--json"]) == 4  # lost the CAS
    assert json.loads(capsys.readouterr().out)["conflict_revision"] == 2
    assert main(["publish", str(p), *base, "--expect-revision", "2"]) == 0
    assert "~ state/nsgs/other-nsg" in capsys.readouterr().out
    p.write_text(FLEET.replace("priority: 100, direction: Inbound, access: Allow, protocol: Tcp, sourceAddressPrefix: Internet",
                               "priority: 5, direction: Inbound, access: Allow, protocol: Tcp, sourceAddressPrefix: Internet"))
    assert main(["publish", str(p), *base]) == 2  # validated like apply: nothing written
    assert "priority 5 is outside" in capsys.readouterr().err
    assert main(["fleet", "status", *base]) == 1  # three hosts own NICs, none reports
    assert "0 current" not in capsys.readouterr().out
    etcd.down = True
    assert main(["fleet", "status", *base]) == 3
    assert "connection refused" in capsys.readouterr().err
    assert main(["publish", str(p.with_name("nope.yaml")), *base]) == 2


def test_service_tag_blobs_are_materialized_and_forgotten(etcd, tmp_path):
    examples = Path(__file__).resolve().parent.parent / "examples"
    with_tags = fs.encode(loader.load(examples / "hub-spoke.yaml"), lambda x: Path(x).read_bytes())
    assert any(k.startswith("state/servicetags/") for k in with_tags)
    E.publish(etcd, with_tags)
    src = E.EtcdSource(etcd, "h1", tmp_path / "cache")
    snap = src.read()
    assert snap.loaded.tags.tags and snap.loaded.tags.change_numbers
    assert len(list((tmp_path / "cache" / "tags").iterdir())) == 1
    E.publish(etcd, fs.encode(loader.load(examples / "lab-demo.yaml"), lambda x: Path(x).read_bytes()))
    assert not src.read().loaded.tags.tags
    assert list((tmp_path / "cache" / "tags").iterdir()) == []
