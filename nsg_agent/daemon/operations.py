"""What the enforcement commands ask of a namespace, as functions the CLI, the daemon's
metrics and ``confirm`` share: the status record as the agent wrote it, whether the kernel still
holds its commit, a plan (what an apply would change), the reviewer's view of an edit, and the
status report. The CLI only parses arguments and prints what these return."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nsg_agent.daemon.status import Plan, Status, StatusFileError, StatusStore, make_plan, rule_digests, set_sizes

if TYPE_CHECKING:
    from nsg_agent.compiler.results import Summary


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def read_record(store: StatusStore) -> tuple[Status, str | None]:
    """The record, or an empty one and the reason when the status file is not the agent's
    (read-only commands report it and leave the file where it is)."""
    try:
        return store.read(), None
    except StatusFileError as e:
        return Status(netns=store.netns), str(e)


def build_plan(file: Any, mode: str, store: StatusStore, backend: Any | None,
               load_options: dict | None = None) -> tuple[Plan, "Summary"]:
    """Compile ``file`` (one path or several) and diff it against the remembered commit and
    the kernel; the plan and the new ruleset's summary."""
    from nsg_agent.daemon import pipeline
    from nsg_agent.daemon.targets import HostTarget, host_interfaces
    from nsg_agent.desired import loader

    built = pipeline.build(loader.load(file, **(load_options or {})), HostTarget(), mode)
    policy, rs = built.policy, built.ruleset
    assert rs is not None
    interfaces = host_interfaces(policy)
    rules, sets = rule_digests(policy, interfaces), set_sizes(rs.commands)
    status, problem = read_record(store)
    commit = status.commit
    plan = make_plan(commit, rules, sets)
    plan.record_problem = problem or ("an apply was interrupted (record unverified)" if status.unverified else None)
    if backend is not None:
        fingerprint = backend.fingerprint()
        plan.table_present = fingerprint is not None
        plan.drift = commit is not None and not kernel_matches(backend, status, fingerprint)
        if commit is None and fingerprint is None:
            plan.drift = False
    return plan, rs.summary


def kernel_matches(backend: Any, status: Status, fingerprint: str | None) -> bool:
    """Does the kernel still hold the record's commit (nsg_agent.daemon.kernel_view)? Never
    while the record is unverified, nor when the table is absent (``fingerprint`` None)."""
    from nsg_agent.daemon import kernel_view

    if fingerprint is None:
        return False
    return kernel_view.holds(backend, status.commit, unverified=status.unverified, fingerprint=fingerprint)


def review_change(file: Any, store: StatusStore, backend: Any | None, load_options: dict | None = None):
    """The reviewer's view of applying ``file``: per-rule changes against the last commit's
    desired state, shadowed rules, revoked live connections and the coverage check (the
    last two need the kernel: root). The current policy is the last commit's desired state
    resolved with today's service-tag files."""
    from nsg_agent.daemon import coverage, pipeline, review
    from nsg_agent.daemon.targets import host_interfaces
    from nsg_agent.desired import loader
    from nsg_agent.host import conntrack

    loaded = loader.load(file, **(load_options or {}))
    new = pipeline.build(loaded).policy
    old_state = store.read_applied() if read_record(store)[0].commit is not None else None
    # the last commit's desired state, with today's service-tag files
    old = pipeline.build(replace(loaded, state=old_state)).policy if old_state is not None else None
    rev = review.Review(review.rule_changes(old_state, loaded.state), review.shadowed_rules(new))
    cov = None
    if backend is not None and hasattr(backend, "runner"):
        links = coverage.interface_addresses(backend.runner)
        entries = conntrack.list_entries(backend.runner)
        local = {a for addrs in links.values() for a in addrs}
        sessions = [s for s in [coverage.ssh_session()] if s is not None]
        sessions += coverage.conntrack_sessions(entries, local)
        rev.revoked = review.revocations(old, new, entries)
        old_if = host_interfaces(old) if old is not None else None
        cov = coverage.check(new, host_interfaces(new), links, sessions, old, old_if)
    return rev, cov


def collect_status(store: StatusStore, backend: Any | None) -> dict:
    status, problem = read_record(store)
    out: dict[str, Any] = {"netns": store.netns or "host", "status_file": str(store.path),
                           "record_error": problem, "pending": status.pending,
                           "unverified": status.unverified}
    c = status.commit
    out["commit"] = None if c is None else {
        "source": c.source, "sha256": c.sha256, "files": c.files, "applied_at": c.applied_at,
        "applied": when(c.applied_at), "mode": c.mode, "ruleset_sha256": c.ruleset_sha256,
        "how": c.how, "revision": c.revision, "published_at": c.published_at,
        "counts": c.summary.counts(),
    }
    out["last_error"] = status.last_error
    from nsg_agent.daemon import confirm, fleet

    out["fleet"] = fleet.read_side(store)  # run --etcd: the store's connection, the revision enforced

    out["pending_confirm"] = confirm.describe(store)
    out["kernel"] = None
    if backend is not None:
        fingerprint = backend.fingerprint()
        counters = backend.counters() if fingerprint is not None else {}
        from nsg_agent.compiler.results import RuleIndex

        index = c.rule_index if c else RuleIndex()
        rules = []
        for (chain, comment), ctr in sorted(counters.items()):
            ref = index.lookup(chain, comment)  # None: a structural rule (conntrack, dispatch)
            rules.append({"chain": chain, "comment": comment, "packets": ctr.packets, "bytes": ctr.bytes,
                          "nsg": ref.nsg if ref else None, "rule": ref.rule if ref else None,
                          "direction": ref.direction if ref else None})
        stamp = backend.stamp() if hasattr(backend, "stamp") else None
        from nsg_agent.kernel import counters as counting

        out["kernel"] = {
            "table_present": fingerprint is not None,
            "matches_commit": kernel_matches(backend, status, fingerprint),
            # the digest of the ruleset the table carries ("" while a replace is half done)
            "ruleset_sha256": stamp,
            "rules": rules,  # per nft rule (internal chain)
            # per NSG, direction and rule, summed over its chains, with the NICs they serve
            "rule_hits": [h.as_dict() for h in counting.by_rule(counters, index)],
        }
    return out
