"""The exit-code contract holds for every subcommand on broken input: 0, 1, 2 or 3 only,
never a traceback; --json commands report errors as JSON on stdout too.

Kernel-facing commands are given a namespace that does not exist (never the namespace the
tests run in), so nothing here can change a firewall."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nsg_agent.cli import main as cli

REPO = Path(__file__).resolve().parent.parent
NONS = ["--netns", "nsgx-does-not-exist"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("broken")
    files = {
        "missing": str(d / "missing.yaml"),
        "directory": str(d),
        "yaml": d / "bad.yaml", "invalid": d / "invalid.yaml", "empty": d / "empty.yaml",
        "binary": d / "binary.json", "valid": d / "valid.yaml",
    }
    files["yaml"].write_text("virtualNetworks: [\n  - {name: v\n")
    files["invalid"].write_text("networkSecurityGroups:\n  - name: x\n    securityRules:\n      - {name: r, priority: 99999}\n")
    files["empty"].write_text("")
    files["binary"].write_bytes(b"\xff\xfe\x00garbage")
    files["valid"].write_text((REPO / "examples" / "port80-subnet-nic.yaml").read_text())
    return {k: str(v) for k, v in files.items()}


def run(args: list[str], state_dir: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsg_agent.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={"NSG_AGENT_STATE_DIR": str(state_dir), "PATH": "/usr/bin:/bin"})


FILE_KINDS = ("missing", "directory", "yaml", "invalid", "binary")
COMMANDS = {
    "validate": lambda f: ["validate", f],
    "validate-json": lambda f: ["validate", f, "--json"],
    "effective-rules": lambda f: ["effective-rules", f, "--nic", "both-allow"],
    "effective-rules-json": lambda f: ["effective-rules", f, "--nic", "both-allow", "--json"],
    "verify": lambda f: ["verify", f, "--nic", "both-allow", "--direction", "Inbound", "--protocol", "tcp",
                         "--local", "10.20.3.4:80", "--remote", "203.0.113.1:5000"],
    "verify-json": lambda f: ["verify", f, "--nic", "both-allow", "--direction", "Inbound", "--protocol", "tcp",
                              "--local", "10.20.3.4:80", "--remote", "203.0.113.1:5000", "--json"],
    "plan": lambda f: ["plan", f, *NONS],
    "plan-json": lambda f: ["plan", f, "--json", *NONS],
    "apply": lambda f: ["apply", f, *NONS],
    "lab-up": lambda f: ["lab", "up", f, "--name", "nsgx-broken"],
}


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_broken_files_exit_2_without_traceback(inputs, tmp_path, command, kind):
    r = run(COMMANDS[command](inputs[kind]), tmp_path)
    assert "Traceback" not in r.stderr, r.stderr
    kernel = command.startswith(("plan", "apply"))  # the missing namespace may be found first (3)
    assert r.returncode in ((2, 3) if kernel else (2,)), (r.returncode, r.stderr)
    assert r.stderr.startswith("nsg-agent: ") or r.stdout.startswith(("INVALID", "{"))
    if command.endswith("json"):
        body = json.loads(r.stdout)
        assert body["ok"] is False
        assert body.get("problems") or body["error"]["message"]


ARG_CASES = [
    (["verify", "FILE", "--nic", "nope", "--direction", "Inbound", "--protocol", "tcp",
      "--local", "10.20.3.4:80", "--remote", "203.0.113.1:5000"], 2),
    (["verify", "FILE", "--nic", "both-allow", "--direction", "Sideways", "--protocol", "tcp",
      "--local", "10.20.3.4:80", "--remote", "203.0.113.1:5000"], 2),
    (["verify", "FILE", "--nic", "both-allow", "--direction", "Inbound", "--protocol", "tcp",
      "--local", "10.20.3.4:80", "--remote", "not-an-ip"], 2),
    (["effective-rules", "FILE", "--nic", "nope"], 2),
    (["effective-rules", "FILE"], 2),  # --nic missing: argparse's usage error
    (["nonsense-command"], 2),
    (["plan", "FILE", *NONS], 3),
    (["apply", "FILE", *NONS], 3),
    (["status", *NONS], 3),
    (["status", "--json", *NONS], 3),
    (["remove", *NONS], 3),
    (["run", "--config", "FILE", "--resync", "1", *NONS], 3),
    (["lab", "status", "--name", "Bad_Name"], 2),
    (["lab", "down", "--name", "Bad_Name"], 2),
    (["lab", "probe", "--name", "Bad_Name"], 2),
    (["lab", "exec", "--name", "Bad_Name", "web1", "--", "true"], 2),
    (["lab", "probe", "--name", "nsgx-not-up"], 3),
    (["lab", "exec", "--name", "nsgx-not-up", "web1", "--", "true"], 3),
]


@pytest.mark.parametrize("args,code", ARG_CASES, ids=["-".join(a[:3]) for a, _ in ARG_CASES])
def test_bad_arguments_and_missing_namespaces(inputs, tmp_path, args, code):
    r = run([inputs["valid"] if a == "FILE" else a for a in args], tmp_path)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    if "--json" in args:
        assert json.loads(r.stdout)["error"]["exit"] == code


def _replace_command(monkeypatch, command: str, func) -> None:
    """Make ``command`` run ``func`` (a command's func is bound when the parser is built)."""
    build_parser = cli.build_parser

    def build():
        p = build_parser()
        p._subparsers._group_actions[0].choices[command].set_defaults(func=func)
        return p

    monkeypatch.setattr(cli, "build_parser", build)


def test_unexpected_error_is_one_line_and_exit_3(monkeypatch, capsys):
    """A bug inside a command: exit 3, one line naming it, no traceback unless --debug."""
    def boom(args):
        raise KeyError("surprise")

    _replace_command(monkeypatch, "validate", boom)
    assert cli.main(["validate", "x.yaml"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: KeyError" in err and "--debug" in err
    assert cli.main(["--debug", "validate", "x.yaml"]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_missing_libnftables_binding_says_how_to_get_it(monkeypatch, capsys):
    def no_binding(args):
        raise ModuleNotFoundError("No module named 'nftables'", name="nftables")

    _replace_command(monkeypatch, "status", no_binding)
    assert cli.main(["status", "--json"]) == 3
    out = capsys.readouterr()
    assert "apt install python3-nftables" in out.err and "scripts/install.sh" in out.err
    assert json.loads(out.out)["error"]["exit"] == 3
