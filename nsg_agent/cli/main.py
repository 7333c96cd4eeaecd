"""The ``nsg-agent`` command line. Each command group lives in ``nsg_agent.cli.<group>``
and registers its sub-commands here; this module only builds the parser and maps errors to
exit codes.

Exit codes (stable, documented in the README):
  0  success; for ``verify``: the flow is allowed
  1  ``verify``: the flow is denied; ``lab probe``: a cell differs from the prediction
  2  the input is invalid (file problems, bad arguments)
  3  the operation failed (kernel refused a batch, namespace missing, not root, ...)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

from nsg_agent import __version__
from nsg_agent.errors import (
    EXIT_FAILED,
    LoadError,
    NsgAgentError,
)

# Modules that contribute sub-commands: each has register(subparsers) and sets
# ``func(args) -> int`` on its parsers.
COMMAND_MODULES = ("nsg_agent.cli.inspect", "nsg_agent.cli.enforce", "nsg_agent.cli.fleet", "nsg_agent.cli.lab",
                   "nsg_agent.cli.flows", "nsg_agent.cli.tooling")


NFTABLES_MISSING = ("the libnftables Python binding ('import nftables') is not installed: "
                    "apt install python3-nftables (Debian/Ubuntu), or run scripts/install.sh, "
                    "which also exposes it to the agent's virtual environment")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nsg-agent",
        description="Enforce Azure Network Security Group semantics on Linux with nftables.",
    )
    parser.add_argument("--version", action="version", version=f"nsg-agent {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an unexpected error, print the Python traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that command group is not built yet
                continue
            raise
        module.register(sub)
    return parser


def _wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False)) or getattr(args, "format", None) == "json"


def _report(args: argparse.Namespace, code: int, kind: str, message: str, problems: list | None = None) -> int:
    """One line on stderr; with --json, the same as a JSON object on stdout."""
    print(f"nsg-agent: {message}", file=sys.stderr)
    if _wants_json(args):
        body: dict = {"ok": False, "error": {"exit": code, "kind": kind, "message": message}}
        if problems is not None:
            body["error"]["problems"] = problems
        try:
            print(json.dumps(body, indent=2))
        except BrokenPipeError:  # pragma: no cover - the reader is gone
            pass
    return code


def main(argv: list[str] | None = None) -> int:
    """Run one command. The exit code contract holds whatever happens: 0/1 as the command
    says, 2 for invalid input, 3 for a failed operation or an unexpected error (one line;
    ``--debug`` for the traceback). Nothing else escapes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LoadError as e:
        return _report(args, e.exit_code, e.kind, str(e), [p.as_dict() for p in e.problems])
    except NsgAgentError as e:
        return _report(args, e.exit_code, e.kind, str(e))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. "| head"): stop quietly, as Unix tools do. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # as if killed by SIGPIPE: the output, and so the answer, was cut
    except ModuleNotFoundError as e:
        if e.name == "nftables":
            return _report(args, EXIT_FAILED, "failed", NFTABLES_MISSING)
        return _unexpected(args, e)
    except Exception as e:  # noqa: BLE001 - the contract: never a traceback, exit 3
        return _unexpected(args, e)


def _unexpected(args: argparse.Namespace, e: BaseException) -> int:
    if getattr(args, "debug", False):
        traceback.print_exc()
    where = ""
    tb = traceback.extract_tb(e.__traceback__)
    if tb:
        last = tb[-1]
        where = f" at {os.path.basename(last.filename)}:{last.lineno}"
    return _report(args, EXIT_FAILED, "internal",
                   f"internal error: {type(e).__name__}: {e}{where} (a bug; run with --debug for the traceback)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
