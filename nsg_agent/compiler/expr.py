"""Builders for libnftables JSON expressions and statements (plain dicts, no I/O).

Shapes follow libnftables-json(5) as accepted by nft 1.0.6; each builder returns a fresh dict.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable

FAMILY = "inet"


def payload(protocol: str, field: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field}}


def meta(key: str) -> dict:
    return {"meta": {"key": key}}


def ct(key: str) -> dict:
    return {"ct": {"key": key}}


def match(left: dict, right: Any, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def concat(items: list) -> dict:
    return {"concat": list(items)}


def anon_set(elements: list) -> Any:
    """An anonymous set; a single element is written bare (nft prints it that way)."""
    return elements[0] if len(elements) == 1 else {"set": list(elements)}


def vmap(key: dict, data: Any) -> dict:
    return {"vmap": {"key": key, "data": data}}


def counter() -> dict:
    return {"counter": None}


def verdict(kind: str, target: str | None = None) -> dict:
    if kind in ("jump", "goto"):
        return {kind: {"target": target}}
    return {kind: None}


# --- values -----------------------------------------------------------------------------


def addr_text(family: int, value: int) -> str:
    """An address as text, from its integer (the compiler's hot path: no ipaddress objects)."""
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    text = socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
    if "." in text:  # glibc writes ::ffff:1.2.3.4; keep Python's (and nft's listing) hex form
        text = str(ipaddress.IPv6Address(value))
    return text


def addr_value(family: int, lo: int, hi: int) -> Any:
    """An address interval as the tersest element: address, prefix, or range."""
    if lo == hi:
        return addr_text(family, lo)
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:
        bits = 32 if family == 4 else 128
        return {"prefix": {"addr": addr_text(family, lo), "len": bits - size.bit_length() + 1}}
    return {"range": [addr_text(family, lo), addr_text(family, hi)]}


def net_value(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def int_value(lo: int, hi: int) -> Any:
    return lo if lo == hi else {"range": [lo, hi]}


def int_set(ranges: Iterable[tuple[int, int]]) -> Any:
    return anon_set([int_value(lo, hi) for lo, hi in ranges])


# --- objects ----------------------------------------------------------------------------


def table_obj(name: str) -> dict:
    return {"table": {"family": FAMILY, "name": name}}


def chain_obj(table: str, name: str, hook: str | None = None, prio: int = 0,
              policy: str = "accept") -> dict:
    chain: dict[str, Any] = {"family": FAMILY, "table": table, "name": name}
    if hook is not None:
        chain.update({"type": "filter", "hook": hook, "prio": prio, "policy": policy})
    return {"chain": chain}


def map_obj(table: str, name: str, key_type: str | list[str], elements: list, *,
            interval: bool = True, comment: str | None = None) -> dict:
    m: dict[str, Any] = {"family": FAMILY, "table": table, "name": name, "type": key_type,
                         "map": "verdict"}
    if interval:
        m["flags"] = ["interval"]
    if comment:
        m["comment"] = comment
    m["elem"] = elements
    return {"map": m}


def set_obj(table: str, name: str, key_type: str | list[str], elements: list, *,
            interval: bool = True) -> dict:
    st: dict[str, Any] = {"family": FAMILY, "table": table, "name": name, "type": key_type}
    if interval:
        st["flags"] = ["interval"]
    st["elem"] = elements
    return {"set": st}


def rule_obj(table: str, chain: str, exprs: list, comment: str | None = None) -> dict:
    rule: dict[str, Any] = {"family": FAMILY, "table": table, "chain": chain, "expr": exprs}
    if comment:
        rule["comment"] = comment
    return {"rule": rule}
