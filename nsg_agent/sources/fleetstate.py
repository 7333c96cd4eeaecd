"""The fleet's desired state as etcd keys, and back (no I/O: the etcd client is sources/etcd.py).

One validated desired state (what ``nsg_agent.desired.loader`` gives for files) is split into
one key per object, so that a change costs what it changes (docs/fleet.md has the table):

    state/settings                    enforce, platform, lab (non-default values only)
    state/vnets/<vnet>                a VNet without its subnets
    state/subnets/<vnet>/<subnet>     one subnet
    state/routetables/<table>         one route table
    state/nsgs/<nsg>                  one NSG with its rules
    state/asgs/<asg>                  one ASG and its membership list (NIC names)
    state/nics/<nic>                  one NIC (with its ``host``), without its ASGs
    state/servicetags/<NN>            a service-tag file, as a blob with its changeNumber
    state/servicetags/internet        the serviceTags.internet file, as a blob
    state/published                   the marker written with every publish (its etcd
                                      mod_revision is the state's revision)

Values are canonical JSON (sorted keys, no spaces): equal objects give equal bytes, so a
publish puts exactly the keys whose object changed. Reading goes the other way:
:func:`document` rebuilds one desired-state document from the keys, which the agent hands to
the loader like a file (validated exactly like one), and :func:`project` cuts it down to what
one host's ruleset depends on (its NICs, their subnets' and their own NSGs, the members of the
ASGs those NSGs name, every VNet, the tags), so that a change elsewhere leaves that host's
input byte-identical and its agent does nothing.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

FORMAT = 1
STATE = "state/"
AGENTS = "agents/"
PUBLISHED = STATE + "published"
DEFAULT_PREFIX = "/nsg-agent/"
# etcd refuses a request larger than --max-request-bytes (1.5 MiB by default): a bigger blob
# is refused by publish with this explanation instead of etcd's bare error.
ETCD_DEFAULT_MAX_REQUEST = 3 << 19


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _dump(model: Any, *exclude: str) -> dict:
    return model.model_dump(mode="json", exclude_none=True, exclude_defaults=True, exclude=set(exclude))


def normalize_prefix(prefix: str) -> str:
    p = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
    return p


# --- state -> keys -------------------------------------------------------------------------


def encode(loaded: Any, read_file: Callable[[Any], bytes]) -> dict[str, bytes]:
    """A validated ``LoadedState`` as relative keys (under the prefix) -> value bytes, without
    the ``published`` marker. ``read_file(path)`` reads a service-tag file's bytes."""
    state = loaded.state
    out: dict[str, bytes] = {}
    settings = {k: v for k, v in (("enforce", state.enforce if state.enforce != "all" else None),
                                  ("platform", _dump(state.platform)), ("lab", _dump(state.lab))) if v}
    out[STATE + "settings"] = canonical(settings)
    for vnet in state.virtualNetworks:
        out[f"{STATE}vnets/{vnet.name}"] = canonical(_dump(vnet, "subnets"))
        for sub in vnet.subnets:
            out[f"{STATE}subnets/{vnet.name}/{sub.name}"] = canonical(_dump(sub))
    for table in state.routeTables:
        out[f"{STATE}routetables/{table.name}"] = canonical(_dump(table))
    for nsg in state.networkSecurityGroups:
        out[f"{STATE}nsgs/{nsg.name}"] = canonical(_dump(nsg))
    members: dict[str, list[str]] = {a.name.lower(): [] for a in state.applicationSecurityGroups}
    for nic in state.networkInterfaces:
        for g in nic.applicationSecurityGroups:
            members.setdefault(g.lower(), []).append(nic.name)
        out[f"{STATE}nics/{nic.name}"] = canonical(_dump(nic, "applicationSecurityGroups", "ipConfigurations"))
    for asg in state.applicationSecurityGroups:
        out[f"{STATE}asgs/{asg.name}"] = canonical({**_dump(asg), "members": sorted(members[asg.name.lower()])})
    # The loader's tag files: those given as inputs first, then serviceTags.files, then the
    # internet file. Merged later-wins with the inputs last, so they are stored in that order.
    all_tags = list(loaded.tag_files)
    internet = all_tags.pop() if state.serviceTags.internet and all_tags else None
    n_inputs = len(all_tags) - len(state.serviceTags.files)
    ordered = all_tags[n_inputs:] + all_tags[:n_inputs]
    for i, path in enumerate(ordered):
        out[f"{STATE}servicetags/{i:02d}"] = canonical(blob(read_file(path), "file", str(path)))
    if internet is not None:
        out[f"{STATE}servicetags/internet"] = canonical(blob(read_file(internet), "internet", str(internet)))
    return out


def blob(raw: bytes, role: str, name: str) -> dict:
    change = None
    try:
        doc = json.loads(raw)
        change = doc.get("changeNumber") if isinstance(doc, dict) else None
    except ValueError:
        pass
    return {"role": role, "name": name.rsplit("/", 1)[-1], "changeNumber": change,
            "sha256": hashlib.sha256(raw).hexdigest(), "encoding": "gzip+base64",
            "data": base64.b64encode(gzip.compress(raw, 6, mtime=0)).decode()}


def blob_bytes(value: dict) -> bytes:
    if value.get("encoding") != "gzip+base64":
        raise ValueError(f"unknown blob encoding {value.get('encoding')!r}")
    raw = gzip.decompress(base64.b64decode(value["data"]))
    if hashlib.sha256(raw).hexdigest() != value.get("sha256"):
        raise ValueError("blob content does not match its sha256")
    return raw


def state_digest(keys: dict[str, bytes]) -> str:
    """The digest of a whole state (every state key but the marker): the marker carries it, so
    an agent can tell a published state from keys written around ``publish``."""
    h = hashlib.sha256()
    for k in sorted(keys):
        if k.startswith(STATE) and k != PUBLISHED:
            h.update(k.encode() + b"\0" + hashlib.sha256(keys[k]).digest())
    return h.hexdigest()


@dataclass(frozen=True)
class KeyDiff:
    put: dict[str, bytes]  # new or changed
    delete: list[str]  # vanished
    unchanged: int

    @property
    def empty(self) -> bool:
        return not self.put and not self.delete

    def lines(self, old: dict[str, bytes]) -> list[str]:
        out = [f"+ {k}  ({len(v)} bytes)" for k, v in sorted(self.put.items()) if k not in old]
        out += [f"~ {k}  ({len(old[k])} -> {len(v)} bytes)" for k, v in sorted(self.put.items()) if k in old]
        out += [f"- {k}" for k in self.delete]
        return out


def diff(old: dict[str, bytes], new: dict[str, bytes]) -> KeyDiff:
    """Relative state keys: what a publish of ``new`` over ``old`` writes (the marker aside)."""
    old = {k: v for k, v in old.items() if k.startswith(STATE) and k != PUBLISHED}
    put = {k: v for k, v in new.items() if old.get(k) != v}
    delete = sorted(k for k in old if k not in new)
    return KeyDiff(put, delete, len(new) - len(put))


# --- keys -> document ----------------------------------------------------------------------


class StateFormatError(ValueError):
    """The keys do not form a state (a value that is not JSON, a blob that does not decode...);
    ``key`` names the culprit."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass
class Document:
    """A desired-state document rebuilt from keys; ``origin`` maps each item to its key."""

    doc: dict
    blobs: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # key -> (role, raw bytes)
    origin: dict[tuple, str] = field(default_factory=dict)  # ("networkSecurityGroups", i) -> key


def _json(key: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise StateFormatError(key, f"not JSON ({e})") from None


def document(keys: dict[str, bytes], tag_path: Callable[[str, str, bytes], str]) -> Document:
    """Rebuild the document from relative keys. ``tag_path(key, role, raw)`` stores a blob
    where the loader can read it and returns that path."""
    d = Document({})
    vnets: dict[str, dict] = {}
    subnets: dict[str, list[tuple[str, dict]]] = {}
    members: dict[str, list[str]] = {}
    lists: dict[str, list[tuple[str, Any]]] = {c: [] for c in (
        "virtualNetworks", "routeTables", "networkSecurityGroups", "applicationSecurityGroups",
        "networkInterfaces")}
    tags: list[tuple[str, str]] = []
    internet = None
    for key in sorted(keys):
        if not key.startswith(STATE) or key == PUBLISHED:
            continue
        rest = key[len(STATE):]
        kind, _, name = rest.partition("/")
        if kind == "settings":
            value = _json(key, keys[key])
            if not isinstance(value, dict):
                raise StateFormatError(key, "settings must be an object")
            d.doc.update(value)
            continue
        if not name:
            raise StateFormatError(key, "unknown key")
        if kind == "servicetags":
            value = _json(key, keys[key])
            try:
                raw = blob_bytes(value)
            except (ValueError, TypeError, KeyError, OSError) as e:
                raise StateFormatError(key, f"service-tag blob does not decode: {e}") from None
            role = "internet" if name == "internet" else "file"
            path = tag_path(key, role, raw)
            d.blobs[key] = (role, raw)
            if role == "internet":
                internet = path
            else:
                tags.append((name, path))
            continue
        value = _json(key, keys[key])
        if kind == "vnets":
            vnets[name] = value
            lists["virtualNetworks"].append((key, value))
        elif kind == "subnets":
            vnet, _, sub = name.partition("/")
            if not sub:
                raise StateFormatError(key, "a subnet key is subnets/<vnet>/<subnet>")
            subnets.setdefault(vnet, []).append((key, value))
        elif kind == "routetables":
            lists["routeTables"].append((key, value))
        elif kind == "nsgs":
            lists["networkSecurityGroups"].append((key, value))
        elif kind == "asgs":
            if isinstance(value, dict):
                value = dict(value)
                for nic in value.pop("members", None) or []:
                    members.setdefault(str(nic).lower(), []).append(value.get("name", name))
            lists["applicationSecurityGroups"].append((key, value))
        elif kind == "nics":
            lists["networkInterfaces"].append((key, value))
        else:
            raise StateFormatError(key, f"unknown kind {kind!r}")
    for vnet, subs in subnets.items():
        if vnet not in vnets:
            raise StateFormatError(subs[0][0], f"subnet of VNet {vnet!r}, which has no key vnets/{vnet}")
        if isinstance(vnets[vnet], dict):
            vnets[vnet]["subnets"] = [v for _, v in subs]
    for coll, items in lists.items():
        out: list[Any] = []
        for key, value in items:
            if coll == "networkInterfaces" and isinstance(value, dict):
                groups = members.get(str(value.get("name", "")).lower())
                if groups:
                    value = {**value, "applicationSecurityGroups": groups}
            d.origin[(coll, len(out))] = key
            out.append(value)
        if out:
            d.doc[coll] = out
    if tags or internet:
        st: dict[str, Any] = {}
        if tags:
            st["files"] = [p for _, p in sorted(tags)]
        if internet:
            st["internet"] = internet
        d.doc["serviceTags"] = st
    return d


# --- one host's part -------------------------------------------------------------------------


def _lower(x: Any) -> str:
    return str(x).lower() if x is not None else ""


def _rule_asgs(nsg: dict) -> set[str]:
    out: set[str] = set()
    for rule in nsg.get("securityRules") or []:
        if isinstance(rule, dict):
            for side in ("sourceApplicationSecurityGroups", "destinationApplicationSecurityGroups"):
                out |= {_lower(g) for g in rule.get(side) or []}
    return out


def hosts_of(doc: dict) -> dict[str, list[str]]:
    """host -> its NIC names (NICs without a host under "")."""
    out: dict[str, list[str]] = {}
    for nic in doc.get("networkInterfaces") or []:
        if isinstance(nic, dict):
            out.setdefault(nic.get("host") or "", []).append(str(nic.get("name")))
    return out


def project(doc: dict, host: str) -> dict:
    """What ``host``'s ruleset depends on (see the module docstring), as a document for the
    loader. Call it on a document the loader has accepted: the cut keeps every reference it
    leaves resolvable. Foreign NICs keep only what ASG expansion needs (no interface, no NSG)."""
    me = host.lower()
    nics = [n for n in doc.get("networkInterfaces") or [] if isinstance(n, dict)]
    mine = [n for n in nics if _lower(n.get("host")) == me]
    my_subnets = {_lower(n.get("subnet")) for n in mine}
    vnets = []
    nsg_names = {_lower(n.get("networkSecurityGroup")) for n in mine if n.get("networkSecurityGroup")}
    table_names: set[str] = set()
    for v in doc.get("virtualNetworks") or []:
        subs = []
        for s in v.get("subnets") or []:
            if f"{_lower(v.get('name'))}/{_lower(s.get('name'))}" in my_subnets:
                if s.get("networkSecurityGroup"):
                    nsg_names.add(_lower(s["networkSecurityGroup"]))
                if s.get("routeTable"):
                    table_names.add(_lower(s["routeTable"]))
                subs.append(s)
            else:
                subs.append({k: x for k, x in s.items() if k not in ("networkSecurityGroup", "routeTable")})
        vnets.append({**v, "subnets": subs} if subs else v)
    nsgs = [g for g in doc.get("networkSecurityGroups") or [] if _lower(g.get("name")) in nsg_names]
    wanted = set().union(*(_rule_asgs(g) for g in nsgs)) if nsgs else set()
    out_nics = []
    for n in nics:
        if _lower(n.get("host")) == me:
            out_nics.append(n)
            continue
        groups = [g for g in n.get("applicationSecurityGroups") or [] if _lower(g) in wanted]
        if groups:
            out_nics.append({k: x for k, x in n.items() if k in ("name", "subnet", "ipAddresses", "host")}
                            | {"applicationSecurityGroups": groups})
    out = {k: v for k, v in doc.items() if k not in (
        "virtualNetworks", "networkInterfaces", "networkSecurityGroups", "routeTables")}
    if vnets:
        out["virtualNetworks"] = vnets
    if out_nics:
        out["networkInterfaces"] = out_nics
    if nsgs:
        out["networkSecurityGroups"] = nsgs
    tables = [t for t in doc.get("routeTables") or [] if _lower(t.get("name")) in table_names]
    if tables:
        out["routeTables"] = tables
    return out


def problem_key(path: str, origin: dict[tuple, str]) -> tuple[str, str] | None:
    """A loader problem's field path ("networkSecurityGroups[2].securityRules[0].priority") as
    (etcd key, path inside its value); None when it names no item."""
    head, sep, rest = path.partition("]")
    coll, _, index = head.partition("[")
    if not sep or not index.isdigit():
        return None
    key = origin.get((coll, int(index)))
    if key is None:
        return None
    return key, rest.lstrip(".")


def iter_state(keys: Iterable[str]) -> list[str]:
    return sorted(k for k in keys if k.startswith(STATE))
