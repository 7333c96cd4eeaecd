"""Bounded, total reading and parsing of user files.

Every way a file can be hostile ends in a ``LoadError`` with the file, the line when known,
the field path and what is wrong -- never another exception, never unbounded memory or time:

- only regular files are read: FIFOs, devices, sockets and directories are refused after a
  ``stat`` (a FIFO is never opened, so a reader can never block on it);
- the size is checked before reading (default 64 MB), and no more than the limit is read
  even if the file grows in between;
- YAML with anchors, or longer than the node limit in characters, has its event stream
  checked first, in constant memory (aliases are not expanded there): the number of values
  as written, the *expanded* size (every alias counted as a copy) and depth are bounded
  before any Python object is built, so an alias bomb ("billion laughs") or a huge YAML file
  is refused quickly; other YAML is built directly (it cannot break those bounds), duplicate
  keys and over-long numbers caught as it is built;
- duplicate keys are an error in JSON and in YAML;
- integers are bounded in digits and strings in length before use, lists in length, and
  nesting in depth (JSON and YAML).
"""

from __future__ import annotations

import functools
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from nsg_agent.errors import LoadError, Problem

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
    max_yaml_nodes: int = 1_000_000  # YAML values as written (each costs ~0.5 kB to build)
    max_json_values: int = 10_000_000  # an upper bound counted on the text before parsing
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

    # Every value but the first follows a ',' or opens a container: an upper bound on the
    # number of values, counted in C before anything is built.
    bound = text.count(",") + text.count("[") + text.count("{") + 1
    if bound > limits.max_json_values:
        raise _err(filename, f"up to {bound} JSON values: more than the limit of {limits.max_json_values}")
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
        pairs: Iterable[tuple[Any, Any]]
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


def parse_yaml(text: str, filename: str, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, None]:
    """YAML text -> data. A text that may hold more values than the limit, or aliases (an
    ``&anchor``), is checked on its event stream first (constant memory, aliases not
    expanded), so nothing is built for a document that breaks a bound. Every value takes at
    least one character, so a shorter text without anchors cannot: it is built directly, with
    duplicate keys and over-long numbers caught as it is built, then its depth checked."""
    if len(text) > limits.max_yaml_nodes or "&" in text:
        check_yaml_events(text, filename, limits)
    try:
        data = yaml.load(text, Loader=_bounded_loader(limits))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        prefix = "" if problem.startswith("duplicate key") else "invalid YAML: "
        raise _err(filename, prefix + problem, line) from None
    except (ValueError, TypeError, RecursionError, OverflowError) as e:
        raise _err(filename, f"invalid YAML value: {e}") from None
    check_bounds(data, filename, limits, strings=len(text) > limits.max_string,
                 lists=len(text) > limits.max_list, numbers=True)
    return data, None


@functools.lru_cache(maxsize=8)
def _bounded_loader(limits: Limits) -> type:
    """The C-parser safe loader, refusing duplicate keys and keeping over-long numbers as
    text (``_Oversized``: reported with their path by check_bounds, never ``int()``-ed)."""

    class BoundedLoader(_YamlLoader):  # type: ignore[misc, valid-type]
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key, _ in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                        if key.value in seen:
                            raise yaml.constructor.ConstructorError(
                                None, None, f"duplicate key {key.value!r} (first at line "
                                f"{seen[key.value]}; keys must be unique in a mapping)", key.start_mark)
                        seen[key.value] = key.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

        def construct_yaml_int(self, node):
            if len(node.value) > limits.max_int_digits:
                return _Oversized(node.value)
            return super().construct_yaml_int(node)

        def construct_yaml_float(self, node):
            if len(node.value) > 64:
                return _Oversized(node.value)
            return super().construct_yaml_float(node)

    BoundedLoader.add_constructor(_INT_TAG, BoundedLoader.construct_yaml_int)
    BoundedLoader.add_constructor(_FLOAT_TAG, BoundedLoader.construct_yaml_float)
    return BoundedLoader


class _Open:
    """A mapping or sequence whose end event has not come yet."""

    __slots__ = ("mapping", "anchor", "loc", "line", "size", "height", "children", "key", "keys")

    def __init__(self, mapping: bool, anchor: str | None, loc: tuple, line: int):
        self.mapping, self.anchor, self.loc, self.line = mapping, anchor, loc, line
        self.size, self.height, self.children = 1, 0, 0
        self.key: Any = None
        self.keys: dict[str, int] = {}


_RESOLVER = yaml.resolver.Resolver()


def check_yaml_events(text: str, filename: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Bounds of a YAML document from its event stream: the number of nodes as written, the
    expanded size (an alias counts as a copy of what it names) and depth, list length,
    string length, integer digits, duplicate keys, undefined and recursive aliases. Memory
    stays constant whatever the document (aliases are never expanded here)."""
    problems: list[Problem] = []
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (expanded size, height)
    stack: list[_Open] = []
    events = 0

    def fail(msg: str, line: int, loc: tuple) -> LoadError:
        return _err(filename, msg, line, loc)

    try:
        for ev in yaml.parse(text, Loader=_YamlLoader):
            if not isinstance(ev, (yaml.ScalarEvent, yaml.AliasEvent, yaml.SequenceStartEvent,
                                   yaml.MappingStartEvent, yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                continue
            line = ev.start_mark.line + 1
            if isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                done = stack.pop()
                size, height, anchor = done.size, done.height, done.anchor
                if anchor is not None:
                    anchors[anchor] = (size, height)
                node_loc = done.loc
            else:
                events += 1
                if events > limits.max_yaml_nodes:
                    raise fail(f"more than {limits.max_yaml_nodes} YAML values: too large for YAML "
                               "(write it as JSON)", line, ())
                parent = stack[-1] if stack else None
                is_key = parent is not None and parent.mapping and parent.children % 2 == 0
                if parent is None:
                    node_loc = ()
                elif parent.mapping:
                    node_loc = parent.loc + ((parent.key if not is_key else "?"),)
                else:
                    node_loc = parent.loc + (parent.children,)
                if isinstance(ev, yaml.AliasEvent):
                    if any(o.anchor == ev.anchor for o in stack):
                        raise fail("recursive YAML alias (a node contains itself)", line, node_loc)
                    if ev.anchor not in anchors:
                        raise fail(f"undefined YAML alias *{ev.anchor}", line, node_loc)
                    size, height = anchors[ev.anchor]
                elif isinstance(ev, yaml.ScalarEvent):
                    size, height = 1, 0
                    value = ev.value
                    if ev.anchor is not None:
                        anchors[ev.anchor] = (1, 0)
                    tag = ev.tag if ev.tag not in (None, "!") else (
                        _RESOLVER.resolve(yaml.ScalarNode, value, ev.implicit) if ev.implicit[0] else None)
                    if tag in (_INT_TAG, _FLOAT_TAG) and len(value) > (
                            limits.max_int_digits if tag == _INT_TAG else 64):
                        problems.append(Problem(filename, _fmt(node_loc), (
                            f"number with {len(value)} characters: too long (at most "
                            f"{limits.max_int_digits} digits)"), line))
                    elif len(value) > limits.max_string:
                        problems.append(Problem(filename, _fmt(node_loc), (
                            f"string of {len(value)} characters: longer than the limit of "
                            f"{limits.max_string}"), line))
                    if is_key and tag != _MERGE_TAG:
                        assert parent is not None  # is_key: the scalar is a key of the open mapping
                        if value in parent.keys:
                            problems.append(Problem(filename, _fmt(parent.loc + (value,)), (
                                f"duplicate key {value!r} (first at line {parent.keys[value]}; keys "
                                "must be unique in a mapping)"), line))
                        parent.keys.setdefault(value, line)
                        parent.key = value
                else:  # a mapping or sequence starts
                    if len(stack) >= limits.max_depth:
                        raise fail(f"nesting deeper than {limits.max_depth} levels", line, node_loc)
                    if parent is not None:
                        parent.children += 1
                    stack.append(_Open(isinstance(ev, yaml.MappingStartEvent), ev.anchor, node_loc, line))
                    continue
                if parent is not None:
                    parent.children += 1
                    if not parent.mapping and parent.children > limits.max_list:
                        raise fail(f"list of more than {limits.max_list} items: longer than the limit",
                                   parent.line, parent.loc)
            # a node is complete: add it to its parent
            if stack:
                top = stack[-1]
                top.size += size
                top.height = max(top.height, height + 1)
                if top.size > limits.max_nodes:
                    raise fail(f"document expands to more than {limits.max_nodes} values (YAML "
                               "aliases repeat what they refer to): refused", line, top.loc)
                if len(stack) + height > limits.max_depth:
                    raise fail(f"nesting deeper than {limits.max_depth} levels", line, node_loc)
            elif size > limits.max_nodes:
                raise fail(f"document expands to more than {limits.max_nodes} values", line, ())
            if len(problems) >= 50:
                break
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise _err(filename, f"invalid YAML: {getattr(e, 'problem', None) or e}",
                   mark.line + 1 if mark is not None else None) from None
    if problems:
        raise LoadError(sorted(problems, key=lambda p: p.line or 0))


def parse_text(text: str, filename: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """YAML or JSON text -> Python data (JSON for .json files)."""
    if filename.endswith(".json"):
        return parse_json(text, filename, limits)
    return parse_yaml(text, filename, limits)[0]
