"""Microsoft's published service-tag files (ServiceTags_Public_*.json) as a lookup table.

Format: {"changeNumber": N, "cloud": "Public", "values": [{"name": "Storage.EastUS",
"id": ..., "properties": {"addressPrefixes": [...], "region": ..., "systemService": ...,
"networkFeatures": [...] | null}}]}. IPv4 and IPv6 prefixes are mixed. Names are matched
case-insensitively, as Azure does.

A published file holds ~100k prefixes. Each tag keeps them as integer ranges (PrefixSet), and
``parse_service_tag_file`` keeps the last few parsed files keyed by (path, sha256), so an
unchanged file is not parsed again when the desired state is reloaded.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from nsg_agent.netaddr import EMPTY_PREFIXES, IPNetwork, PrefixSet, parse_cidr


@dataclass(frozen=True)
class ServiceTag:
    name: str
    prefix_set: PrefixSet = EMPTY_PREFIXES
    region: str = ""
    system_service: str = ""
    source: str = ""

    @property
    def prefixes(self) -> tuple[IPNetwork, ...]:
        """The tag's prefixes as collapsed ipaddress networks, IPv4 first (built on demand)."""
        return self.prefix_set.networks()


@dataclass(frozen=True)
class ServiceTagIndex:
    tags: dict[str, ServiceTag] = field(default_factory=dict)  # key: lower-case name
    change_numbers: dict[str, int] = field(default_factory=dict)  # file -> changeNumber
    # the user's expansion of the Internet tag (serviceTags.internet), None: the built-in one
    internet: PrefixSet | None = None

    def get(self, name: str) -> ServiceTag | None:
        return self.tags.get(name.lower())

    def merged(self, other: "ServiceTagIndex") -> "ServiceTagIndex":
        return ServiceTagIndex({**self.tags, **other.tags}, {**self.change_numbers, **other.change_numbers},
                               other.internet if other.internet is not None else self.internet)

    def with_internet(self, internet: PrefixSet | None) -> "ServiceTagIndex":
        return ServiceTagIndex(self.tags, self.change_numbers, internet)


def parse_service_tags(doc: object, source: str, memo: "ValueMemo | None" = None,
                       ) -> tuple[ServiceTagIndex, list[tuple[str, str]]]:
    """Parse a loaded service-tag document. Returns the index and (field path, problem) pairs.

    ``memo`` (optional) holds the prefix sets of valid prefix lists from an earlier parse;
    lists found there are not parsed again, and the lists parsed now are recorded in it."""
    problems: list[tuple[str, str]] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), list):
        return ServiceTagIndex(), [("", "not a service-tag file: expected an object with a 'values' list")]
    tags: dict[str, ServiceTag] = {}
    for i, value in enumerate(doc["values"]):
        where = f"values[{i}]"
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            problems.append((where, "each value needs a 'name'"))
            continue
        props = value.get("properties") or {}
        raw = props.get("addressPrefixes") or []
        if not isinstance(raw, list):
            problems.append((f"{where}.properties.addressPrefixes", "must be a list"))
            continue
        key = memo.key(raw) if memo is not None else None
        prefix_set = memo.get(key) if memo is not None and key is not None else None
        if prefix_set is None:
            cidrs = []
            n_problems = len(problems)
            for j, p in enumerate(raw):
                try:
                    cidrs.append(parse_cidr(p if isinstance(p, str) else str(p), strict=False))
                except ValueError:
                    problems.append((f"{where}.properties.addressPrefixes[{j}]", f"{p!r} is not a CIDR prefix"))
            prefix_set = PrefixSet.from_cidrs(cidrs)
            if memo is not None and key is not None and len(problems) == n_problems:
                memo.put(key, prefix_set)
        tags[value["name"].lower()] = ServiceTag(
            name=value["name"],
            prefix_set=prefix_set,
            region=props.get("region") or "",
            system_service=props.get("systemService") or "",
            source=source,
        )
    change = doc.get("changeNumber")
    return ServiceTagIndex(tags, {source: change if isinstance(change, int) else 0}), problems


class ValueMemo:
    """Prefix sets of valid prefix lists, by a digest of the list's text.

    The key is (length, blake2b of the items joined by newlines), for lists of strings only.
    A valid prefix never contains a newline, so a list with a newline inside an item joins to
    more newlines than a valid list of the same length: it cannot hit a valid entry."""

    def __init__(self, previous: "ValueMemo | None" = None):
        self._old = previous.entries if previous is not None else {}
        self.entries: dict[tuple[int, bytes], PrefixSet] = {}

    @staticmethod
    def key(raw: list) -> tuple[int, bytes] | None:
        if not all(type(p) is str for p in raw):
            return None
        return len(raw), hashlib.blake2b("\n".join(raw).encode("utf-8", "surrogatepass"), digest_size=20).digest()

    def get(self, key: tuple[int, bytes]) -> PrefixSet | None:
        found = self.entries.get(key) or self._old.get(key)
        if found is not None:
            self.entries[key] = found
        return found

    def put(self, key: tuple[int, bytes], prefix_set: PrefixSet) -> None:
        self.entries[key] = prefix_set


# --- parsed files, by content ------------------------------------------------------------

_CACHE_SIZE = 4  # a few files (or versions of one) stay parsed
_cache: "OrderedDict[tuple[str, str], tuple[ServiceTagIndex, tuple[tuple[str, str], ...]]]" = OrderedDict()
_cache_lock = threading.Lock()
_memos: dict[str, ValueMemo] = {}  # source -> the tags' prefix lists of its last parse


def parse_service_tag_file(raw: bytes, source: str, decode) -> tuple[ServiceTagIndex, list[tuple[str, str]]]:
    """``parse_service_tags(decode(raw), source)``, remembered by (source, sha256 of raw).

    ``decode`` turns the bytes into the document (JSON or YAML) and may raise; errors are not
    remembered. The result is immutable, so handing the same one out again is safe. A
    changed file is parsed again, but only the tags whose prefix lists changed."""
    key = (source, hashlib.sha256(raw).hexdigest())
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
    if hit is None:
        doc = decode(raw)
        with _cache_lock:
            previous = _memos.get(source)
        memo = ValueMemo(previous)
        index, problems = parse_service_tags(doc, source, memo)
        hit = (index, tuple(problems))
        with _cache_lock:
            _memos[source] = memo
            while len(_memos) > _CACHE_SIZE:
                del _memos[next(iter(_memos))]
            _cache[key] = hit
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return hit[0], list(hit[1])
