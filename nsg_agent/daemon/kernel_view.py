"""Does the kernel still hold our commit? Asked the same way by the daemon (before calling an
edit unchanged, before a delta) and by ``plan``/``status``/metrics (drift, matches_commit).

Cheapest proof first: no nftables transaction in the namespace since the commit (the same
nft generation, which also differs between namespaces) proves it without a listing. Otherwise
the table's stamp must be the commit's ruleset digest and its fingerprint (the listing down
to set elements) the one taken after the commit. Never while the record is unverified (an
apply's intent written without its outcome: a kill in between).
"""

from __future__ import annotations

from typing import Any, Callable


def holds(backend: Any, commit: Any, *, unverified: bool, generation: int | None = None,
          fingerprint: "str | None | Callable[[], str | None]" = None) -> bool:
    """``generation``: the namespace's generation now (read from the backend when None);
    ``fingerprint``: the listing fingerprint now, or a function that takes it (only called
    when the cheaper checks cannot decide)."""
    if commit is None or unverified:
        return False
    if generation is None:
        read = getattr(backend, "generation", None)
        generation = read() if read is not None else None
    if generation is not None and commit.kernel_generation is not None and generation == commit.kernel_generation:
        return True
    if commit.kernel_fingerprint is None:
        return False
    stamp = getattr(backend, "stamp", None)
    if stamp is not None and stamp() != commit.ruleset_sha256:
        return False
    found = fingerprint() if callable(fingerprint) else fingerprint
    return found is not None and found == commit.kernel_fingerprint
