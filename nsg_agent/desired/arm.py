"""ARM template expressions: a small tokenizer, parser and evaluator.

No maintained Python library evaluates ARM template expressions (Microsoft's evaluator is
part of the Azure Resource Manager service and of Bicep, both .NET), so this module
implements the subset real network templates use: ``parameters()``, ``variables()``,
``concat()``, ``format()``, ``resourceId()``, ``reference()`` to a resource of the same
template, ``toLower()``/``toUpper()``, ``copyIndex()``, ``if()``, comparisons, string and
array helpers, property access (``.name``) and indexing (``[0]``); and the ``copy``
loops of resources, properties and variables.

What depends on the deployment itself (``uniqueString()``, ``newGuid()``, ``utcNow()``,
``listKeys()``, ``reference()`` to a resource outside the template, ...) cannot be known
from the file: evaluating it raises ``Unevaluable`` naming the function, and the importer
refuses the field that needed it (a field that only informs, such as ``location``, is
dropped quietly instead).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

MAX_COPY = 800  # ARM's own limit on a copy loop's count
MAX_EXPR = 20_000  # characters in one expression


class Unevaluable(Exception):
    """An expression that cannot be evaluated from the file alone."""

    def __init__(self, function: str, reason: str):
        self.function = function
        self.reason = reason
        super().__init__(f"{function}(): {reason}")


class ExpressionError(Unevaluable):
    """A malformed expression (a syntax or type error): also refused, naming the function."""


@dataclass(frozen=True)
class Unresolved:
    """Stands where a value could not be evaluated; the importer reports or drops it."""

    expression: str
    function: str
    reason: str

    def message(self) -> str:
        return (f"ARM expression {self.expression!r} cannot be evaluated: {self.function}() "
                f"{self.reason}")


# --- tokenizer ---------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<str>'(?:[^']|'')*')
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<punct>[(),.\[\]])
    )""", re.X)


def tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExpressionError("expression", f"unexpected character {text[pos:pos + 1]!r} at {pos}")
        pos = m.end()
        if m.group("str") is not None:
            tokens.append(("str", m.group("str")[1:-1].replace("''", "'")))
        elif m.group("num") is not None:
            s = m.group("num")
            if len(s) > 20:
                raise ExpressionError("expression", f"number {s[:24]}... is too long")
            tokens.append(("num", float(s) if "." in s else int(s)))
        elif m.group("name") is not None:
            tokens.append(("name", m.group("name")))
        else:
            tokens.append(("punct", m.group("punct")))
    return tokens


# --- parser ------------------------------------------------------------------------------
# expr    := primary postfix*
# primary := STRING | NUMBER | NAME '(' [expr (',' expr)*] ')'
# postfix := '.' NAME | '[' expr ']'

@dataclass(frozen=True)
class Lit:
    value: Any


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple


@dataclass(frozen=True)
class Prop:
    target: Any
    name: str


@dataclass(frozen=True)
class Index:
    target: Any
    index: Any


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any]]):
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    def peek(self, value: str | None = None) -> bool:
        if self.i >= len(self.tokens):
            return False
        kind, v = self.tokens[self.i]
        return value is None or (kind == "punct" and v == value)

    def take(self, value: str) -> None:
        if not self.peek(value):
            got = self.tokens[self.i][1] if self.i < len(self.tokens) else "the end"
            raise ExpressionError("expression", f"expected {value!r}, found {got!r}")
        self.i += 1

    def expr(self) -> Any:
        self.depth += 1
        if self.depth > 100:
            raise ExpressionError("expression", "nested more than 100 levels")
        node = self.primary()
        while True:
            if self.peek("."):
                self.i += 1
                if self.i >= len(self.tokens) or self.tokens[self.i][0] != "name":
                    raise ExpressionError("expression", "a property name must follow '.'")
                node = Prop(node, self.tokens[self.i][1])
                self.i += 1
            elif self.peek("["):
                self.i += 1
                node = Index(node, self.expr())
                self.take("]")
            else:
                break
        self.depth -= 1
        return node

    def primary(self) -> Any:
        if self.i >= len(self.tokens):
            raise ExpressionError("expression", "unexpected end")
        kind, v = self.tokens[self.i]
        self.i += 1
        if kind in ("str", "num"):
            return Lit(v)
        if kind == "name":
            if not self.peek("("):
                if v.lower() in ("true", "false", "null"):
                    return Lit({"true": True, "false": False, "null": None}[v.lower()])
                raise ExpressionError("expression", f"{v!r} must be a function call: {v}(...)")
            self.i += 1
            args = []
            if not self.peek(")"):
                args.append(self.expr())
                while self.peek(","):
                    self.i += 1
                    args.append(self.expr())
            self.take(")")
            return Call(v, tuple(args))
        raise ExpressionError("expression", f"unexpected {v!r}")


def parse(text: str) -> Any:
    """The expression inside ``[...]`` (without the brackets) -> a syntax tree."""
    if len(text) > MAX_EXPR:
        raise ExpressionError("expression", f"longer than {MAX_EXPR} characters")
    p = _Parser(tokenize(text))
    node = p.expr()
    if p.i != len(p.tokens):
        raise ExpressionError("expression", f"unexpected {p.tokens[p.i][1]!r} after the expression")
    return node


def is_expression(value: Any) -> bool:
    return (isinstance(value, str) and value.startswith("[") and not value.startswith("[[")
            and value.rstrip().endswith("]"))


# --- evaluator ---------------------------------------------------------------------------

RUNTIME_FUNCTIONS = {
    "uniquestring": "returns a hash of deployment-time values",
    "newguid": "returns a new value at every deployment",
    "utcnow": "returns the deployment time",
    "guid": "returns a hash of deployment-time values",
    "listkeys": "reads secrets of a deployed resource",
    "list": "reads state of a deployed resource",
    "listsecrets": "reads secrets of a deployed resource",
    "pickzones": "depends on the region's zones at deployment",
    "providers": "depends on the subscription at deployment",
    "extensionresourceid": "names a resource outside this template",
    "managementgroup": "depends on the deployment scope",
    "tenant": "depends on the deployment scope",
    "environment": "depends on the cloud the template is deployed to",
}


@dataclass
class Template:
    """What an expression can see: parameters, variables, the template's resources."""

    parameters: dict[str, Any] = field(default_factory=dict)  # name -> value (evaluated)
    variables: dict[str, Any] = field(default_factory=dict)  # name -> raw definition
    resources: list[dict] = field(default_factory=list)  # raw resource objects
    _var_cache: dict[str, Any] = field(default_factory=dict)
    _var_busy: set[str] = field(default_factory=set)
    param_defaults: dict[str, Any] = field(default_factory=dict)  # raw defaultValue
    _param_busy: set[str] = field(default_factory=set)
    reference_fn: Callable[[str], Any] | None = None


class Evaluator:
    def __init__(self, template: Template, copy: dict[str, int] | None = None):
        self.t = template
        self.copy = dict(copy or {})  # loop name -> index; "" is the innermost loop

    def with_copy(self, name: str, index: int) -> "Evaluator":
        ev = Evaluator(self.t, self.copy)
        ev.lenient = self.lenient
        ev.copy[name.lower()] = index
        ev.copy[""] = index
        return ev

    # values -----------------------------------------------------------------------------
    lenient = False

    def value(self, v: Any, lenient: bool = False) -> Any:
        """A JSON value with its expressions evaluated (``copy`` property loops expanded).
        Strict: raises Unevaluable for the first expression that cannot be evaluated;
        lenient: puts an ``Unresolved`` in its place and goes on."""
        if lenient and not self.lenient:
            ev = Evaluator(self.t, self.copy)
            ev.lenient = True
            return ev.value(v, True)
        if isinstance(v, str):
            if is_expression(v):
                if not self.lenient:
                    return self.expression(v)
                try:
                    return self.expression(v)
                except Unevaluable as e:
                    return Unresolved(v, e.function, e.reason)
            if v.startswith("[["):
                return v[1:]
            return v
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if k == "copy" and isinstance(x, list):
                    for loop in x:
                        name: object  # a str, or (lenient, the loop unevaluable) what the loop says
                        items: list | Unresolved
                        try:
                            name, items = self.property_copy(loop)
                        except Unevaluable as e:
                            if not self.lenient:
                                raise
                            name = loop.get("name") if isinstance(loop, dict) else "copy"
                            items = Unresolved(json.dumps(loop.get("count") if isinstance(loop, dict) else loop),
                                               e.function, e.reason)
                        out[str(name)] = items
                    continue
                out[k] = self.value(x)
            return out
        return v

    def property_copy(self, loop: Any) -> tuple[str, list]:
        if not isinstance(loop, dict) or "name" not in loop or "input" not in loop:
            raise ExpressionError("copy", "a property copy needs name, count and input")
        name = self.value(loop["name"])
        if not isinstance(name, str) or not name:
            raise ExpressionError("copy", f"a copy loop's name must be a string, not {name!r}")
        count = self.count(loop.get("count"))
        return name, [self.with_copy(name, i).value(loop["input"], self.lenient)
                      for i in range(count)]

    def count(self, raw: Any) -> int:
        n = self.value(raw)
        if isinstance(n, bool) or not isinstance(n, int):
            raise ExpressionError("copy", f"count {n!r} is not an integer")
        if not 0 <= n <= MAX_COPY:
            raise ExpressionError("copy", f"count {n} is outside 0..{MAX_COPY} (ARM's limit)")
        return n

    def expression(self, text: str) -> Any:
        inner = text.strip()[1:-1]
        return self.eval(parse(inner))

    def eval(self, node: Any) -> Any:
        if isinstance(node, Lit):
            return node.value
        if isinstance(node, Prop):
            target = self.eval(node.target)
            if isinstance(target, dict):
                for k, v in target.items():
                    if k.lower() == node.name.lower():
                        return v
                raise ExpressionError("property", f"no property {node.name!r} in the object")
            raise ExpressionError("property", f".{node.name} of a {type(target).__name__}")
        if isinstance(node, Index):
            target, index = self.eval(node.target), self.eval(node.index)
            if isinstance(target, list) and isinstance(index, int) and not isinstance(index, bool):
                if not -len(target) <= index < len(target):
                    raise ExpressionError("index", f"index {index} is outside the array of {len(target)}")
                return target[index]
            if isinstance(target, dict) and isinstance(index, str):
                return self.eval(Prop(Lit(target), index))
            raise ExpressionError("index", f"cannot index a {type(target).__name__} with {index!r}")
        if isinstance(node, Call):
            name = node.name.lower()
            if name in RUNTIME_FUNCTIONS:
                raise Unevaluable(node.name, RUNTIME_FUNCTIONS[name] + ", which the file does not determine")
            fn = _FUNCTIONS.get(name)
            if fn is None:
                raise Unevaluable(node.name, "is not supported by this importer")
            if name == "if":  # lazy: only the branch taken is evaluated
                if len(node.args) != 3:
                    raise ExpressionError("if", "takes 3 arguments")
                cond = self.eval(node.args[0])
                return self.eval(node.args[1] if _truthy(cond) else node.args[2])
            args = [self.eval(a) for a in node.args]
            try:
                return fn(self, args)
            except Unevaluable:
                raise
            except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, AttributeError) as e:
                raise ExpressionError(node.name, f"arguments {_short(args)}: {e}") from None
        raise ExpressionError("expression", "unknown node")

    # parameters and variables -----------------------------------------------------------
    def parameter(self, name: str) -> Any:
        for k, v in self.t.parameters.items():
            if k.lower() == name.lower():
                return v
        for k, v in self.t.param_defaults.items():
            if k.lower() == name.lower():
                if k in self.t._param_busy:
                    raise ExpressionError("parameters", f"parameter {name!r} refers to itself")
                self.t._param_busy.add(k)
                try:
                    value = Evaluator(self.t).value(v)
                finally:
                    self.t._param_busy.discard(k)
                self.t.parameters[k] = value
                return value
        raise Unevaluable("parameters", f"parameter {name!r} has no value: no defaultValue in the "
                                        "template and none given with --parameters FILE")

    def variable(self, name: str) -> Any:
        key = next((k for k in self.t.variables if k.lower() == name.lower()), None)
        if key is None:
            if not self.t.variables:
                raise ExpressionError("variables", (
                    f"variable {name!r} is not defined: this file has no variables (a resource "
                    "cut out of its template?)"))
            raise ExpressionError("variables", f"no variable {name!r} in the template")
        if key in self.t._var_cache:
            return self.t._var_cache[key]
        if key in self.t._var_busy:
            raise ExpressionError("variables", f"variable {name!r} refers to itself")
        self.t._var_busy.add(key)
        try:
            raw = self.t.variables[key]
            value = Evaluator(self.t).value(raw)
            if isinstance(raw, _CopyVar):
                value = value[next(iter(value))]
        finally:
            self.t._var_busy.discard(key)
        self.t._var_cache[key] = value
        return value


def _truthy(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise ExpressionError("if", f"condition {v!r} is not a boolean")


def _short(args: list) -> str:
    text = json.dumps(args, default=str)
    return text if len(text) < 80 else text[:77] + "..."


def _str(v: Any) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _format(ev: Evaluator, args: list) -> str:
    fmt, rest = args[0], args[1:]

    def sub(m: re.Match) -> str:
        return _str(rest[int(m.group(1))])

    if not isinstance(fmt, str):
        raise TypeError("the format must be a string")
    return re.sub(r"\{(\d+)(?:[:,][^}]*)?\}", sub, fmt).replace("{{", "{").replace("}}", "}")


def _resource_id(ev: Evaluator, args: list) -> str:
    args = [str(a) for a in args]
    t = next((i for i, a in enumerate(args) if "/" in a and "." in a.split("/")[0]), None)
    if t is None:
        raise ValueError("no resource type (like Microsoft.Network/virtualNetworks) among the arguments")
    scope, rtype, names = args[:t], args[t].strip("/"), args[t + 1:]
    parts = rtype.split("/")
    if len(names) != len(parts) - 1:
        raise ValueError(f"{rtype} needs {len(parts) - 1} name(s), got {len(names)}")
    sub = scope[0] if len(scope) == 2 else "{subscription}"
    rg = scope[-1] if scope else "{resourceGroup}"
    path = parts[0] + "".join(f"/{p}/{n}" for p, n in zip(parts[1:], names))
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{path}"


def _reference(ev: Evaluator, args: list) -> Any:
    if ev.t.reference_fn is None:
        raise Unevaluable("reference", "reads the state of a deployed resource")
    return ev.t.reference_fn(str(args[0]))


def _copy_index(ev: Evaluator, args: list) -> int:
    name, offset = None, 0
    for a in args:
        if isinstance(a, str):
            name = a
        else:
            offset = int(a)
    key = name.lower() if name else ""
    if key not in ev.copy:
        raise ExpressionError("copyIndex", f"not inside a copy loop{f' named {name!r}' if name else ''}")
    return ev.copy[key] + offset


def _concat(ev: Evaluator, args: list) -> Any:
    if args and all(isinstance(a, list) for a in args):
        return [x for a in args for x in a]
    return "".join(_str(a) for a in args)


def _contains(ev: Evaluator, args: list) -> bool:
    container, item = args
    if isinstance(container, str):
        return str(item).lower() in container.lower()
    if isinstance(container, dict):
        return any(k.lower() == str(item).lower() for k in container)
    return item in container


def _union(ev: Evaluator, args: list) -> Any:
    if all(isinstance(a, dict) for a in args):
        out: dict = {}
        for a in args:
            out.update(a)
        return out
    out_list: list = []
    for a in args:
        for x in a:
            if x not in out_list:
                out_list.append(x)
    return out_list


def _int(v: Any) -> int:
    if isinstance(v, str) and len(v.strip()) > 20:
        raise ValueError("integer text too long")
    return int(v)


_SCOPE = {"name": "{resourceGroup}", "location": "{location}",
          "id": "/subscriptions/{subscription}/resourceGroups/{resourceGroup}"}

_FUNCTIONS: dict[str, Callable[[Evaluator, list], Any]] = {
    "parameters": lambda ev, a: ev.parameter(str(a[0])),
    "variables": lambda ev, a: ev.variable(str(a[0])),
    "concat": _concat,
    "format": _format,
    "resourceid": _resource_id,
    "reference": _reference,
    "tolower": lambda ev, a: str(a[0]).lower(),
    "toupper": lambda ev, a: str(a[0]).upper(),
    "copyindex": _copy_index,
    "length": lambda ev, a: len(a[0]),
    "add": lambda ev, a: _int(a[0]) + _int(a[1]),
    "sub": lambda ev, a: _int(a[0]) - _int(a[1]),
    "mul": lambda ev, a: _int(a[0]) * _int(a[1]),
    "div": lambda ev, a: _int(a[0]) // _int(a[1]),
    "mod": lambda ev, a: _int(a[0]) % _int(a[1]),
    "min": lambda ev, a: min(a[0] if len(a) == 1 and isinstance(a[0], list) else a),
    "max": lambda ev, a: max(a[0] if len(a) == 1 and isinstance(a[0], list) else a),
    "range": lambda ev, a: list(range(_int(a[0]), _int(a[0]) + min(_int(a[1]), 10_000))),
    "if": lambda ev, a: None,  # evaluated lazily in Evaluator.eval
    "equals": lambda ev, a: a[0] == a[1],
    "not": lambda ev, a: not _truthy(a[0]),
    "and": lambda ev, a: all(_truthy(x) for x in a),
    "or": lambda ev, a: any(_truthy(x) for x in a),
    "greater": lambda ev, a: a[0] > a[1],
    "greaterorequals": lambda ev, a: a[0] >= a[1],
    "less": lambda ev, a: a[0] < a[1],
    "lessorequals": lambda ev, a: a[0] <= a[1],
    "true": lambda ev, a: True,
    "false": lambda ev, a: False,
    "null": lambda ev, a: None,
    "string": lambda ev, a: a[0] if isinstance(a[0], str) else _str(a[0]),
    "int": lambda ev, a: _int(a[0]),
    "bool": lambda ev, a: _truthy(a[0]),
    "json": lambda ev, a: json.loads(a[0]),
    "empty": lambda ev, a: a[0] is None or len(a[0]) == 0,
    "contains": _contains,
    "first": lambda ev, a: a[0][0],
    "last": lambda ev, a: a[0][-1],
    "take": lambda ev, a: a[0][: _int(a[1])],
    "skip": lambda ev, a: a[0][_int(a[1]):],
    "split": lambda ev, a: str(a[0]).split(a[1]) if isinstance(a[1], str) else re.split(
        "|".join(map(re.escape, a[1])), str(a[0])),
    "replace": lambda ev, a: str(a[0]).replace(a[1], a[2]),
    "trim": lambda ev, a: str(a[0]).strip(),
    "substring": lambda ev, a: str(a[0])[_int(a[1]): _int(a[1]) + _int(a[2])] if len(a) > 2 else str(a[0])[_int(a[1]):],
    "startswith": lambda ev, a: str(a[0]).lower().startswith(str(a[1]).lower()),
    "endswith": lambda ev, a: str(a[0]).lower().endswith(str(a[1]).lower()),
    "indexof": lambda ev, a: str(a[0]).lower().find(str(a[1]).lower()),
    "padleft": lambda ev, a: str(a[0]).rjust(_int(a[1]), (a[2] if len(a) > 2 else " ")[:1]),
    "createarray": lambda ev, a: list(a),
    "array": lambda ev, a: a[0] if isinstance(a[0], list) else [a[0]],
    "createobject": lambda ev, a: {str(a[i]): a[i + 1] for i in range(0, len(a) - 1, 2)},
    "union": _union,
    "coalesce": lambda ev, a: next((x for x in a if x is not None), None),
    "resourcegroup": lambda ev, a: dict(_SCOPE),
    "subscription": lambda ev, a: {"subscriptionId": "{subscription}", "id": "/subscriptions/{subscription}"},
    "deployment": lambda ev, a: {"name": "{deployment}"},
}
# subscriptionResourceId(type, names...) has no resource group in its id.
_FUNCTIONS["subscriptionresourceid"] = lambda ev, a: _resource_id(ev, a).replace(
    "/resourceGroups/{resourceGroup}", "")


# --- templates -----------------------------------------------------------------------------


@dataclass
class Resource:
    """One evaluated resource: full type, full name (``parent/child`` for a child), the
    evaluated object, and where the raw resource is written in the template."""

    type: str
    name: str
    body: dict
    loc: tuple


def _param_values(doc: dict, parameter_docs: list[dict]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pdoc in parameter_docs:
        params = pdoc["parameters"] if isinstance(pdoc.get("parameters"), dict) else pdoc
        for k, v in params.items():
            if isinstance(v, dict) and "value" in v:
                values[k] = v["value"]
            elif isinstance(v, dict) and "reference" in v:
                values[k] = Unresolved(f"parameters {k}", "keyVault reference", "is resolved at deployment")
    return values


def evaluate_template(doc: dict, parameter_docs: list[dict] | None = None
                      ) -> tuple[list[Resource], list[tuple[tuple, str]]]:
    """The resources of an ARM template (or of a single resource object, as extracts are),
    evaluated: copy loops expanded, conditions applied, children flattened with full types
    and ``parent/child`` names. Returns the resources and the problems (location, message)
    of what decides whether or how often a resource exists (condition, copy count)."""
    raw_params = doc["parameters"] if isinstance(doc.get("parameters"), dict) else {}
    defaults = {k: v.get("defaultValue") for k, v in raw_params.items()
                if isinstance(v, dict) and "defaultValue" in v}
    values = _param_values(doc, parameter_docs or [])
    for k, v in list(values.items()):
        if isinstance(v, Unresolved):
            del values[k]
    variables = doc["variables"] if isinstance(doc.get("variables"), dict) else {}
    variables = dict(variables)
    var_copies = variables.pop("copy", None)
    t = Template(parameters=values, variables=variables, param_defaults=defaults)
    if isinstance(var_copies, list):  # variable copy loops: each becomes a variable
        for loop in var_copies:
            if isinstance(loop, dict) and "name" in loop:
                t.variables[str(loop["name"])] = {"copy": [loop]}
    # a variable defined by a copy is {"copy": [loop]} -> evaluates to {name: [...]}: unwrap
    _unwrap_copy_vars(t)

    problems: list[tuple[tuple, str]] = []
    items: list[tuple[tuple, Any]]
    if "resources" in doc:
        raw = doc["resources"]
        if not isinstance(raw, list):
            return [], [(("resources",), "resources must be a list of resource objects")]
        items = [(("resources", i), r) for i, r in enumerate(raw)]
    else:
        items = [((), doc)]
    out: list[Resource] = []
    busy: set[str] = set()

    def reference(target: str) -> Any:
        last = target.rstrip("/").rsplit("/", 1)[-1].lower()
        for r in out:
            if r.name.rsplit("/", 1)[-1].lower() == last:
                props = r.body.get("properties", {})
                return props if isinstance(props, dict) else {}
        if last in busy:
            raise ExpressionError("reference", f"resource {target!r} refers to itself")
        for _, raw in items:  # declared later in the template: evaluate it now
            if not isinstance(raw, dict) or "copy" in raw:
                continue
            try:
                name = Evaluator(t).value(raw.get("name"))
            except Unevaluable:
                continue
            if isinstance(name, str) and name.rsplit("/", 1)[-1].lower() == last:
                busy.add(last)
                try:
                    props = Evaluator(t).value(raw.get("properties", {}), lenient=True)
                finally:
                    busy.discard(last)
                return props if isinstance(props, dict) else {}
        raise Unevaluable("reference", f"reads resource {target!r}, which is not evaluated from this "
                                       "template: its state is known only after deployment")

    t.reference_fn = reference
    queue: list[tuple[tuple, Any, str | None, str | None]] = [(loc, r, None, None) for loc, r in items]
    while queue:
        loc, raw_res, parent_type, parent_name = queue.pop(0)
        if not isinstance(raw_res, dict):
            problems.append((loc, "a resource must be an object"))
            continue
        base = Evaluator(t)
        instances: list[Evaluator] = [base]
        copy = raw_res.get("copy")
        if isinstance(copy, dict):
            try:
                n = base.count(copy.get("count"))
                name = base.value(copy.get("name", ""))
                if not isinstance(name, str):
                    raise ExpressionError("copy", f"a copy loop's name must be a string, not {name!r}")
            except Unevaluable as e:
                problems.append((loc + ("copy", "count"), _message(copy.get("count"), e)))
                continue
            instances = [base.with_copy(name, i) for i in range(n)]
        for ev in instances:
            if "condition" in raw_res:
                try:
                    if not _truthy(ev.value(raw_res["condition"])):
                        continue
                except Unevaluable as e:
                    problems.append((loc + ("condition",), _message(raw_res["condition"], e)))
                    continue
            try:
                rtype = str(ev.value(raw_res.get("type", "")))
            except Unevaluable as e:
                problems.append((loc + ("type",), _message(raw_res.get("type"), e)))
                continue
            body = {k: ev.value(v, lenient=True) for k, v in raw_res.items()
                    if k not in ("copy", "condition", "resources")}
            body["type"] = rtype
            name = body.get("name")
            if (parent_type and "/" not in rtype.split(".", 1)[-1].split("/", 1)[0]
                    and not rtype.lower().startswith("microsoft.")):
                rtype = f"{parent_type}/{rtype}"
                if isinstance(name, str):
                    name = f"{parent_name}/{name}"
                body["type"], body["name"] = rtype, name
            out.append(Resource(rtype, name if isinstance(name, str) else "", body, loc))
            children = raw_res.get("resources") or []
            if not isinstance(children, list):
                problems.append((loc + ("resources",), "resources must be a list of resource objects"))
                children = []
            for j, child in enumerate(children):
                queue.append((loc + ("resources", j), child, rtype, name if isinstance(name, str) else ""))
    return out, problems


def _unwrap_copy_vars(t: Template) -> None:
    for k, v in list(t.variables.items()):
        if isinstance(v, dict) and list(v) == ["copy"] and isinstance(v["copy"], list) and len(v["copy"]) == 1:
            loop = v["copy"][0]
            t.variables[k] = _CopyVar(loop)


class _CopyVar(dict):
    """A variable defined by a variables copy loop (evaluates to the list of its inputs)."""

    def __init__(self, loop: dict):
        super().__init__(copy=[loop])


def _message(raw: Any, e: Unevaluable) -> str:
    return Unresolved(raw if isinstance(raw, str) else json.dumps(raw), e.function, e.reason).message()
