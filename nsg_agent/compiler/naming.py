"""Names in the compiled table (pure): the table, the chains' content-hash names, and the
comments that carry NSG and rule names (``nft list ruleset`` reads like the NSG)."""

from __future__ import annotations

import hashlib
import re

from nsg_agent.semantics.policy import ResolvedRule

TABLE_NAME = "nsg_agent"
COMMENT_MAX = 128  # nft refuses longer comments

SMTP_COMMENT = "PlatformRule_BlockOutboundSmtp"
EXEMPT_COMMENT = "PlatformRule_PlatformExemption"
ND_COMMENT = "PlatformRule_AllowNeighborDiscovery"


def name_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def nft_comment(text: str) -> str:
    """``text`` as an nft comment: longer ones are cut and end in a digest of the whole."""
    if len(text.encode()) <= COMMENT_MAX:
        return text
    return text[: COMMENT_MAX - 10] + "~" + name_digest(text)[:8]


def rule_comment(rule: ResolvedRule) -> str:
    return nft_comment(f"{rule.nsg}: {rule.log_name}" if rule.nsg else rule.log_name)


def nic_slug(name: str) -> str:
    """A NIC's name as a chain-name part: itself when short and plain, else cut + digest."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if s == name and len(s) <= 20:
        return s
    return f"{s[:12]}_{name_digest(name)[:6]}"
