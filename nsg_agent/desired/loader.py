"""Reading desired-state files: YAML or JSON in, a validated DesiredState out.

This is the one module that reads user files. Every problem in a file is reported together,
each with the file, the line (when the parser can tell), the field path and what is wrong.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml
from pydantic import ValidationError

from nsg_agent.desired import reading
from nsg_agent.desired.importers import RULES_ONLY
from nsg_agent.desired.model import DesiredState, flatten_properties
from nsg_agent.desired.reading import DEFAULT_LIMITS, Limits
from nsg_agent.desired.servicetags import ServiceTagIndex, parse_service_tag_file, parse_service_tags
from nsg_agent.errors import LoadError, Problem

Loc = tuple  # a field path as a tuple of keys and indexes

_YamlLoader = reading._YamlLoader


@dataclass(frozen=True)
class LoadedState:
    """A validated desired state with the service tags it references."""

    state: DesiredState
    tags: ServiceTagIndex
    path: Path
    sha256: str
    kind: str = "desired-state"  # or what was imported: "nsg", "arm-template", "service-tags", ...
    files: tuple[Path, ...] = ()  # every file read: inputs, referenced files, tag and parameter files
    warnings: tuple[Problem, ...] = ()
    tag_files: tuple[Path, ...] = ()  # the service-tag files among ``files``


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


_DOC_ALIASES = {"peerings": ("virtualNetworkPeerings",)}


def resolve_original_loc(doc: Any, loc: Loc) -> Loc:
    """Translate a path in the flat shape to the path in the document as written: a field
    that the document keeps under Azure's ``properties`` gets that segment inserted (also a
    missing field, when the object uses the nested shape: that is where it belongs)."""
    out: list = []
    node = doc
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str):
            props = node.get("properties")
            for azure_key in _DOC_ALIASES.get(part, ()):  # the model's name for Azure's key
                if part not in node and not (isinstance(props, dict) and part in props) and (
                        azure_key in node or isinstance(props, dict) and azure_key in props):
                    part = azure_key
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


def parse_text(text: str, filename: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """YAML or JSON text -> Python data (bounded, duplicate keys refused; see nsg_agent.desired.reading)."""
    return reading.parse_text(text, filename, limits)


def _pydantic_messages(err: ValidationError) -> list[tuple[Loc, str]]:
    out = []
    for e in err.errors(include_url=False):
        loc = _strip_validator_names(tuple(e["loc"]))
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] == "missing":
            msg = "required field is missing"
        out.append((loc, msg))
    return out


def pydantic_problems(err: ValidationError, filename: str, doc: Any, lines: LineMap,
                      translate: Callable[[Loc], Loc] = lambda loc: loc) -> list[Problem]:
    problems = [_problem(filename, translate(loc), msg, doc, lines) for loc, msg in _pydantic_messages(err)]
    # pydantic reports per model; a reader wants them in file order.
    return sorted(problems, key=lambda p: p.line if p.line is not None else 1 << 30)


def _strip_validator_names(loc: Loc) -> Loc:
    # pydantic adds function names for Annotated validators in some locations
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))


Paths = "str | Path | Sequence[str | Path]"


def load(paths: str | Path | Sequence[str | Path], *, strict: bool = False, nsg: str | None = None,
         parameters: Sequence[str | Path] = (), limits: Limits = DEFAULT_LIMITS) -> LoadedState:
    """Load and validate one or several desired-state files or Azure exports (see
    nsg_agent.desired.importers), merged into one desired state. ``strict``: warnings are errors.
    ``nsg``: the NSG of a bare rule list; ``parameters``: ARM parameters files."""
    reader = _Reader(limits, nsg, parameters)
    for p in [paths] if isinstance(paths, (str, Path)) else list(paths):
        reader.add_path(Path(p))
    return reader.finish(strict)


def load_bytes(raw: bytes, path: Path, *, strict: bool = False, nsg: str | None = None,
               parameters: Sequence[str | Path] = (), limits: Limits = DEFAULT_LIMITS) -> LoadedState:
    """``load`` of content already read (files it references are read from disk)."""
    reader = _Reader(limits, nsg, parameters)
    reader.add_bytes(raw, Path(path))
    return reader.finish(strict)


COLLECTIONS = ("virtualNetworks", "networkInterfaces", "applicationSecurityGroups",
               "networkSecurityGroups", "routeTables")
_LABEL = {"virtualNetworks": "VNet", "networkInterfaces": "NIC", "applicationSecurityGroups": "ASG",
          "networkSecurityGroups": "NSG", "routeTables": "route table"}
MAX_FILES = 256


@dataclass
class _Source:
    """One input file: as written (for lines and paths), and as imported."""

    path: Path
    raw: bytes
    doc: Any
    lines: LineMap
    imported: Any  # importers.Imported
    items: dict = field(default_factory=dict)  # collection -> [(index in imported.doc, item)] or _Raw
    sections: dict = field(default_factory=dict)  # other top-level keys

    def problem(self, loc: Loc, msg: str) -> Problem:
        return _problem(str(self.path), self.imported.translate(_strip_validator_names(tuple(loc))),
                        msg, self.doc, self.lines)


@dataclass(frozen=True)
class _Raw:
    value: Any  # a collection that is not a list: the model reports its type


def _flat_get(item: dict, key: str) -> Any:
    props = item.get("properties")
    return props[key] if isinstance(props, dict) and key in props else item.get(key)


def _item_name(item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    name = item.get("name")
    return name if isinstance(name, str) else None


def _is_file_ref(item: Any) -> bool:
    return isinstance(item, dict) and set(item) == {"file"}


class _Reader:
    def __init__(self, limits: Limits, nsg: str | None, parameters: Sequence[str | Path]):
        from nsg_agent.desired import importers

        self.limits = limits
        self.sources: list[_Source] = []
        self.tag_sources: list[tuple[_Source, ServiceTagIndex]] = []
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.seen: set[Path] = set()
        self.param_paths = [Path(p) for p in parameters]
        docs = []
        for pp in self.param_paths:
            try:
                raw = reading.read_file(pp, limits)
                doc = parse_text(reading.decode(raw, str(pp)), str(pp), limits)
            except LoadError as e:
                self.problems += e.problems
                continue
            if not (isinstance(doc, dict) and isinstance(doc.get("parameters"), dict)):
                self.problems.append(Problem(str(pp), "", (
                    "not an ARM parameters file: expected {\"parameters\": {NAME: {\"value\": ...}}}")))
                continue
            docs.append(doc)
        self.options = importers.Options(nsg=nsg, parameters=tuple(docs))

    # reading -----------------------------------------------------------------------------
    def add_path(self, path: Path, referenced_by: Problem | None = None) -> None:
        key = Path(os.path.abspath(path))
        if key in self.seen:
            return
        if len(self.seen) >= MAX_FILES:
            self.problems.append(Problem(str(path), "", f"more than {MAX_FILES} input files"))
            return
        self.seen.add(key)
        try:
            raw = reading.read_file(path, self.limits)
        except LoadError as e:
            if referenced_by is not None:
                p = e.problems[0]
                self.problems.append(Problem(referenced_by.file, referenced_by.path,
                                             f"referenced file {str(path)!r}: {p.message}", referenced_by.line))
            else:
                self.problems += e.problems
            return
        self.add_bytes(raw, path)

    def add_bytes(self, raw: bytes, path: Path) -> None:
        from nsg_agent.desired import importers

        self.seen.add(Path(os.path.abspath(path)))
        filename = str(path)
        try:
            text = reading.decode(raw, filename)
            doc = parse_text(text, filename, self.limits)
        except LoadError as e:
            # bounds found on the built data name a path but no line: look the line up
            lines = LineMap.from_text(text) if any(p.path and p.line is None for p in e.problems) else None
            self.problems += [Problem(p.file, p.path, p.message, lines.line(_loc_of(p.path.rstrip(".")))
                                      if lines is not None and p.path and p.line is None else p.line)
                              for p in e.problems]
            return
        lines = LineMap.from_text(text)
        try:
            imported = importers.detect(doc, filename, self.options)
        except RecursionError:
            self.problems.append(Problem(filename, "", "nesting too deep to import"))
            return
        src = _Source(path, raw, doc, lines, imported)
        self.problems += [_problem(filename, loc, msg, doc, lines) for loc, msg in imported.problems]
        self.warnings += [_problem(filename, loc, msg, doc, lines) for loc, msg in imported.warnings]
        if imported.kind == "unknown":
            return
        if imported.kind == "service-tags":
            index, tag_problems = parse_service_tags(imported.doc, filename)
            self.problems += [src.problem(_loc_of(p), m) for p, m in tag_problems]
            self.tag_sources.append((src, index))
            return
        self.sources.append(src)
        body = imported.doc if isinstance(imported.doc, dict) else {}
        refs: list[tuple[Loc, str]] = []
        for key, value in body.items():
            if key not in COLLECTIONS:
                src.sections[key] = value
                continue
            if not isinstance(value, list):
                src.items[key] = _Raw(value)
                continue
            kept = []
            for i, item in enumerate(value):
                if _is_file_ref(item):
                    refs.append(((key, i, "file"), item["file"]))
                else:
                    kept.append((i, item))
            src.items[key] = kept
        for loc, ref in refs:
            where = src.problem(loc, "")
            if not isinstance(ref, str) or not ref:
                self.problems.append(Problem(where.file, where.path, "file: must be a path (a string)", where.line))
                continue
            target = Path(ref) if Path(ref).is_absolute() else path.parent / ref
            self.add_path(target, referenced_by=where)

    # merging -----------------------------------------------------------------------------
    def merge(self) -> tuple[dict, dict[Loc, tuple[_Source, Loc]]]:
        merged: dict[str, Any] = {}
        origin: dict[Loc, tuple[_Source, Loc]] = {}
        by_name: dict[tuple[str, str], tuple[_Source, int, Any, int]] = {}
        for src in self.sources:
            for key, value in src.sections.items():
                if key in merged and merged[key] != value:
                    other, _ = origin[(key,)]
                    first = other.problem((key,), "")
                    self.problems.append(src.problem((key,), (
                        f"{key} is also given in {first.file}" + (f":{first.line}" if first.line else "")
                        + ", differently: give it in one file")))
                    continue
                if key not in merged:
                    merged[key] = value
                    origin[(key,)] = (src, (key,))
            for coll, items in src.items.items():
                if isinstance(items, _Raw):
                    merged[coll] = items.value
                    origin[(coll,)] = (src, (coll,))
                    continue
                lst = merged.setdefault(coll, [])
                if not isinstance(lst, list):
                    continue
                origin.setdefault((coll,), (src, (coll,)))
                for i, item in items:
                    name = _item_name(item)
                    if name is not None:
                        prev = by_name.get((coll, name.lower()))
                        if prev is not None and coll == "networkSecurityGroups" and (
                                RULES_ONLY in item or RULES_ONLY in prev[2]):
                            self._add_rules(merged, origin, prev, src, i, item)
                            continue
                        if prev is not None and prev[0] is not src:
                            if prev[2] == item:
                                continue  # the same object in two files: once is enough
                            first = prev[0].problem((coll, prev[1], "name"), "")
                            self.problems.append(src.problem((coll, i, "name"), (
                                f"{_LABEL[coll]} {name!r} is also defined in {first.file}"
                                + (f":{first.line}" if first.line else "")
                                + ", differently: define each object once (or make both the same)")))
                            continue
                        by_name.setdefault((coll, name.lower()), (src, i, item, len(lst)))
                    origin[(coll, len(lst))] = (src, (coll, i))
                    lst.append(item)
        nsgs = merged.get("networkSecurityGroups")
        for k, item in enumerate(nsgs if isinstance(nsgs, list) else []):
            if isinstance(item, dict) and RULES_ONLY in item:
                merged["networkSecurityGroups"][k] = {x: v for x, v in item.items() if x != RULES_ONLY}
        return merged, origin

    def _add_rules(self, merged: dict, origin: dict, prev: tuple, src: _Source, i: int, item: dict) -> None:
        """A bare rule list (``az network nsg rule list``) and its NSG from another file (or
        another rule list of the same NSG): the rules are added to that NSG."""
        k = prev[3]
        target = dict(merged["networkSecurityGroups"][k])
        holder = target
        if isinstance(target.get("properties"), dict):
            holder = target["properties"] = dict(target["properties"])
        rules = holder.get("securityRules")
        rules = list(rules) if isinstance(rules, list) else []
        new = _flat_get(item, "securityRules")
        for j, rule in enumerate(new if isinstance(new, list) else []):
            origin[("networkSecurityGroups", k, "securityRules", len(rules))] = (
                src, ("networkSecurityGroups", i, "securityRules", j))
            rules.append(rule)
        holder["securityRules"] = rules
        if RULES_ONLY in target and RULES_ONLY not in item:
            # the full NSG came second: its other fields win
            full = {x: v for x, v in item.items() if x not in ("securityRules", "properties")}
            target = {**full, "securityRules": rules}
            origin[("networkSecurityGroups", k)] = (src, ("networkSecurityGroups", i))
        merged["networkSecurityGroups"][k] = target

    def at(self, origin: dict, loc: Loc, msg: str) -> Problem:
        loc = _strip_validator_names(tuple(loc))
        for n in (4, 2, 1):
            if len(loc) >= n and tuple(loc[:n]) in origin:
                src, inner = origin[tuple(loc[:n])]
                return src.problem(tuple(inner) + tuple(loc[n:]), msg)
        src = self.sources[0]
        return src.problem(loc, msg)

    # the result --------------------------------------------------------------------------
    def finish(self, strict: bool) -> LoadedState:
        from nsg_agent.desired import associations, strictness, validate

        if not self.sources and self.tag_sources and not self.problems:
            index = ServiceTagIndex()
            for _, sub in self.tag_sources:
                index = index.merged(sub)
            first = self.tag_sources[0][0]
            paths = tuple(s.path for s, _ in self.tag_sources)
            return LoadedState(DesiredState(), index, first.path, self._digest(), "service-tags",
                               paths, tuple(self.warnings), paths)
        if not self.sources:
            if not self.problems:
                self.problems.append(Problem("", "", "no input file"))
            raise LoadError(self.problems)
        merged, origin = self.merge()
        assoc_problems, assoc_warnings = associations.apply(merged)
        self.problems += [self.at(origin, loc, msg) for loc, msg in assoc_problems]
        self.warnings += [self.at(origin, loc, msg) for loc, msg in assoc_warnings]
        unknown = [self.at(origin, loc, msg) for loc, msg in strictness.unknown_keys(merged)]

        state, model_errors, pruned_remap, cut_names = _validate(merged)
        problems = self.problems + [self.at(origin, loc, msg) for loc, msg in model_errors]
        tags = ServiceTagIndex()
        files: list[Path] = []
        if state is not None:
            tag_base = origin.get(("serviceTags",), (self.sources[0], None))[0].path
            tags, files, tag_problems = _load_tag_files(state, tag_base, self.limits)
            problems += tag_problems
            for _, sub in self.tag_sources:
                tags = tags.merged(sub)
            for loc, msg in validate.check(state, tags):
                if cut_names and _about_cut(msg, cut_names):
                    continue  # a reference to an object already reported as invalid
                problems.append(self.at(origin, pruned_remap(loc), msg))
        warnings = list(self.warnings) + unknown
        if state is not None and not problems:
            warnings += [self.at(origin, loc, msg) for loc, msg in validate.warnings(state, tags)]
        if strict:
            problems += [Problem(w.file, w.path, w.message + " [--strict]", w.line) for w in warnings]
        elif problems:
            problems += unknown  # an ignored key often explains an error (a misspelled field)
        if problems:
            raise LoadError(_in_file_order(_without_echoes(problems), self))
        assert state is not None  # no state: _validate reported model errors, raised above
        first = self.sources[0]
        kind = first.imported.kind if len(self.sources) == 1 else "merged"
        all_files = [s.path for s in self.sources] + [s.path for s, _ in self.tag_sources] + files + self.param_paths
        tag_files = tuple(s.path for s, _ in self.tag_sources) + tuple(files)
        return LoadedState(state, tags, first.path, self._digest(), kind, tuple(all_files),
                           tuple(_in_file_order(warnings, self)), tag_files)

    def _digest(self) -> str:
        srcs = [s for s in self.sources] + [s for s, _ in self.tag_sources]
        if len(srcs) == 1 and not self.param_paths:
            return hashlib.sha256(srcs[0].raw).hexdigest()
        h = hashlib.sha256()
        for s in srcs:
            h.update(hashlib.sha256(s.raw).digest())
        for pp in self.param_paths:
            h.update(str(pp).encode())
        return h.hexdigest()


def _without_echoes(problems: list[Problem]) -> list[Problem]:
    """The model refuses an unevaluated ARM expression that the importer already reported
    (naming the function): keep the importer's message only."""
    reported = {(p.file, p.path) for p in problems if not p.message.startswith("ARM template expression")}
    return [p for p in problems
            if not (p.message.startswith("ARM template expression") and (p.file, p.path) in reported)]


def _in_file_order(problems: list[Problem], reader: _Reader) -> list[Problem]:
    order = {str(s.path): i for i, s in enumerate(reader.sources)}
    seen: set = set()
    out = []
    for p in sorted(problems, key=lambda p: (order.get(p.file, -1), p.line if p.line is not None else 1 << 30)):
        key = (p.file, p.path, p.message, p.line)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _about_cut(msg: str, names: set[str]) -> bool:
    if not msg.startswith("unknown "):
        return False
    return any(f"'{n}'" in msg.lower() or f"'{n.split('/')[-1]}'" in msg.lower() for n in names)


# --- validation with every problem at once ----------------------------------------------


def _validate(doc: dict) -> tuple[DesiredState | None, list[tuple[Loc, str]], Callable[[Loc], Loc], set[str]]:
    """Validate ``doc``; on errors, validate again without the objects that failed (up to a
    few rounds), so that the whole-state checks (references, overlaps, duplicates) run on
    the rest and every problem of the input is reported in one run. Returns the state (of
    the remaining objects when there were errors), the model errors, a map from paths in
    that state back to paths in ``doc``, and the names of the objects left out."""
    errors: list[tuple[Loc, str]] = []
    remap: Callable[[Loc], Loc]
    current, remap = doc, (lambda loc: loc)
    cut_names: set[str] = set()
    for _ in range(4):
        try:
            return DesiredState.model_validate(current), errors, remap, cut_names
        except ValidationError as err:
            round_errors = [(remap(loc), msg) for loc, msg in _pydantic_messages(err)]
            errors += round_errors
            cuts = {_cut_point(doc, loc) for loc, _ in round_errors}
            for c in cuts:
                name = _item_name(_node_at(doc, c))
                if name:
                    cut_names.add(name.lower())
            current, remap = _prune(doc, {_cut_point(doc, loc) for loc, _ in errors})
        except RecursionError:
            return None, errors + [((), "nesting too deep to validate")], remap, cut_names
    return None, errors, remap, cut_names


def _cut_point(doc: Any, loc: Loc) -> Loc:
    """The object to leave out for an error at ``loc``: the deepest list item on the path
    that is an object (a rule, a subnet, an NSG...), else the top-level section."""
    best: Loc = tuple(loc[:1])
    node = doc
    for n, part in enumerate(loc):
        node = flatten_properties(node) if isinstance(node, dict) else node
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            if isinstance(node, dict):
                best = tuple(loc[:n + 1])
        else:
            break
    return best


def _prune(doc: Any, cuts: set[Loc]) -> tuple[Any, Callable[[Loc], Loc]]:
    """``doc`` without the objects at ``cuts``, and the map from paths in the result back
    to paths in ``doc`` (list indexes shift)."""
    index_maps: dict[Loc, list[int]] = {}  # path in doc of a list -> kept old indexes

    def copy(node: Any, loc: Loc) -> Any:
        if not any(c[:len(loc)] == loc for c in cuts):
            return node  # nothing cut below here
        if isinstance(node, dict):
            flat = flatten_properties(node)
            return {k: copy(v, loc + (k,)) for k, v in flat.items() if loc + (k,) not in cuts}
        if isinstance(node, list):
            kept = [i for i in range(len(node)) if loc + (i,) not in cuts]
            index_maps[loc] = kept
            return [copy(node[i], loc + (i,)) for i in kept]
        return node

    pruned = copy(doc, ())

    def remap(loc: Loc) -> Loc:
        out: list = []
        for part in loc:
            kept = index_maps.get(tuple(out))
            if kept is not None and isinstance(part, int) and 0 <= part < len(kept):
                out.append(kept[part])
            else:
                out.append(part)
        return tuple(out)

    return pruned, remap


def _loc_of(path: str) -> Loc:
    out: list = []
    for part in path.replace("]", "").replace("[", ".").split("."):
        if part:
            out.append(int(part) if part.isascii() and part.isdigit() else part)
    return tuple(out)


def _load_tag_files(state: DesiredState, path: Path, limits: Limits = DEFAULT_LIMITS
                    ) -> tuple[ServiceTagIndex, list[Path], list[Problem]]:
    index = ServiceTagIndex()
    files: list[Path] = []
    problems: list[Problem] = []
    for i, name in enumerate(state.serviceTags.files):
        tag_path = (path.parent / name) if not Path(name).is_absolute() else Path(name)
        files.append(tag_path)
        where = f"serviceTags.files[{i}]"
        try:
            raw = reading.read_file(tag_path, limits)
        except LoadError as e:
            why = e.problems[0].message.removeprefix("cannot read file: ")
            problems.append(Problem(str(path), where, f"cannot read service-tag file {str(tag_path)!r}: {why}"))
            continue
        name = str(tag_path)

        def decode(data: bytes) -> Any:
            return parse_text(reading.decode(data, name), name, limits)

        try:  # an unchanged file (same path and sha256) is not parsed again
            sub, sub_problems = parse_service_tag_file(raw, name, decode)
        except LoadError as e:
            problems += e.problems
            continue
        except (ValueError, TypeError, AttributeError) as e:
            problems.append(Problem(str(tag_path), "", f"invalid service-tag file: {e}"))
            continue
        problems += [Problem(str(tag_path), p, m) for p, m in sub_problems]
        index = index.merged(sub)
    if state.serviceTags.internet:
        internet_path, internet, internet_problems = _load_internet_file(state.serviceTags.internet, path, limits)
        files.append(internet_path)
        problems += internet_problems
        index = index.with_internet(internet)
    return index, files, problems


def _load_internet_file(name: str, path: Path, limits: Limits = DEFAULT_LIMITS) -> tuple[Path, Any, list[Problem]]:
    """serviceTags.internet: Azure's expansion of the Internet tag (see nsg_agent.desired.builtin_tags)."""
    from nsg_agent.desired.builtin_tags import parse_internet_file

    internet_path = (path.parent / name) if not Path(name).is_absolute() else Path(name)
    try:
        raw = reading.read_file(internet_path, limits)
    except LoadError as e:
        why = e.problems[0].message.removeprefix("cannot read file: ")
        return internet_path, None, [Problem(str(path), "serviceTags.internet",
                                             f"cannot read Internet-tag file {str(internet_path)!r}: {why}")]
    internet, found = parse_internet_file(raw, str(internet_path))
    return internet_path, internet, [Problem(str(internet_path), p, m) for p, m in found]
