"""The input options every command that reads desired-state files shares: several FILEs
(merged), ``--strict``, ``--parameters`` (ARM), ``--nsg`` (a bare rule list) and
``--max-file-size``; and loading with them."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from nsg_agent.desired.reading import DEFAULT_MAX_BYTES, Limits  # light: no parser, no model

if TYPE_CHECKING:
    from nsg_agent.desired.loader import LoadedState

FILES_HELP = ("desired-state files and Azure exports (NSG, rule, VNet, NIC, ASG, route-table, "
              "list, effective-NSG, ARM template); several are merged into one desired state")


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b")
    mult = units.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in units else t
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 12 or int(digits) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 64M, 1048576)")
    return int(digits) * mult


def add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true",
                   help="treat warnings (unknown keys, unenforced associations, ...) as errors")
    p.add_argument("--parameters", action="append", default=[], metavar="FILE",
                   help="an ARM parameters file for the templates among the inputs (repeatable)")
    p.add_argument("--nsg", metavar="NAME", default=None,
                   help="the NSG of a bare rule list (az network nsg rule list) whose ids do not name it")
    p.add_argument("--max-file-size", type=_size, default=DEFAULT_MAX_BYTES, metavar="SIZE",
                   help="refuse input files larger than this (default 64M)")


def add_files(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("file", metavar="FILE", nargs="+" if required else "*", help=FILES_HELP)
    add_input_options(p)


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"strict": getattr(args, "strict", False), "nsg": getattr(args, "nsg", None),
            "parameters": list(getattr(args, "parameters", None) or []),
            "limits": Limits(max_bytes=getattr(args, "max_file_size", DEFAULT_MAX_BYTES))}


def load_inputs(args: argparse.Namespace, files: Any = None) -> LoadedState:
    from nsg_agent.desired.loader import load  # imported when a command runs: --help stays fast

    return load(files if files is not None else args.file, **load_options(args))


def files_label(files: Any) -> str:
    if isinstance(files, (list, tuple)):
        return " ".join(str(f) for f in files)
    return str(files)
