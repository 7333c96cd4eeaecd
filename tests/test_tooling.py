"""Shell completion and the man page come from the parser itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsg_agent.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_bash_completion_knows_every_command_and_option():
    r = _run("completion", "bash")
    assert r.returncode == 0
    for word in ("validate", "effective-rules", "verify", "plan", "apply", "confirm", "status", "lab",
                 "--detailed-exitcode", "--confirm", "--netns"):
        assert word in r.stdout, word


def test_zsh_completion():
    r = _run("completion", "zsh")
    assert r.returncode == 0 and r.stdout.startswith("#compdef nsg-agent")


def test_manpage_documents_the_commands():
    r = _run("manpage")
    assert r.returncode == 0
    assert r.stdout.startswith(".TH NSG\\-AGENT")
    assert "verify" in r.stdout and "effective\\-rules" in r.stdout


def test_log_format_auto_is_console_on_a_terminal_and_json_otherwise(tmp_path):
    import io
    import json as _json

    from nsg_agent.logging import configure, get_logger, wants_json

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_json("auto", io.StringIO()) and not wants_json("auto", Tty())
    assert wants_json("json", Tty()) and not wants_json("console", io.StringIO())
    out = io.StringIO()
    configure("info", out, fmt="auto")
    get_logger().info("config.applied", file="x.yaml")
    assert _json.loads(out.getvalue())["event"] == "config.applied"
    tty = Tty()
    configure("info", tty, fmt="auto")
    get_logger().info("config.applied", file="x.yaml")
    assert "config.applied" in tty.getvalue() and not tty.getvalue().startswith("{")
    configure("info")


def test_help_does_not_import_the_engine():
    """--help builds the parser only: no pydantic model, no pyroute2, no semantics engine
    (what made it slow), so it answers in well under 150 ms on this machine."""
    code = ("import sys; from nsg_agent.cli.main import build_parser; build_parser(); "
            "print(','.join(m for m in ('nsg_agent.desired.model', 'nsg_agent.semantics.resolver', 'pyroute2', 'pydantic', 'nsg_agent.desired.loader') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr
