"""The fleet's connection options against a real etcd: TLS with client certificates, and
user/password authentication with etcd's RBAC (an agent role that can read the state and
write only its reports). etcd listens on 127.0.0.1 only; no namespace is needed."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from fleet_fixtures import ETCD, EtcdServer
from host_helpers import NSG_AGENT

pytestmark = [pytest.mark.root]

STATE = """\
virtualNetworks:
  - {name: v, addressSpace: [10.77.0.0/16], subnets: [{name: s, addressPrefix: 10.77.1.0/24}]}
networkInterfaces:
  - {name: n1, host: h1, interface: eth0, subnet: v/s, ipAddresses: [10.77.1.11]}
"""


def _need() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not os.path.exists(ETCD) or not shutil.which("openssl") or not shutil.which("etcdctl"):
        pytest.skip("etcd-server, etcd-client and openssl are installed by scripts/install.sh")


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="nsgfe-sec-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=nsgfe-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=nsgfe-{name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", "san.ext", "-out", f"{name}.crt", cwd=d)


def agent_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NSG_AGENT, *args], capture_output=True, text=True, timeout=60)


def test_tls_with_client_certificates(tmp):
    _need()
    make_pki(tmp)
    ctx = ssl.create_default_context(cafile=str(tmp / "ca.crt"))
    ctx.load_cert_chain(str(tmp / "client.crt"), str(tmp / "client.key"))
    server = EtcdServer(tmp / "data", tmp / "etcd.log", scheme="https", ssl_context=ctx, args=(
        "--cert-file", str(tmp / "server.crt"), "--key-file", str(tmp / "server.key"),
        "--client-cert-auth", "--trusted-ca-file", str(tmp / "ca.crt")))
    server.start()
    try:
        (tmp / "s.yaml").write_text(STATE)
        tls = ["--etcd", server.url, "--etcd-ca", str(tmp / "ca.crt"), "--etcd-cert", str(tmp / "client.crt"),
               "--etcd-key", str(tmp / "client.key")]
        out = agent_cli("publish", str(tmp / "s.yaml"), *tls, "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["revision"] > 0
        out = agent_cli("fleet", "status", *tls, "--json")
        assert json.loads(out.stdout)["missing"] == ["h1"]
        # without the CA etcd's certificate is not trusted; without a client certificate etcd refuses
        no_ca = agent_cli("fleet", "status", "--etcd", server.url)
        assert no_ca.returncode == 3 and "TLS: unable to get local issuer certificate" in no_ca.stderr, no_ca.stderr
        no_cert = agent_cli("fleet", "status", "--etcd", server.url, "--etcd-ca", str(tmp / "ca.crt"))
        assert no_cert.returncode == 3, no_cert.stderr
        half = agent_cli("fleet", "status", "--etcd", server.url, "--etcd-cert", str(tmp / "client.crt"))
        assert half.returncode == 2 and "go together" in half.stderr
    finally:
        server.stop()


def test_user_and_password_with_rbac(tmp):
    _need()
    # simple tokens expire after 1 s without use here (default 300 s): the client re-authenticates
    server = EtcdServer(tmp / "data", tmp / "etcd.log", args=("--auth-token-ttl", "1"))
    server.start()
    try:
        ctl = ["etcdctl", "--endpoints", server.url]

        def etcdctl(*args: str, user: str | None = "root:rootpw") -> None:
            subprocess.run([*ctl, *([f"--user={user}"] if user else []), *args], check=True,
                           capture_output=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"})

        etcdctl("user", "add", "root:rootpw", user=None)
        etcdctl("role", "add", "root", user=None)
        etcdctl("user", "grant-role", "root", "root", user=None)
        etcdctl("user", "add", "agent:agentpw", user=None)
        etcdctl("role", "add", "agent", user=None)
        etcdctl("role", "grant-permission", "agent", "read", "/nsg-agent/state/", "--prefix=true", user=None)
        etcdctl("role", "grant-permission", "agent", "readwrite", "/nsg-agent/agents/", "--prefix=true", user=None)
        etcdctl("user", "grant-role", "agent", "agent", user=None)
        etcdctl("auth", "enable", user=None)
        (tmp / "s.yaml").write_text(STATE)
        (tmp / "root.pw").write_text("rootpw\n")
        (tmp / "agent.pw").write_text("agentpw\n")
        (tmp / "bad.pw").write_text("nope\n")
        out = agent_cli("publish", str(tmp / "s.yaml"), "--etcd", server.url, "--etcd-user", "root",
                        "--etcd-password-file", str(tmp / "root.pw"), "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        # anonymous: refused; a wrong password: refused; the agent role cannot publish
        anon = agent_cli("publish", str(tmp / "s.yaml"), "--etcd", server.url)
        assert anon.returncode == 3 and "user name is empty" in anon.stderr, anon.stderr
        bad = agent_cli("fleet", "status", "--etcd", server.url, "--etcd-user", "root",
                        "--etcd-password-file", str(tmp / "bad.pw"))
        assert bad.returncode == 3 and "authentication failed" in bad.stderr, bad.stderr
        denied = agent_cli("publish", str(tmp / "s.yaml"), "--etcd", server.url, "--etcd-user", "agent",
                           "--etcd-password-file", str(tmp / "agent.pw"))
        assert denied.returncode == 3 and "permission denied" in denied.stderr, denied.stderr
        # what the agent needs works with its role: read the state, write its report under a lease
        from nsg_agent.sources.etcd import AgentReport, Etcd, EtcdConfig, EtcdSource

        cfg = EtcdConfig.parse(server.url, user="agent", password="agentpw")
        src = EtcdSource(Etcd(cfg), "h1", tmp / "cache")
        snap = src.read()
        assert snap.revision and [n.name for n in snap.loaded.state.networkInterfaces] == ["n1"]
        token = src.etcd._token
        import time

        time.sleep(2.5)  # the token expires
        keys, rev = src._full_read()
        assert rev == snap.revision and src.etcd._token != token  # a new token, the read went through
        report = AgentReport(Etcd(cfg), "h1", ttl=5)
        report.update(state="ok", revision=snap.revision)
        report.once()
        st = agent_cli("fleet", "status", "--etcd", server.url, "--etcd-user", "agent",
                       "--etcd-password-file", str(tmp / "agent.pw"), "--json")
        assert st.returncode == 0, st.stdout + st.stderr
        assert [h["verdict"] for h in json.loads(st.stdout)["hosts"]] == ["current"]
        report.stop()
        src.close()
    finally:
        server.stop()
