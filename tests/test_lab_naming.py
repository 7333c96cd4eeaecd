"""Lab naming: lab names, namespace and interface names, stable index allocation."""

from __future__ import annotations

import pytest

from nsg_agent.lab import naming


@pytest.mark.parametrize("path, expected", [
    ("examples/lab-demo.yaml", "lab-demo"),
    ("/x/Hub_Spoke.YML", "hub-spoke"),
    ("weird..name!!.json", "weird-name"),
    ("a" * 40 + ".yaml", "a" * naming.MAX_LAB_NAME),
    ("___.yaml", "lab"),
], ids=["plain", "case-and-underscore", "punctuation", "truncated", "empty-stem"])
def test_lab_name_from_file(path, expected):
    """A file name folds to a valid lab name ([a-z0-9-], bounded length)."""
    name = naming.lab_name_from_file(path)
    assert name == expected
    assert naming.check_lab_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a_b", "a" * (naming.MAX_LAB_NAME + 1), "a/b"],
                         ids=["empty", "leading-dash", "trailing-dash", "upper", "underscore",
                              "too-long", "slash"])
def test_bad_lab_names_are_refused(name):
    """Names that could not make safe namespace names are refused with a reason."""
    with pytest.raises(naming.LabNameError, match="lab name"):
        naming.check_lab_name(name)


def test_namespace_and_interface_names_fit_the_kernel_limits():
    """Namespace names carry the nsgl- prefix; interface names are <= 15 chars and start with nsg."""
    lab = "a" * naming.MAX_LAB_NAME
    assert naming.fabric_netns(lab) == f"nsgl-{lab}-fab"
    assert naming.nic_netns(lab, 7) == f"nsgl-{lab}-n7"
    assert naming.host_netns(lab, 2) == f"nsgl-{lab}-h2"
    assert naming.platform_netns(lab) == f"nsgl-{lab}-plat"
    for ifname in (naming.bridge_ifname(99999), naming.nic_port_ifname(99999),
                   naming.host_port_ifname(99999), naming.transit_ifname("h99999"),
                   naming.PLATFORM_PORT):
        assert ifname.startswith("nsg") and len(ifname) <= naming.IFNAME_MAX


@pytest.mark.parametrize("lab, netns, belongs", [
    ("a", "nsgl-a-fab", True),
    ("a", "nsgl-a-n12", True),
    ("a", "nsgl-a-h0", True),
    ("a", "nsgl-a-plat", True),
    ("a", "nsgl-a-b-fab", False),
    ("a-b", "nsgl-a-b-fab", True),
    ("a", "nsgl-a-fabx", False),
    ("a", "other-a-fab", False),
], ids=["fabric", "nic", "host", "platform", "other-lab-with-prefix", "dashed-lab",
        "suffix", "foreign"])
def test_lab_netns_pattern_matches_only_its_own_namespaces(lab, netns, belongs):
    """down's fallback (delete by name) never matches another lab's namespaces."""
    assert bool(naming.lab_netns_pattern(lab).match(netns)) is belongs


@pytest.mark.parametrize("netns, lab", [
    ("nsgl-demo-fab", "demo"), ("nsgl-a-b-n3", "a-b"), ("nsgl-x-plat", "x"),
    ("nsgl--fab", None), ("nsgl-demo-zz", None), ("ns1", None),
], ids=["fabric", "dashed", "platform", "empty-lab", "unknown-role", "foreign"])
def test_lab_of_netns(netns, lab):
    """A lab namespace name tells which lab it belongs to."""
    assert naming.lab_of_netns(netns) == lab


@pytest.mark.parametrize("keys, previous, expected", [
    (["a", "b", "c"], None, {"a": 0, "b": 1, "c": 2}),
    (["a", "c"], {"a": 0, "b": 1, "c": 2}, {"a": 0, "c": 2}),
    (["a", "c", "d"], {"a": 0, "b": 1, "c": 2}, {"a": 0, "c": 2, "d": 1}),
    (["D", "a"], {"d": 5}, {"d": 5, "a": 0}),
    (["x", "X"], None, {"x": 0}),
], ids=["fresh", "removal-keeps-others", "new-fills-the-gap", "case-insensitive", "duplicates"])
def test_allocate_indexes_is_stable(keys, previous, expected):
    """A name keeps its index across edits; new names take the lowest free index."""
    assert naming.allocate_indexes(keys, previous) == expected
