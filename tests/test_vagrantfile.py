"""The Vagrant lab and its provisioning script, checked without VMs.

CI has no hypervisor, so the Vagrantfile is checked for syntax (``ruby -c`` and an evaluation
against a recording stub of Vagrant's API when ruby is installed; a structural parse in
Python always), its embedded desired state is loaded and verified with the semantics engine,
and scripts/provision.sh really runs: once with ``--dry-run`` and once for real into a
temporary prefix (NSG_PREFIX), which builds the venv and stages every file but touches
nothing system-wide and starts nothing.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nsg_agent.desired.loader import load
from nsg_agent.desired.vocabulary import Access, Direction
from nsg_agent.semantics.policy import Flow
from nsg_agent.semantics.resolver import protocol_number, resolve, verify

REPO = Path(__file__).resolve().parent.parent
VAGRANTFILE = REPO / "Vagrantfile"
PROVISION = REPO / "scripts" / "provision.sh"
UNIT = REPO / "systemd" / "nsg-agent.service"
FORBIDDEN = ipaddress.ip_network("192.0.2.0/24")


def vagrantfile_text() -> str:
    return VAGRANTFILE.read_text()


# --- a small Ruby lexer: enough to check block structure without ruby --------------------

OPENERS_ANYWHERE = {"do"}
OPENERS_AT_START = {"if", "unless", "while", "until", "case", "def", "class", "module", "begin"}


def ruby_block_balance(text: str) -> list[tuple[int, str]]:
    """Walk the source and return a stack trace of problems: unmatched ``end`` or unclosed
    openers (line, keyword). Heredoc bodies, comments and string literals are skipped;
    ``if``/``unless``/``while``/``until`` count only at the start of a statement (not as
    modifiers)."""
    problems: list[tuple[int, str]] = []
    stack: list[tuple[int, str]] = []
    heredoc_end: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if heredoc_end:
            if line.strip() == heredoc_end[0]:
                heredoc_end.pop(0)
            continue
        # heredoc starts on this line: <<~NAME, <<-NAME, <<NAME (and 'NAME' / "NAME")
        heredoc_end += [m.group(2) for m in re.finditer(r"<<[~-]?(['\"]?)([A-Z_][A-Z0-9_]*)\1", line)]
        code = re.sub(r"<<[~-]?(['\"]?)[A-Z_][A-Z0-9_]*\1", " ", line)
        code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', code)
        code = re.sub(r"'(?:[^'\\]|\\.)*'", "''", code)
        code = code.split("#", 1)[0]
        for stmt in code.split(";"):
            words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*[?!]?|[=({\[,]|\|\||&&", stmt)
            for i, w in enumerate(words):
                prev = words[i - 1] if i else None
                at_start = i == 0 or prev in ("=", "(", ",", "||", "&&")
                if w == "end":
                    if stack:
                        stack.pop()
                    else:
                        problems.append((lineno, "end without opener"))
                elif w in OPENERS_ANYWHERE or (w in OPENERS_AT_START and at_start):
                    stack.append((lineno, w))
    problems += [(ln, f"unclosed {kw}") for ln, kw in stack]
    if heredoc_end:
        problems.append((len(text.splitlines()), f"unterminated heredoc {heredoc_end[0]}"))
    return problems


@pytest.mark.parametrize("source,expected", [
    ("Vagrant.configure('2') do |c|\n  c.vm.box = 'x'\nend\n", []),
    ("x.each do |a|\n  if a\n    b\n  end\nend\n", []),
    ("x.each do |a|\n  b if a\n", [(1, "unclosed do")]),
    ("a = 1\nend\n", [(2, "end without opener")]),
    ("s = <<~SH\n  do\n  if x\nSH\nfoo do\nend\n", []),
    ("y = 'do' # do if\n", []),
    ("v = if a then 1 else 2 end\n", []),
], ids=["block", "nested-if", "missing-end", "extra-end", "heredoc-skipped",
        "strings-and-comments", "if-expression"])
def test_block_balance_checker(source, expected):
    """The structural checker flags unbalanced do/end and ignores heredocs, strings, comments."""
    assert ruby_block_balance(source) == expected


def test_vagrantfile_blocks_balance():
    """The Vagrantfile's do/if/... blocks each have their end (the no-ruby syntax check)."""
    assert ruby_block_balance(vagrantfile_text()) == []


def test_vagrantfile_layout():
    """Two Debian 12 VMs on 10.x private addresses, each provisioned by scripts/provision.sh."""
    text = vagrantfile_text()
    assert re.search(r'config\.vm\.box\s*=\s*"debian/bookworm64"', text)
    vms = dict(re.findall(r'"(vm\d)"\s*=>\s*\{\s*ip:\s*"#\{LAB_NET\}\.(\d+)"', text))
    lab_net = re.search(r'LAB_NET\s*=\s*"([\d.]+)"', text).group(1)
    assert set(vms) == {"vm1", "vm2"}
    for host in vms.values():
        addr = ipaddress.ip_address(f"{lab_net}.{host}")
        assert addr in ipaddress.ip_network("10.0.0.0/8") and addr not in FORBIDDEN
    assert "192.0.2." not in text
    assert re.search(r"config\.vm\.define name do", text), "VMs are defined in one loop over VMS"
    # Both branches of the loop (agent / client) run the provisioning script.
    branches = re.split(r"^\s*else\s*$", text[text.index("if vm[:agent]"):], maxsplit=1, flags=re.M)
    assert len(branches) == 2
    for branch in branches:
        assert "/vagrant/scripts/provision.sh" in branch
    assert PROVISION.is_file() and os.access(PROVISION, os.X_OK)


def embedded_state(tmp_path: Path) -> Path:
    m = re.search(r"VM1_DESIRED_STATE = <<~YAML\n(.*?)^YAML$", vagrantfile_text(), re.S | re.M)
    assert m, "VM1_DESIRED_STATE heredoc not found"
    body = m.group(1)
    indent = min(len(ln) - len(ln.lstrip()) for ln in body.splitlines() if ln.strip())
    path = tmp_path / "vm1.yaml"
    path.write_text("".join(ln[indent:] + "\n" for ln in body.splitlines()))
    return path


@pytest.mark.parametrize("port,expected", [(8080, Access.ALLOW), (8081, Access.DENY), (22, Access.DENY)],
                         ids=["app-port-allowed", "other-port-denied", "ssh-on-eth1-denied"])
def test_vm1_desired_state_predicts_lab_checks(tmp_path, port, expected):
    """vm1's desired state loads and the semantics engine predicts the lab's checks: vm2 may
    reach vm1:8080 over eth1 and nothing else."""
    loaded = load(embedded_state(tmp_path))
    nics = {n.name: n for n in loaded.state.networkInterfaces}
    assert nics["vm1-nic"].interface == "eth1"
    policy = resolve(loaded.state, loaded.tags)
    flow = Flow(Direction.INBOUND, protocol_number("Tcp"), ipaddress.ip_address("10.60.0.11"),
                ipaddress.ip_address("10.60.0.12"), port, 40000)
    assert verify(policy, "vm1-nic", flow).access is expected


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed (apt: ruby)")
def test_vagrantfile_ruby_syntax():
    """ruby -c accepts the Vagrantfile."""
    r = subprocess.run(["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "Syntax OK" in r.stdout


RUBY_STUB = r'''
require "json"
# A recording stand-in for the parts of Vagrant's API the Vagrantfile uses.
class Rec
  def initialize(log, path) = (@log = log; @path = path)
  def method_missing(name, *args, **kw, &blk)
    n = name.to_s
    if n.end_with?("=")
      @log << { "path" => @path + [n.chomp("=")], "value" => args[0] }
      return args[0]
    end
    @log << { "path" => @path + [n], "args" => args.map(&:to_s), "kw" => kw.transform_keys(&:to_s).transform_values(&:to_s) }
    child = Rec.new(@log, @path + [n] + args.map(&:to_s))
    blk.call(child) if blk
    child
  end
  def respond_to_missing?(*) = true
end
module Vagrant
  LOG = []
  def self.configure(version)
    yield Rec.new(LOG, ["config"])
  end
end
load ARGV[0]
puts JSON.generate(Vagrant::LOG)
'''


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed (apt: ruby)")
def test_vagrantfile_evaluates_to_two_provisioned_vms(tmp_path):
    """Evaluated against a recording Vagrant stub, each VM gets the box, a 10.x private
    network and a shell provisioner running scripts/provision.sh (vm1 with --config)."""
    stub = tmp_path / "stub.rb"
    stub.write_text(RUBY_STUB)
    r = subprocess.run(["ruby", str(stub), str(VAGRANTFILE)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    calls = json.loads(r.stdout.strip().splitlines()[-1])
    per_vm: dict[str, list[dict]] = {}
    for c in calls:
        p = c["path"]
        if p[:3] == ["config", "vm", "define"] and len(p) > 4:
            per_vm.setdefault(p[3], []).append(c)
    assert set(per_vm) == {"vm1", "vm2"}
    for name, vm_calls in per_vm.items():
        nets = [c for c in vm_calls if c["path"][-1] == "network"]
        assert len(nets) == 1 and nets[0]["args"] == ["private_network"]
        ip = ipaddress.ip_address(nets[0]["kw"]["ip"])
        assert ip in ipaddress.ip_network("10.0.0.0/8") and ip not in FORBIDDEN
        inline = " ".join(c["kw"].get("inline", "") for c in vm_calls if c["path"][-1] == "provision")
        assert "bash /vagrant/scripts/provision.sh" in inline
        assert ("--config" in inline) == (name == "vm1")
        if name == "vm1":  # the state Ruby hands over is the heredoc, byte for byte
            b64 = re.search(r"echo '([A-Za-z0-9+/=]+)' \| base64 -d", inline).group(1)
            assert base64.b64decode(b64).decode() == embedded_state(tmp_path).read_text()
    assert any(c["path"] == ["config", "vm", "box"] and c["value"] == "debian/bookworm64" for c in calls)


# --- the provisioning script ---------------------------------------------------------------

def run_provision(*args: str, prefix: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NSG_VENV",)}
    env["NSG_PREFIX"] = str(prefix)
    return subprocess.run(["bash", str(PROVISION), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def test_provision_help_documents_options():
    """provision.sh --help lists its options and environment."""
    r = subprocess.run(["bash", str(PROVISION), "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    for word in ("--dry-run", "--no-start", "--config", "NSG_PREFIX", "NSG_VENV"):
        assert word in r.stdout


def test_provision_rejects_unknown_argument(tmp_path):
    """An unknown option is an error (exit 2), not silently ignored."""
    r = run_provision("--frobnicate", prefix=tmp_path)
    assert r.returncode == 2 and "unknown argument" in r.stderr


def test_provision_dry_run_prints_plan_and_changes_nothing(tmp_path):
    """--dry-run prints each install step (copy, venv via install.sh, unit, config) and
    creates nothing, not even under the prefix."""
    prefix = tmp_path / "root"
    config = tmp_path / "state.yaml"
    config.write_text(embedded_state(tmp_path).read_text())
    r = run_provision("--dry-run", "--config", str(config), prefix=prefix)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"NSG_VENV={prefix}/opt/nsg-agent/.venv bash {prefix}/opt/nsg-agent/scripts/install.sh" in out
    assert f"{prefix}/etc/systemd/system/nsg-agent.service" in out
    assert f"{prefix}/etc/nsg-agent/desired-state.yaml" in out
    assert "systemctl" not in out  # a prefix never starts anything
    assert not prefix.exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_provision_into_prefix_installs_working_agent(tmp_path):
    """provision.sh run for real into NSG_PREFIX stages the code, a venv whose nsg-agent
    runs and validates the lab's file, the unit, the config and the symlink."""
    missing = [p for p in re.search(r"apt_pkgs=\(([^)]*)\)", (REPO / "scripts/install.sh").read_text()).group(1).split()
               if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                                 text=True).stdout.find("install ok installed") < 0]
    if missing and os.geteuid() != 0:
        pytest.skip(f"install.sh would need apt for {missing} (needs root)")
    prefix = tmp_path / "root"
    config = embedded_state(tmp_path)
    r = run_provision("--config", str(config), prefix=prefix, timeout=540)
    assert r.returncode == 0, r.stdout + r.stderr
    opt = prefix / "opt" / "nsg-agent"
    assert (opt / "nsg_agent" / "cli" / "main.py").is_file()
    assert not (opt / ".git").exists() and not (opt / "tests").exists()
    assert (prefix / "etc/systemd/system/nsg-agent.service").read_bytes() == UNIT.read_bytes()
    assert (prefix / "etc/nsg-agent/desired-state.yaml").read_bytes() == config.read_bytes()
    link = prefix / "usr/local/bin/nsg-agent"
    assert os.readlink(link) == str(opt / ".venv" / "bin" / "nsg-agent")
    completion = prefix / "usr/share/bash-completion/completions/nsg-agent"
    manpage = prefix / "usr/local/share/man/man1/nsg-agent.1"
    assert "confirm" in completion.read_text() and "--detailed-exitcode" in completion.read_text()
    assert manpage.read_text().startswith(".TH NSG\\-AGENT")
    agent = opt / ".venv" / "bin" / "nsg-agent"
    v = subprocess.run([str(agent), "--version"], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and v.stdout.startswith("nsg-agent ")
    ok = subprocess.run([str(agent), "validate", str(prefix / "etc/nsg-agent/desired-state.yaml")],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The venv runs the staged copy, not this checkout.
    where = subprocess.run([str(opt / ".venv" / "bin" / "python"), "-c", "import nsg_agent; print(nsg_agent.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert where.stdout.strip() == str(opt / "nsg_agent" / "__init__.py")
    assert "staged under" in r.stdout
