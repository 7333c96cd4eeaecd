"""Operator tooling generated from the parser itself: shell completion (shtab) and the man
page (argparse-manpage), so neither can drift from the real options. scripts/install.sh and
scripts/provision.sh install both."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "completion", help="print a shell completion script (bash, zsh or tcsh)",
        description="Print the completion script for SHELL, generated from nsg-agent's own "
                    "parser. bash: nsg-agent completion bash > "
                    "/usr/share/bash-completion/completions/nsg-agent")
    p.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    p.set_defaults(func=cmd_completion)

    p = subparsers.add_parser("manpage", help="print the nsg-agent(1) man page (roff)",
                              description="Print the man page, generated from the parser: "
                                          "nsg-agent manpage > /usr/local/share/man/man1/nsg-agent.1")
    p.set_defaults(func=cmd_manpage)


def _parser() -> argparse.ArgumentParser:
    from nsg_agent.cli.main import build_parser

    return build_parser()


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    sys.stdout.write(shtab.complete(_parser(), shell=args.shell))
    return 0


def cmd_manpage(args: argparse.Namespace) -> int:
    from argparse_manpage.manpage import Manpage

    parser = _parser()
    parser.man_short_description = "enforce Azure Network Security Group semantics with nftables"
    sys.stdout.write(str(Manpage(parser)))
    return 0
