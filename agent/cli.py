"""The ``nsg-agent`` command line. Each command group lives in ``agent.commands.<group>``
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
import os
import sys

from agent import __version__
from agent.errors import LoadError

EXIT_OK, EXIT_DENY, EXIT_INVALID, EXIT_FAILED = 0, 1, 2, 3
EXIT_MISMATCH = EXIT_DENY

# Modules that contribute sub-commands: each has register(subparsers) and sets
# ``func(args) -> int`` on its parsers.
COMMAND_MODULES = ("agent.commands.inspect", "agent.commands.enforce", "agent.commands.lab")


class CommandFailed(Exception):
    """A command could not do its job for a reason outside the input file."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nsg-agent",
        description="Enforce Azure Network Security Group semantics on Linux with nftables.",
    )
    parser.add_argument("--version", action="version", version=f"nsg-agent {__version__}")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LoadError as e:
        print(f"nsg-agent: {e}", file=sys.stderr)
        return EXIT_INVALID
    except CommandFailed as e:
        print(f"nsg-agent: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. "| head"): stop quietly, as Unix tools do. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # as if killed by SIGPIPE: the output, and so the answer, was cut


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
