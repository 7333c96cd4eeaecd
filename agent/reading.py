"""Bounded, total reading and parsing of user files.

Every way a file can be hostile ends in a ``LoadError`` with the file, the line when known,
the field path and what is wrong -- never another exception, never unbounded memory or time:

- only regular files are read: FIFOs, devices, sockets and directories are refused after a
  ``stat`` (a FIFO is never opened, so a reader can never block on it);
- the size is checked before reading (default 64 MB), and no more than the limit is read
  even if the file grows in between;
- YAML is composed to its node graph first (aliases are shared nodes there, so composing is
  cheap); the graph's *expanded* size (every alias counted as a copy) and depth are bounded
  before any Python object is built, so an alias bomb ("billion laughs") is refused quickly;
- duplicate keys are an error in JSON and in YAML;
- integers are bounded in digits and strings in length before use, lists in length, and
  nesting in depth (JSON and YAML).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.errors import LoadError, Problem

try:  # the C parser is much faster on big files
    _YamlLoader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _YamlLoader = yaml.SafeLoader

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on one input file. ``max_bytes`` is configurable (``--max-file-size``)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = 64  # nesting of mappings and lists
    max_nodes: int = 5_000_000  # values after YAML alias expansion
    max_int_digits: int = 20
    max_string: int = 1_000_000  # characters in one string
    max_list: int = 1_000_000  # items in one list


DEFAULT_LIMITS = Limits()


def _fmt(loc: tuple) -> str:
    out = ""
    for part in loc[:12]:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out + ("..." if len(loc) > 12 else "")


def _err(filename: str, msg: str, line: int | None = None, loc: tuple = ()) -> LoadError:
    return LoadError([Problem(filename, _fmt(loc), msg, line)])


def read_file(path: Path, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The bytes of a regular file of at most ``limits.max_bytes``; anything else refused."""
    name = str(path)
    try:
        st = os.stat(path)  # follows symlinks: a link to /dev/zero is a character device
    except OSError as e:
        raise _err(name, f"cannot read file: {e.strerror}") from None
    kind = _not_regular(st.st_mode)
    if kind:
        raise _err(name, f"not a regular file ({kind}): only regular files are read")
    if st.st_size > limits.max_bytes:
        raise _err(name, f"file is {st.st_size} bytes, over the limit of {limits.max_bytes} "
                         "(raise it with --max-file-size)")
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO after the stat, open does not block;
        # the fstat below refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _err(name, f"cannot read file: {e.strerror}") from None
    try:
        kind = _not_regular(os.fstat(fd).st_mode)
        if kind:
            raise _err(name, f"not a regular file ({kind}): only regular files are read")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limits.max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limits.max_bytes:
                raise _err(name, f"file grew over the limit of {limits.max_bytes} bytes while being read")
        return b"".join(chunks)
    except OSError as e:
        raise _err(name, f"cannot read file: {e.strerror}") from None
    finally:
        os.close(fd)


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    for test, label in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return label
    return "not a regular file"


def decode(raw: bytes, filename: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _err(filename, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


# --- JSON --------------------------------------------------------------------------------


class _Oversized(str):
    """An integer literal with too many digits, kept as text until it can be reported with
    its field path (``int()`` of 5,000 digits raises, or takes long)."""


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def parse_json(text: str, filename: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    oversized = []

    def parse_int(s: str) -> Any:
        if len(s.lstrip("-")) > limits.max_int_digits:
            oversized.append(s)
            return _Oversized(s)
        return int(s)

    def parse_float(s: str) -> Any:
        if len(s) > 64:
            oversized.append(s)
            return _Oversized(s)
        return float(s)

    try:
        doc = json.loads(text, object_pairs_hook=_pairs, parse_int=parse_int, parse_float=parse_float)
    except json.JSONDecodeError as e:
        raise _err(filename, f"invalid JSON: {e.msg}", e.lineno) from None
    except _DuplicateKey as e:
        line = _json_key_line(text, e.key)
        raise _err(filename, f"duplicate key {e.key!r} (JSON keys must be unique in an object)", line) from None
    except RecursionError:
        raise _err(filename, f"nesting deeper than {limits.max_depth} levels") from None
    except ValueError as e:  # e.g. a string too long for a conversion
        raise _err(filename, f"invalid JSON: {e}") from None
    # A string (a list) cannot be longer than the text (than half of it): skip what cannot fail.
    check_bounds(doc, filename, limits, strings=len(text) > limits.max_string,
                 lists=len(text) > 2 * limits.max_list, numbers=bool(oversized))
    return doc


def _json_key_line(text: str, key: str) -> int | None:
    """The line of the second occurrence of ``"key":`` (best effort, for the message)."""
    needle = json.dumps(key)
    first = text.find(needle)
    second = text.find(needle, first + 1) if first >= 0 else -1
    return text.count("\n", 0, second) + 1 if second >= 0 else None


def check_bounds(doc: Any, filename: str, limits: Limits = DEFAULT_LIMITS, *, strings: bool = True,
                 lists: bool = True, numbers: bool = True) -> None:
    """Depth, list length, string length and integer digits of parsed data (iterative: a
    deep document cannot exhaust the stack here). Every violation is reported. The flags
    skip checks that cannot fail (the caller knows the text's length)."""
    problems: list[Problem] = []

    def scalar(v: Any, loc: tuple) -> None:
        if type(v) is _Oversized:
            problems.append(Problem(filename, _fmt(loc), (
                f"number with {len(v)} characters: too long (at most {limits.max_int_digits} digits)")))
        elif strings and len(v) > limits.max_string:
            problems.append(Problem(filename, _fmt(loc), (
                f"string of {len(v)} characters: longer than the limit of {limits.max_string}")))

    if type(doc) not in (dict, list):
        if type(doc) in (str, _Oversized):
            scalar(doc, ())
    stack: list[tuple[Any, tuple]] = [(doc, ())] if type(doc) in (dict, list) else []
    check_scalars = strings or numbers
    while stack and len(problems) < 50:
        node, loc = stack.pop()
        if len(loc) >= limits.max_depth:
            problems.append(Problem(filename, _fmt(loc), f"nesting deeper than {limits.max_depth} levels"))
            continue
        if type(node) is dict:
            pairs = node.items()
        else:
            if lists and len(node) > limits.max_list:
                problems.append(Problem(filename, _fmt(loc), (
                    f"list of {len(node)} items: longer than the limit of {limits.max_list}")))
                continue
            pairs = enumerate(node)
        for k, v in pairs:
            t = type(v)
            if t is dict or t is list:
                stack.append((v, loc + (k,)))
            elif check_scalars and (t is str or t is _Oversized):
                if t is _Oversized or (strings and len(v) > limits.max_string):
                    scalar(v, loc + (k,))
    if problems:
        raise LoadError(problems)


# --- YAML --------------------------------------------------------------------------------

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def parse_yaml(text: str, filename: str, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, Any]:
    """YAML text -> (data, root node). The node graph is checked before construction."""
    loader = _YamlLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            msg = getattr(e, "problem", None) or str(e)
            raise _err(filename, f"invalid YAML: {msg}", line) from None
        if root is None:
            return None, None
        check_yaml_nodes(root, filename, limits)
        try:
            data = loader.construct_document(root)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            raise _err(filename, f"invalid YAML: {getattr(e, 'problem', None) or e}", line) from None
        except (ValueError, TypeError, RecursionError) as e:
            raise _err(filename, f"invalid YAML value: {e}") from None
    finally:
        loader.dispose()
    # Strings and lists are bounded in the node walk; depth too. Nothing to re-check.
    return data, root


def check_yaml_nodes(root: yaml.Node, filename: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Expanded size, depth, duplicate keys, integer digits, string and list length of a
    composed YAML document. Aliases are shared nodes: each is walked once, its expanded size
    memoised, so the walk is linear in the text while the budget counts every copy."""
    problems: list[Problem] = []
    size: dict[int, int] = {}  # id(node) -> expanded size
    depth_of: dict[int, int] = {}  # id(node) -> height
    on_path: set[int] = set()

    def line(node: yaml.Node) -> int:
        return node.start_mark.line + 1

    # iterative post-order walk
    stack: list[tuple[yaml.Node, tuple, bool]] = [(root, (), False)]
    while stack:
        node, loc, done = stack.pop()
        nid = id(node)
        if done:
            on_path.discard(nid)
            kids = _children(node)
            size[nid] = 1 + sum(size.get(id(k), 0) for k, _ in kids)
            depth_of[nid] = 1 + max((depth_of.get(id(k), 0) for k, _ in kids), default=0)
            if size[nid] > limits.max_nodes:
                raise _err(filename, (
                    f"document expands to more than {limits.max_nodes} values (YAML aliases "
                    "repeat what they refer to): refused"), line(node), loc)
            if depth_of[nid] + len(loc) > limits.max_depth + 1:
                raise _err(filename, f"nesting deeper than {limits.max_depth} levels", line(node), loc)
            continue
        if nid in size:  # an alias of a node already measured
            if depth_of[nid] + len(loc) > limits.max_depth + 1:
                raise _err(filename, f"nesting deeper than {limits.max_depth} levels", line(node), loc)
            continue
        if nid in on_path:
            raise _err(filename, "recursive YAML alias (a node contains itself)", line(node), loc)
        if len(loc) > limits.max_depth:
            raise _err(filename, f"nesting deeper than {limits.max_depth} levels", line(node), loc)
        if isinstance(node, yaml.ScalarNode):
            if node.tag in (_INT_TAG, _FLOAT_TAG) and len(node.value) > (
                    limits.max_int_digits if node.tag == _INT_TAG else 64):
                problems.append(Problem(filename, _fmt(loc), (
                    f"number with {len(node.value)} characters: too long (at most "
                    f"{limits.max_int_digits} digits)"), line(node)))
            elif len(node.value) > limits.max_string:
                problems.append(Problem(filename, _fmt(loc), (
                    f"string of {len(node.value)} characters: longer than the limit of "
                    f"{limits.max_string}"), line(node)))
            size[nid], depth_of[nid] = 1, 0
            continue
        if isinstance(node, yaml.SequenceNode) and len(node.value) > limits.max_list:
            raise _err(filename, f"list of {len(node.value)} items: longer than the limit of "
                                 f"{limits.max_list}", line(node), loc)
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE_TAG:
                    if k.value in seen:
                        problems.append(Problem(filename, _fmt(loc + (k.value,)), (
                            f"duplicate key {k.value!r} (first at line {seen[k.value]}; keys "
                            "must be unique in a mapping)"), line(k)))
                    seen.setdefault(k.value, line(k))
        on_path.add(nid)
        stack.append((node, loc, True))
        for child, key in reversed(_children(node)):
            stack.append((child, loc + (key,), False))
    if problems:
        raise LoadError(sorted(problems, key=lambda p: p.line or 0))


def _children(node: yaml.Node) -> list[tuple[yaml.Node, Any]]:
    if isinstance(node, yaml.SequenceNode):
        return [(v, i) for i, v in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        out = []
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else "?"
            out.append((k, key))
            out.append((v, key))
        return out
    return []


def parse_text(text: str, filename: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """YAML or JSON text -> Python data (JSON for .json files)."""
    if filename.endswith(".json"):
        return parse_json(text, filename, limits)
    return parse_yaml(text, filename, limits)[0]
