"""What the ruleset carries for flow logs (pure): deny logging and allow attribution.

Denied flows: every rule that drops for an NSG rule, a level's NoRuleMatched or a platform
rule is preceded by a rule with the same matches and

    limit rate 10/second burst 20 packets log prefix "I web-nsg: DefaultRule_DenyAllInBound" group 3456

(no verdict). ``limit`` is a match: over the rate it stops *that* rule, so the packet goes on to
the next rule, the counted drop, exactly as without logging; the drop never depends on the log.
NFLOG is asynchronous (a full socket buffer loses log messages in the kernel, never packets).
The prefix is the direction (``I``/``O``) and the counted rule's comment, so a log message
names its NSG and rule without any lookup (long comments are shortened with a hash, like
comments; the rule index names them).

Allowed flows: a new connection that an NSG rule allows sets the conntrack mark to that
rule's id, one slot per direction (a connection between two NICs of a lab passes the
sender's outbound and the receiver's inbound levels), so the conntrack events of the flow
carry who allowed it:

    ct mark bits  0- 7  left to the host (routing marks and the like are usually small)
    ct mark bits  8-19  inbound rule id   (0: none)
    ct mark bits 20-31  outbound rule id  (0: none)

``ct mark set ct mark & ~slot | id << shift`` keeps the other bits. When two levels allow in
one direction (subnet and NIC NSG), the later level's rule is what the slot holds at the end:
inbound the NIC NSG's rule, outbound the subnet NSG's (docs/flowlogs.md says why that is
the one reported). Ids are assigned from the rule index alone (:func:`rule_ids`), so the
collector recomputes the map from the commit's ``rule_index`` without any other state.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from nsg_agent.compiler.results import RuleIndex, RuleRef

NFLOG_GROUP = 3456
LOG_RATE = 10  # per second, per deny rule (nft limit; the kernel drops log messages above it)
LOG_BURST = 20
PREFIX_MAX = 127  # NF_LOG_PREFIXLEN (128) with its NUL

SLOT_BITS = 12
MAX_ID = (1 << SLOT_BITS) - 1  # 4095: "some rule beyond the id space" (not attributed)
SHIFT = {"Inbound": 8, "Outbound": 20}
DIRECTION_LETTER = {"Inbound": "I", "Outbound": "O"}


def slot_mask(direction: str) -> int:
    return MAX_ID << SHIFT[direction]


def log_prefix(direction: str, comment: str) -> str:
    text = f"{DIRECTION_LETTER[direction]} {comment}"
    if len(text.encode()) <= PREFIX_MAX:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    raw = text.encode()[: PREFIX_MAX - 9].decode(errors="ignore")
    return f"{raw}~{digest}"


def parse_prefix(prefix: str) -> tuple[str, str] | None:
    """(direction, comment) of a log prefix this module wrote; None for another's."""
    letter, _, comment = prefix.partition(" ")
    for direction, mark in DIRECTION_LETTER.items():
        if letter == mark and comment:
            return direction, comment
    return None


def split_comment(comment: str) -> tuple[str, str]:
    """(nsg, rule) of a counted rule's comment; nsg "" for platform rules."""
    nsg, sep, rule = comment.partition(": ")
    return (nsg, rule) if sep else ("", comment)


def log_statements(direction: str, comment: str) -> list[dict]:
    return [{"limit": {"rate": LOG_RATE, "per": "second", "burst": LOG_BURST}},
            {"log": {"prefix": log_prefix(direction, comment), "group": NFLOG_GROUP}}]


def mark_statement(direction: str, rule_id: int) -> dict:
    """``ct mark set ct mark & ~slot | id << shift``."""
    keep = 0xFFFFFFFF & ~slot_mask(direction)
    mark = {"ct": {"key": "mark"}}
    return {"mangle": {"key": {"ct": {"key": "mark"}},
                       "value": {"|": [{"&": [mark, keep]}, rule_id << SHIFT[direction]]}}}


def rule_ids(refs: Iterable["RuleRef"]) -> dict[tuple[str, str, str], int]:
    """(direction, nsg, rule) -> id, 1..4094 per direction, in sorted order; rules beyond
    get MAX_ID. ``refs`` are the rule index's RuleRefs (``RuleIndex.refs()``)."""
    triples = sorted({(r.direction, r.nsg, r.rule) for r in refs})
    out: dict[tuple[str, str, str], int] = {}
    next_id: dict[str, int] = {}
    for t in triples:
        n = next_id.get(t[0], 1)
        out[t] = min(n, MAX_ID)
        next_id[t[0]] = n + 1
    return out


def decode_mark(mark: int) -> dict[str, int]:
    """{direction: rule id} for the slots set in a conntrack mark."""
    out = {}
    for direction, shift in SHIFT.items():
        value = (mark >> shift) & MAX_ID
        if value:
            out[direction] = value
    return out


def ids_to_rules(index: "RuleIndex") -> dict[tuple[str, int], tuple[str, str]]:
    """(direction, id) -> (nsg, rule) from a commit's rule index; MAX_ID is left out
    (ambiguous)."""
    out = {}
    for (direction, nsg, rule), n in rule_ids(index.refs()).items():
        if n != MAX_ID:
            out[(direction, n)] = (nsg, rule)
    return out
