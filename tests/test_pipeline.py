"""The pipeline (nsg_agent.daemon.pipeline) and its explicit memos: what one build remembers
for the next never changes a result — build(x) after build(y) with the same memo equals a
fresh build(x) — and no memo is module-global (two owners never see each other's)."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler_helpers import host_placement, policy_from_dict
from nsg_agent.compiler import HostPlacement
from nsg_agent.daemon import pipeline
from nsg_agent.daemon.targets import HostTarget, compile_host
from nsg_agent.desired.loader import LoadedState, load_bytes
from nsg_agent.desired.memo import LoadMemo, using
from nsg_agent.desired.model import DesiredState
from nsg_agent.desired.servicetags import ServiceTagIndex
from test_tracer_vs_semantics import desired_state


class FixedTarget(HostTarget):
    """The real compiler on fixed interfaces (both states compile for the same NICs)."""

    def __init__(self, placement: HostPlacement):
        super().__init__(compile_host)
        self.placement = placement

    def compile(self, policy, mode, elements=None):
        from nsg_agent.compiler import compile_ruleset

        nics = {n: i for n, i in self.placement.interfaces.items() if n in policy.nics}
        return compile_ruleset(policy, HostPlacement(nics), mode=mode, elements=elements)


def _json(build) -> str:
    return build.ruleset.to_json()


def loaded_of(doc: dict, memo: LoadMemo | None = None) -> LoadedState:
    """A generated state validated by the model (with ``memo`` active, as the loader does);
    the generator's states skip the loader's cross-checks on purpose."""
    with using(memo):
        state = DesiredState.model_validate(doc)
    return LoadedState(state=state, tags=ServiceTagIndex(), path=Path("generated.json"), sha256="")


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_a_memo_never_changes_a_build(data):
    docs = [data.draw(desired_state()), data.draw(desired_state())]
    placement = host_placement(policy_from_dict(docs[0]))
    target = FixedTarget(placement)
    for mode in ("classify", "simple"):
        load_memo, memo = LoadMemo(), pipeline.Memo()
        y = pipeline.build(loaded_of(docs[1], load_memo), target, mode, memo=memo)
        x_after_y = pipeline.build(loaded_of(docs[0], load_memo), target, mode, memo=memo)
        x_fresh = pipeline.build(loaded_of(docs[0]), target, mode)
        assert _json(x_after_y) == _json(x_fresh)
        assert x_after_y.policy == x_fresh.policy
        again = pipeline.build(loaded_of(docs[1], load_memo), target, mode, memo=memo)
        assert _json(again) == _json(y)


def test_the_memo_is_reused_and_owned(tmp_path):
    """The daemon's memo makes a reload reuse the last build's element lists (the same
    objects: the delta compares them at once); another owner's build shares nothing."""
    from test_tracer_vs_semantics import VNETS  # noqa: F401 - the generator's address plan

    doc = {"virtualNetworks": [{"name": "v", "addressSpace": ["10.9.0.0/16"],
                                "subnets": [{"name": "s", "addressPrefix": "10.9.1.0/24", "networkSecurityGroup": "n"}]}],
           "networkSecurityGroups": [{"name": "n", "securityRules": [
               {"name": f"r{i}", "priority": 100 + i, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                "sourceAddressPrefixes": [f"203.0.113.{j}" for j in range(i, i + 40)],
                "destinationAddressPrefix": "*", "sourcePortRange": "*", "destinationPortRange": str(1000 + i)}
               for i in range(6)]}],
           "networkInterfaces": [{"name": "nic", "subnet": "v/s", "ipAddresses": ["10.9.1.4"], "interface": "eth0"}]}
    raw = json.dumps(doc).encode()
    memo = pipeline.Memo()
    first = pipeline.build(load_bytes(raw, tmp_path / "s.json"), HostTarget(), "classify", memo=memo)
    second = pipeline.build(load_bytes(raw, tmp_path / "s.json"), HostTarget(), "classify", memo=memo)
    other = pipeline.build(load_bytes(raw, tmp_path / "s.json"), HostTarget(), "classify")

    def element_lists(b):
        out = []
        for c in b.ruleset.commands:
            (verb, body), = c.items()
            (kind, obj), = body.items()
            if verb == "add" and kind in ("set", "map") and obj.get("elem"):
                out.append(id(obj["elem"]))
        return out

    shared = set(element_lists(first)) & set(element_lists(second))
    assert shared, "a reload with the daemon's memo reuses the element lists"
    assert not set(element_lists(first)) & set(element_lists(other)), "an unowned build shares nothing"
    assert _json(first) == _json(second) == _json(other)
    assert memo.terms.terms, "the memo holds the last resolve's literal terms"
