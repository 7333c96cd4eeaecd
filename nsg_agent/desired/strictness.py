"""Unknown keys: every key of the input that the model does not know is reported.

The models ignore unknown keys (``extra="ignore"``), so this walk is what makes sure a
misspelled field (``destinationPortRnage``) is never silently dropped: each one is a warning
naming its path, with a "did you mean" from the model's fields; ``--strict`` makes them
errors. Azure's read-only and informational fields (``model.AZURE_INFORMATIONAL`` and each
model's ``azure_ignored``) are known and quiet.
"""

from __future__ import annotations

import difflib
import functools
import types
import typing
from typing import Any, Iterator, Union

from pydantic import BaseModel

from nsg_agent.desired.model import AZURE_INFORMATIONAL, DesiredState, _label

Loc = tuple

# Keys a model accepts through a before-validator rather than a field of that name.
EXTRA_KEYS: dict[str, dict[str, str]] = {
    "VirtualNetwork": {"virtualNetworkPeerings": "peerings"},
}
# Azure's informational fields of models that do not list them in ``azure_ignored``.
EXTRA_QUIET: dict[str, frozenset[str]] = {
    "VirtualNetworkPeering": frozenset({
        "allowForwardedTraffic", "allowGatewayTransit", "useRemoteGateways", "remoteAddressSpace",
        "remoteVirtualNetworkAddressSpace", "peeringSyncLevel", "remoteBgpCommunities",
        "doNotVerifyRemoteGateways", "peerCompleteVnets", "enableOnlyIPv6Peering",
        "remoteVirtualNetworkEncryption", "localAddressSpace", "localVirtualNetworkAddressSpace",
        "localSubnetNames", "remoteSubnetNames"}),
    "RouteTable": frozenset({"disableBgpRoutePropagation"}),
    "Route": frozenset({"hasBgpOverride"}),
}


@functools.lru_cache(maxsize=None)
def _field_model(model: type[BaseModel], field: str) -> tuple[type[BaseModel] | None, bool]:
    return _models_in(model.model_fields[field].annotation)


@functools.lru_cache(maxsize=None)
def _quiet(model: type[BaseModel]) -> frozenset[str]:
    return (AZURE_INFORMATIONAL | getattr(model, "azure_ignored", frozenset())
            | EXTRA_QUIET.get(model.__name__, frozenset()))


def _models_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model class inside a field's annotation, and whether the field is a list of it."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        inner, _ = _models_in(args[0]) if args else (None, False)
        return inner, True
    if origin in (Union, types.UnionType):
        for a in typing.get_args(annotation):
            m, is_list = _models_in(a)
            if m is not None:
                return m, is_list
        return None, False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


@functools.lru_cache(maxsize=None)
def _known(model: type[BaseModel]) -> dict[str, str]:
    """Every key the model accepts -> the field it fills."""
    out: dict[str, str] = {}
    for name, f in model.model_fields.items():
        out[name] = name
        if f.alias:
            out[f.alias] = name
        va = f.validation_alias
        if isinstance(va, str):
            out[va] = name
        elif va is not None and hasattr(va, "choices"):
            for c in va.choices:
                if isinstance(c, str):
                    out[c] = name
    out.update(EXTRA_KEYS.get(model.__name__, {}))
    return out


def unknown_keys(doc: Any, model: type[BaseModel] = DesiredState) -> list[tuple[Loc, str]]:
    """(field path in the flat shape, message) for every unknown key of ``doc``."""
    return list(_walk(doc, model, ()))


def _walk(data: Any, model: type[BaseModel], loc: Loc) -> Iterator[tuple[Loc, str]]:
    if not isinstance(data, dict):
        return  # a wrong type: the model reports it
    known = _known(model)
    quiet = _quiet(model)
    items = [(k, v) for k, v in data.items() if k != "properties"]
    props = data.get("properties")
    if isinstance(props, dict):
        items += [(k, v) for k, v in props.items() if k not in data]
    for key, value in items:
        if not isinstance(key, str):
            yield loc, f"key {key!r} is not a string"
            continue
        field = known.get(key)
        if field is None:
            if key in quiet or key == "name" and "name" in known:
                continue
            yield loc + (key,), _unknown_message(key, known, model)
            continue
        sub, is_list = _field_model(model, field)
        if sub is None:
            continue
        if is_list and isinstance(value, list):
            for i, item in enumerate(value):
                yield from _walk(item, sub, loc + (key, i))
        elif not is_list:
            yield from _walk(value, sub, loc + (key,))


def _unknown_message(key: str, known: dict[str, str], model: type[BaseModel]) -> str:
    names = sorted(set(known))
    by_lower = {n.lower(): n for n in names}
    hint = ""
    if key.lower() in by_lower:
        hint = f" (did you mean {by_lower[key.lower()]!r}? keys are case-sensitive)"
    else:
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    return f"unknown key {key!r} in {_label(model)}{hint}: ignored"
