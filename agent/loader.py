"""Reading desired-state files: YAML or JSON in, a validated DesiredState out.

This is the one module that reads user files. Every problem in a file is reported together,
each with the file, the line (when the parser can tell), the field path and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import ValidationError

from agent.errors import LoadError, Problem
from agent.model import DesiredState
from agent.servicetags import ServiceTagIndex, parse_service_tag_file, parse_service_tags

Loc = tuple  # a field path as a tuple of keys and indexes

try:  # the C loader is much faster on big files
    _YamlLoader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _YamlLoader = yaml.SafeLoader


@dataclass(frozen=True)
class LoadedState:
    """A validated desired state with the service tags it references."""

    state: DesiredState
    tags: ServiceTagIndex
    path: Path
    sha256: str
    kind: str = "desired-state"  # or what was imported: "nsg", "arm-template", "service-tags", ...
    files: tuple[Path, ...] = ()  # every file read: the state file and its service-tag files
    warnings: tuple[Problem, ...] = ()


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# --- line numbers ------------------------------------------------------------------------


class LineMap:
    """Maps a field path of the parsed document to a 1-based line number."""

    def __init__(self, lines: dict[Loc, int] | None = None, text: str | None = None):
        self._lines = lines or {}
        self._text = text  # composed on the first lookup: only files with problems need it

    @classmethod
    def from_text(cls, text: str) -> "LineMap":
        """The line map of a YAML/JSON text. Composing a big file takes a while, so it is
        done when a line is first asked for (a valid file never asks)."""
        return cls(text=text)

    @staticmethod
    def _compose(text: str) -> dict[Loc, int]:
        try:
            root = yaml.compose(text, Loader=_YamlLoader)
        except yaml.YAMLError:
            return {}
        lines: dict[Loc, int] = {}

        def walk(node: yaml.Node, loc: Loc) -> None:
            lines[loc] = node.start_mark.line + 1
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    key = k.value if isinstance(k, yaml.ScalarNode) else None
                    if key is not None:
                        lines[loc + (key,)] = k.start_mark.line + 1
                        walk(v, loc + (key,))
            elif isinstance(node, yaml.SequenceNode):
                for i, v in enumerate(node.value):
                    walk(v, loc + (i,))

        if root is not None:
            walk(root, ())
        return lines

    def line(self, loc: Loc, doc: Any = None) -> int | None:
        """The line of ``loc``; with ``doc``, ``loc`` is first translated from the flat shape
        (see resolve_original_loc). Falls back to the nearest enclosing field."""
        if self._text is not None:
            self._lines, self._text = self._compose(self._text), None
        actual = resolve_original_loc(doc, loc) if doc is not None else tuple(loc)
        while actual:
            if actual in self._lines:
                return self._lines[actual]
            actual = actual[:-1]
        return self._lines.get(())


def resolve_original_loc(doc: Any, loc: Loc) -> Loc:
    """Translate a path in the flat shape to the path in the document as written: a field
    that the document keeps under Azure's ``properties`` gets that segment inserted (also a
    missing field, when the object uses the nested shape: that is where it belongs)."""
    out: list = []
    node = doc
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str):
            props = node.get("properties")
            if part not in node and isinstance(props, dict) and (part in props or part != "name"):
                out.append("properties")
                node = props
            out.append(part)
            node = node.get(part) if isinstance(node, dict) else None
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        else:
            out.append(part)
            node = None
    return tuple(out)


def _node_at(doc: Any, loc: Loc) -> Any:
    node = doc
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return None
    return node


def _problem(filename: str, loc: Loc, msg: str, doc: Any, lines: "LineMap") -> Problem:
    """A Problem at ``loc`` (a path in the document as written, before ``properties`` is
    re-inserted): the reported path is the one a user sees in their file."""
    actual = resolve_original_loc(doc, _strip_validator_names(tuple(loc)))
    if msg.startswith("ARM template expression"):
        # A reference object ({"id": "[variables('asgId')]"}): point at the key holding it.
        node = _node_at(doc, actual)
        if isinstance(node, dict):
            key = next((k for k, v in node.items() if isinstance(v, str) and repr(v) in msg), None)
            if key is not None:
                actual = actual + (key,)
    return Problem(filename, format_loc(actual), msg, lines.line(actual))


# --- parsing -----------------------------------------------------------------------------


def parse_text(text: str, filename: str) -> Any:
    """YAML or JSON text -> Python data. JSON is tried first for .json files."""
    if filename.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise LoadError([Problem(filename, "", f"invalid JSON: {e.msg}", e.lineno)]) from None
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        msg = getattr(e, "problem", None) or str(e)
        raise LoadError([Problem(filename, "", f"invalid YAML: {msg}", line)]) from None


def pydantic_problems(err: ValidationError, filename: str, doc: Any, lines: LineMap,
                      translate: Callable[[Loc], Loc] = lambda loc: loc) -> list[Problem]:
    problems = []
    for e in err.errors(include_url=False):
        loc = translate(_strip_validator_names(tuple(e["loc"])))
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] == "missing":
            msg = "required field is missing"
        problems.append(_problem(filename, loc, msg, doc, lines))
    # pydantic reports per model; a reader wants them in file order.
    return sorted(problems, key=lambda p: p.line if p.line is not None else 1 << 30)


def _strip_validator_names(loc: Loc) -> Loc:
    # pydantic adds function names for Annotated validators in some locations
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def load(path: str | Path) -> LoadedState:
    """Load and validate a desired-state file (or an Azure export, see agent.importers)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LoadError([Problem(str(path), "", f"cannot read file: {e.strerror}")]) from None
    return load_bytes(raw, path)


def load_bytes(raw: bytes, path: Path) -> LoadedState:
    filename = str(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LoadError([Problem(filename, "", f"not UTF-8 text ({e.reason} at byte {e.start})")]) from None
    doc = parse_text(text, filename)
    lines = LineMap.from_text(text)

    from agent import importers, validate  # local import: both import this module

    imported = importers.detect(doc, filename)
    if imported.problems:
        raise LoadError([_problem(filename, loc, msg, doc, lines) for loc, msg in imported.problems])
    digest = hashlib.sha256(raw).hexdigest()
    if imported.kind == "service-tags":
        index, tag_problems = parse_service_tags(doc, filename)
        if tag_problems:
            raise LoadError([_problem(filename, _loc_of(p), m, doc, lines) for p, m in tag_problems])
        return LoadedState(DesiredState(), index, path, digest, "service-tags", (path,))

    try:
        state = DesiredState.model_validate(imported.doc)
    except ValidationError as err:
        raise LoadError(pydantic_problems(err, filename, doc, lines, imported.translate)) from None

    tags, files, problems = _load_tag_files(state, path)
    problems += [_problem(filename, imported.translate(_strip_validator_names(loc)), msg, doc, lines)
                 for loc, msg in validate.check(state, tags)]
    if problems:
        raise LoadError(problems)
    warnings = tuple(
        [_problem(filename, loc, msg, doc, lines) for loc, msg in imported.warnings]
        + [_problem(filename, imported.translate(loc), msg, doc, lines)
           for loc, msg in validate.warnings(state, tags)])
    return LoadedState(state, tags, path, digest, imported.kind, (path, *files), warnings)


def _loc_of(path: str) -> Loc:
    out: list = []
    for part in path.replace("]", "").replace("[", ".").split("."):
        if part:
            out.append(int(part) if part.isdigit() else part)
    return tuple(out)


def _load_tag_files(state: DesiredState, path: Path) -> tuple[ServiceTagIndex, list[Path], list[Problem]]:
    index = ServiceTagIndex()
    files: list[Path] = []
    problems: list[Problem] = []
    for i, name in enumerate(state.serviceTags.files):
        tag_path = (path.parent / name) if not Path(name).is_absolute() else Path(name)
        files.append(tag_path)
        where = f"serviceTags.files[{i}]"
        try:
            raw = tag_path.read_bytes()
        except OSError as e:
            problems.append(Problem(str(path), where, f"cannot read service-tag file {str(tag_path)!r}: {e.strerror}"))
            continue
        decode = _decode_json if tag_path.suffix == ".json" else _decode_yaml
        try:  # an unchanged file (same path and sha256) is not parsed again
            sub, sub_problems = parse_service_tag_file(raw, str(tag_path), decode)
        except (ValueError, yaml.YAMLError) as e:
            problems.append(Problem(str(tag_path), "", f"invalid service-tag file: {e}"))
            continue
        problems += [Problem(str(tag_path), p, m) for p, m in sub_problems]
        index = index.merged(sub)
    if state.serviceTags.internet:
        internet_path, internet, internet_problems = _load_internet_file(state.serviceTags.internet, path)
        files.append(internet_path)
        problems += internet_problems
        index = index.with_internet(internet)
    return index, files, problems


def _load_internet_file(name: str, path: Path) -> tuple[Path, Any, list[Problem]]:
    """serviceTags.internet: Azure's expansion of the Internet tag (see agent.builtin_tags)."""
    from agent.builtin_tags import parse_internet_file

    internet_path = (path.parent / name) if not Path(name).is_absolute() else Path(name)
    try:
        raw = internet_path.read_bytes()
    except OSError as e:
        return internet_path, None, [Problem(str(path), "serviceTags.internet",
                                             f"cannot read Internet-tag file {str(internet_path)!r}: {e.strerror}")]
    internet, found = parse_internet_file(raw, str(internet_path))
    return internet_path, internet, [Problem(str(internet_path), p, m) for p, m in found]


def _decode_json(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8-sig"))


def _decode_yaml(raw: bytes) -> Any:
    return yaml.load(raw.decode("utf-8-sig"), Loader=_YamlLoader)
