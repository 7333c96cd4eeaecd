"""Integer-range prefix sets (nsg_agent.netaddr.PrefixSet) agree with the stdlib ipaddress module,
and the caches around them (service-tag files, literal terms, valid prefix lists) never change
a result."""

from __future__ import annotations

import ipaddress
import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsg_agent.desired import loader, servicetags
from nsg_agent.errors import LoadError
from nsg_agent.netaddr import PrefixSet, collapse, exclude, parse_cidr, range_cidrs
from nsg_agent.semantics import resolver as semantics
from nsg_agent.semantics.policy import AddressTerm

NET = ipaddress.ip_network


def _v4_net():
    return st.builds(lambda a, plen: ipaddress.IPv4Network((a >> (32 - plen) << (32 - plen), plen)),
                     st.integers(0, 2**32 - 1), st.integers(16, 32))


def _v6_net():
    return st.builds(lambda a, plen: ipaddress.IPv6Network((a >> (128 - plen) << (128 - plen), plen)),
                     st.integers(0, 2**128 - 1), st.integers(100, 128))


NETS = st.lists(st.one_of(_v4_net(), _v6_net()), max_size=30)


def _stdlib_collapse(nets):
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    return tuple(ipaddress.collapse_addresses(v4)) + tuple(ipaddress.collapse_addresses(v6))


@settings(max_examples=300, deadline=None)
@given(NETS)
def test_collapse_matches_ipaddress(nets):
    """collapse() gives exactly ipaddress.collapse_addresses per family, IPv4 first."""
    assert collapse(nets) == _stdlib_collapse(nets)


@settings(max_examples=200, deadline=None)
@given(NETS, NETS)
def test_exclude_matches_address_exclude(base, remove):
    """exclude() covers exactly the addresses of base outside remove, as collapsed prefixes."""
    expected = list(_stdlib_collapse(base))
    for r in _stdlib_collapse(remove):
        nxt = []
        for b in expected:
            if b.version != r.version or not b.overlaps(r):
                nxt.append(b)
            elif r.subnet_of(b):
                nxt.extend(b.address_exclude(r))
        expected = nxt
    assert exclude(base, remove) == _stdlib_collapse(expected)


@settings(max_examples=200, deadline=None)
@given(NETS, st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                       st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)))
def test_term_contains_matches_networks(nets, address):
    """AddressTerm.contains agrees with membership in any of its networks."""
    term = AddressTerm.of("t", nets)
    assert term.contains(address) == any(address in n for n in nets if n.version == address.version)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_range_cidrs_matches_summarize(a, b):
    """range_cidrs gives ipaddress.summarize_address_range's prefixes."""
    lo, hi = min(a, b), max(a, b)
    expected = [(int(n.network_address), n.prefixlen) for n in ipaddress.summarize_address_range(
        ipaddress.IPv4Address(lo), ipaddress.IPv4Address(hi))]
    assert range_cidrs(lo, hi, 32) == expected


PARSE_ROWS = [
    ("v4-host", "10.1.2.3", True, (4, 0x0A010203, 32)),
    ("v4-prefix", "10.1.0.0/16", True, (4, 0x0A010000, 16)),
    ("v4-host-bits-loose", "10.1.2.3/16", False, (4, 0x0A010000, 16)),
    ("v4-host-bits-strict", "10.1.2.3/16", True, None),
    ("v4-leading-zero", "010.1.2.3", True, None),
    ("v4-octet-too-big", "10.1.2.256", True, None),
    ("v4-prefix-too-long", "10.1.2.3/33", True, None),
    ("v4-prefix-leading-zero", "10.1.0.0/016", True, (4, 0x0A010000, 16)),
    ("v4-netmask-form", "10.1.0.0/255.255.0.0", True, (4, 0x0A010000, 16)),
    ("v6-compressed", "2001:db8::/32", True, (6, 0x20010DB8 << 96, 32)),
    ("v6-full", "1:2:3:4:5:6:7:8", True, (6, 0x00010002000300040005000600070008, 128)),
    ("v6-double-gap", "1::2::3", True, None),
    ("v6-no-gap-left", "1:2:3:4::5:6:7:8", True, None),
    ("v6-mapped-v4", "::ffff:10.1.2.3", True, (6, 0xFFFF0A010203, 128)),
    ("v6-hextet-too-long", "12345::", True, None),
    ("whitespace", " 10.0.0.0/8", True, None),
    ("garbage", "not-an-address", True, None),
]


@pytest.mark.parametrize("text,strict,expected", [r[1:] for r in PARSE_ROWS], ids=[r[0] for r in PARSE_ROWS])
def test_parse_cidr_agrees_with_ip_network(text, strict, expected):
    """parse_cidr accepts and refuses exactly what ipaddress.ip_network does."""
    try:
        net = ipaddress.ip_network(text, strict=strict)
        reference = (net.version, int(net.network_address), net.prefixlen)
    except ValueError:
        reference = None
    assert reference == expected
    if expected is None:
        with pytest.raises(ValueError):
            parse_cidr(text, strict)
    else:
        assert parse_cidr(text, strict) == expected


def test_term_repr_is_the_dataclass_repr():
    """repr(AddressTerm) is unchanged from the dataclass it replaced (status digests use it)."""
    nets = (NET("10.0.0.0/24"), NET("2001:db8::/48"))
    term = AddressTerm.of("x", nets)
    assert repr(term) == f"AddressTerm(label='x', any=False, prefixes={nets!r})"
    one = AddressTerm.of("y", [NET("10.0.0.1/32")])
    assert repr(one) == "AddressTerm(label='y', any=False, prefixes=(IPv4Network('10.0.0.1/32'),))"
    assert repr(AddressTerm("*", any=True)) == "AddressTerm(label='*', any=True, prefixes=())"


def test_term_accessors_equality_and_pickle():
    """cidrs/ranges give the prefixes as ints; equal sets compare and hash equal; terms pickle."""
    a = AddressTerm.of("x", [NET("10.0.0.0/25"), NET("10.0.0.128/25"), NET("10.0.1.0/32")])
    b = AddressTerm.of("x", PrefixSet.parse(["10.0.0.0/24", "10.0.1.0"]))
    assert a == b and hash(a) == hash(b)
    assert a.prefixes == (NET("10.0.0.0/24"), NET("10.0.1.0/32"))
    assert a.cidrs(4) == ((0x0A000000, 24), (0x0A000100, 32))
    assert a.ranges(4) == ((0x0A000000, 0x0A000100),) and a.ranges(6) == ()
    assert pickle.loads(pickle.dumps(a)) == a
    with pytest.raises(AttributeError):
        a.label = "y"  # type: ignore[misc]


def _tag_doc(prefixes):
    return {"changeNumber": 7, "cloud": "Public", "values": [
        {"name": "Bench.EastUS", "id": "x", "properties": {"addressPrefixes": prefixes, "region": "eastus"}},
        {"name": "Other", "id": "y", "properties": {"addressPrefixes": ["203.0.113.0/24"]}},
    ]}


def _state(tag_file: str) -> dict:
    return {
        "virtualNetworks": [{"name": "v1", "addressSpace": ["10.0.0.0/16"],
                             "subnets": [{"name": "s1", "addressPrefix": "10.0.1.0/24"}]}],
        "networkInterfaces": [{"name": "n1", "subnet": "v1/s1", "ipAddresses": ["10.0.1.4"],
                               "networkSecurityGroup": "g"}],
        "networkSecurityGroups": [{"name": "g", "securityRules": [
            {"name": "tag", "priority": 100, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
             "sourceAddressPrefix": "Bench.EastUS", "sourcePortRange": "*",
             "destinationAddressPrefix": "*", "destinationPortRange": "443"},
            {"name": "list", "priority": 110, "direction": "Inbound", "access": "Deny", "protocol": "*",
             "sourceAddressPrefixes": ["198.51.100.0/25", "198.51.100.128/25"], "sourcePortRange": "*",
             "destinationAddressPrefix": "*", "destinationPortRange": "*"}]}],
        "serviceTags": {"files": [tag_file]},
    }


def _source(loaded, rule):
    policy = semantics.resolve(loaded.state, loaded.tags)
    return next(r for r in policy.nics["n1"].inbound[0].rules if r.name == rule).source


def test_service_tag_file_edits_are_seen_through_the_cache(tmp_path):
    """Reloading with the owner's memo after a tag file edit uses the new prefixes; an unchanged
    file gives the same tags (not parsed again); without a memo nothing is remembered."""
    from nsg_agent.desired.memo import LoadMemo

    tags = tmp_path / "tags.json"
    tags.write_text(json.dumps(_tag_doc(["198.51.100.0/24"])))
    state = tmp_path / "state.json"
    state.write_text(json.dumps(_state("tags.json")))
    memo = LoadMemo()
    first = loader.load(state, memo=memo)
    assert _source(first, "tag").prefixes == (NET("198.51.100.0/24"),)
    again = loader.load(state, memo=memo)
    assert again.tags.get("bench.eastus") is first.tags.get("bench.eastus")  # not parsed again
    fresh = loader.load(state)  # no memo: no hidden state shared with the loads above
    assert fresh.tags.get("bench.eastus") is not first.tags.get("bench.eastus")
    assert fresh.tags.get("bench.eastus") == first.tags.get("bench.eastus")
    tags.write_text(json.dumps(_tag_doc(["198.51.100.0/24", "2001:db8:ffff::/48"])))
    edited = loader.load(state, memo=memo)
    assert _source(edited, "tag").prefixes == (NET("198.51.100.0/24"), NET("2001:db8:ffff::/48"))
    assert edited.tags.get("other").prefix_set == first.tags.get("other").prefix_set


def test_bad_tag_prefix_is_reported_every_time(tmp_path):
    """A bad prefix in a tag file is reported on every load, cached or not."""
    tags = tmp_path / "tags.json"
    tags.write_text(json.dumps(_tag_doc(["198.51.100.0/24", "300.1.1.1/8"])))
    state = tmp_path / "state.json"
    state.write_text(json.dumps(_state("tags.json")))
    for _ in range(2):
        with pytest.raises(LoadError) as err:
            loader.load(state)
        assert any("'300.1.1.1/8' is not a CIDR prefix" in p.message for p in err.value.problems)


def test_service_tag_memo_reparses_only_changed_lists():
    """A parse with a memo reuses the prefix sets of unchanged lists and parses changed ones."""
    memo = servicetags.ValueMemo()
    first, _ = servicetags.parse_service_tags(_tag_doc(["198.51.100.0/24"]), "f", memo)
    second, _ = servicetags.parse_service_tags(
        _tag_doc(["198.51.100.0/24", "203.0.113.7"]), "f", servicetags.ValueMemo(memo))
    assert second.get("other").prefix_set is first.get("other").prefix_set
    assert second.get("bench.eastus").prefixes == (NET("198.51.100.0/24"), NET("203.0.113.7/32"))


def test_invalid_list_is_refused_after_a_valid_one(tmp_path):
    """A prefix list that differs from a list validated earlier is validated again."""
    state = tmp_path / "state.json"
    doc = _state("tags.json")
    (tmp_path / "tags.json").write_text(json.dumps(_tag_doc(["198.51.100.0/24"])))
    state.write_text(json.dumps(doc))
    loader.load(state)
    doc["networkSecurityGroups"][0]["securityRules"][1]["sourceAddressPrefixes"] = [
        "198.51.100.0/25\n198.51.100.128/25", ""]
    state.write_text(json.dumps(doc))
    with pytest.raises(LoadError):
        loader.load(state)


def test_resolve_memo_follows_list_edits(tmp_path):
    """Resolving again after a prefix list changes gives the new prefixes (no stale term)."""
    (tmp_path / "tags.json").write_text(json.dumps(_tag_doc(["198.51.100.0/24"])))
    state = tmp_path / "state.json"
    doc = _state("tags.json")
    state.write_text(json.dumps(doc))
    assert _source(loader.load(state), "list").prefixes == (NET("198.51.100.0/24"),)
    doc["networkSecurityGroups"][0]["securityRules"][1]["sourceAddressPrefixes"] = ["198.51.100.0/25"]
    state.write_text(json.dumps(doc))
    assert _source(loader.load(state), "list").prefixes == (NET("198.51.100.0/25"),)
