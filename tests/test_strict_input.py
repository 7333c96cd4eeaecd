"""Nothing a user wrote is silently ignored (issue 10) and hostile input is bounded (issue 13
item 1): unknown keys, required fields, every problem in one run, --strict, several files,
file references; regular files only, size limits, YAML alias bombs, duplicate keys, huge
numbers, deep nesting, wrong types -- each a LoadError with file, line and field, never
another exception."""

from __future__ import annotations

import copy
import json
import os
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon_helpers import fake_compile, policy_text, write
from foundation_helpers import base_state, load_doc, problems_of, rule
from nsg_agent.cli.main import main
from nsg_agent.daemon.reconciler import Reconciler
from nsg_agent.daemon.status import StatusStore
from nsg_agent.desired.loader import LoadedState, load, load_bytes
from nsg_agent.desired.reading import Limits
from nsg_agent.errors import LoadError
from nsg_agent.testing import FakeBackend, FakeClock


def _load_text(text: str, name: str = "f.yaml", **kw) -> LoadedState:
    return load_bytes(text.encode(), Path(name), **kw)


def _problems(text: str, name: str = "f.yaml", **kw):
    with pytest.raises(LoadError) as e:
        _load_text(text, name, **kw)
    assert e.value.problems
    return e.value.problems


def _doc_with_rule(r: dict) -> dict:
    return base_state(subnet_rules=[r])


# --- typos: misspelled keys never change the meaning silently -------------------------------


@pytest.mark.parametrize("wrong,right", [
    ("destinationPortRnage", "destinationPortRange"),
    ("sourcePortRagne", "sourcePortRange"),
    ("sourceAdressPrefix", "sourceAddressPrefix"),
    ("destinationAddresPrefix", "destinationAddressPrefix"),
    ("protocl", "protocol"),
    ("Priority", "priority"),
])
def test_misspelled_required_rule_key_is_an_error_with_did_you_mean(wrong, right):
    """The misspelled key is reported (did you mean ...) and the field it should have filled
    is missing: an error, never a rule that allows more (a missing port was '*' before)."""
    r = rule("r", 100, dport="22")
    r[wrong] = r.pop(right)
    problems = problems_of(_doc_with_rule(r))
    texts = [str(p) for p in problems]
    assert any(f"unknown key {wrong!r}" in t and f"did you mean {right!r}" in t for t in texts), texts
    assert any(right.lower().replace("prefix", "") in p.message.lower() or "required" in p.message
               for p in problems if "unknown key" not in p.message), texts


def test_missing_port_range_is_an_error_not_any():
    r = rule("r", 100)
    del r["destinationPortRange"]
    (p,) = problems_of(_doc_with_rule(r))
    assert p.path == "networkSecurityGroups[0].securityRules[0]"
    assert "one of destinationPortRange or destinationPortRanges is required" in p.message


def test_unknown_key_elsewhere_is_a_warning_naming_file_line_path():
    """networkSecurityGroups under a subnet (for networkSecurityGroup): a warning with
    file:line:path and the suggestion; --strict makes it an error (exit 2 in validate)."""
    doc = base_state(subnet_rules=[rule("r", 100)])
    sub = doc["virtualNetworks"][0]["subnets"][0]
    sub["networkSecurityGroups"] = sub.pop("networkSecurityGroup")
    text = yaml.safe_dump(doc, sort_keys=False)
    loaded = _load_text(text, "s.yaml")
    (w,) = [w for w in loaded.warnings if "unknown key" in w.message]
    assert w.file == "s.yaml" and w.path == "virtualNetworks[0].subnets[0].networkSecurityGroups"
    assert text.splitlines()[w.line - 1].strip().startswith("networkSecurityGroups:")
    assert "did you mean 'networkSecurityGroup'?" in w.message
    problems = _problems(text, "s.yaml", strict=True)
    assert any("unknown key 'networkSecurityGroups'" in p.message and "[--strict]" in p.message for p in problems)


def test_strict_on_the_command_line(tmp_path, capsys):
    doc = base_state(subnet_rules=[rule("r", 100, descripton="typo")])
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(path)]) == 0
    assert "did you mean 'description'?" in capsys.readouterr().out
    assert main(["validate", "--strict", str(path)]) == 2
    assert "unknown key 'descripton'" in capsys.readouterr().out


def test_azure_read_only_fields_are_quiet():
    r = {**rule("r", 100), "etag": "W/1", "id": "/subscriptions/x/.../securityRules/r", "type": "x",
         "provisioningState": "Succeeded"}
    doc = _doc_with_rule(r)
    doc["networkSecurityGroups"][0].update({"etag": "W/1", "location": "westeurope", "tags": {"a": "b"},
                                            "resourceGuid": "g", "defaultSecurityRules": []})
    assert not [w for w in load_doc(doc).warnings if "unknown key" in w.message]


RULE_KEYS = list(rule("r", 100, protocol="Tcp", src="10.0.0.0/8", dport=["80", "443"]))
KNOWN_SAFE_NAMES = st.sampled_from(["etag", "id", "type", "tags", "location", "description",
                                    "provisioningState", "sourcePortRanges", "destinationPortRange",
                                    "sourceAddressPrefixes", "destinationApplicationSecurityGroups",
                                    "priority", "name", "access", "direction", "protocol"])


def _meaning(loaded: LoadedState):
    (nsg,) = [n for n in loaded.state.networkSecurityGroups if n.name == "subnet-nsg"]
    return [r.model_dump(exclude={"description", "id"}) for r in nsg.securityRules]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(RULE_KEYS),
       new=st.one_of(KNOWN_SAFE_NAMES,
                     st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzAPRS"), min_size=1, max_size=24),
                     st.sampled_from(RULE_KEYS).map(lambda k: k[:-1]),
                     st.sampled_from(RULE_KEYS).map(lambda k: k.upper()),
                     st.sampled_from(RULE_KEYS).map(lambda k: k + "s")))
def test_renaming_a_rule_key_never_silently_changes_the_meaning(key, new):
    """Rename one key of a valid rule: the file is refused, or warns about the new key, or
    means exactly what it meant (e.g. a key renamed to itself)."""
    original = rule("r", 100, protocol="Tcp", src="10.0.0.0/8", dport=["80", "443"])
    reference = _meaning(load_doc(_doc_with_rule(original)))
    renamed = {(new if k == key else k): v for k, v in original.items()}
    if new in original and new != key:
        renamed[new] = original[key]  # the rename overwrites another key's value
    try:
        loaded = load_doc(_doc_with_rule(renamed))
    except LoadError:
        return
    warned = any(new in w.message for w in loaded.warnings if "unknown key" in w.message)
    assert warned or _meaning(loaded) == reference, (key, new)


# --- every problem in one run ---------------------------------------------------------------


def test_field_and_whole_state_problems_come_together():
    """A bad priority (a field error), a subnet outside its VNet and an unknown NSG
    reference (whole-state checks) and a misspelled key: all in the first run."""
    doc = base_state(subnet_rules=[rule("ok", 100), rule("bad", 5000)])
    doc["virtualNetworks"][0]["subnets"].append({"name": "s2", "addressPrefix": "10.9.0.0/24"})
    doc["networkInterfaces"][1]["networkSecurityGroup"] = "nope"
    doc["networkInterfaces"][1]["ipAddres"] = "x"
    msgs = [p.message for p in problems_of(doc)]
    assert any("outside 100..4096" in m for m in msgs)
    assert any("not inside the address space" in m for m in msgs)
    assert any("unknown NSG 'nope'" in m for m in msgs)
    assert any("unknown key 'ipAddres'" in m for m in msgs)


def test_invalid_object_does_not_cause_follow_up_reference_errors():
    """An NSG that fails validation is left out of the whole-state checks, but the subnet
    naming it is not told the NSG is unknown (it is not: it is invalid)."""
    doc = base_state(subnet_rules=[rule("r", 100)])
    doc["networkSecurityGroups"][0]["securityRules"] = 5
    msgs = [p.message for p in problems_of(doc)]
    assert not any("unknown NSG" in m for m in msgs) and len(msgs) == 1


# --- several files, references ----------------------------------------------------------------


def test_desired_state_references_exported_files_relative_to_itself(tmp_path):
    (tmp_path / "exports").mkdir()
    nsg = {"name": "subnet-nsg", "type": "Microsoft.Network/networkSecurityGroups", "etag": "W/1",
           "properties": {"securityRules": [{"name": "r", "properties": {k: v for k, v in rule("r", 100, dport="22").items()
                                                                          if k != "name"}}]}}
    (tmp_path / "exports" / "nsg.json").write_text(json.dumps(nsg))
    doc = base_state()
    doc["virtualNetworks"][0]["subnets"][0]["networkSecurityGroup"] = "subnet-nsg"
    doc["networkSecurityGroups"] = [{"file": "exports/nsg.json"}]
    (tmp_path / "state.yaml").write_text(yaml.safe_dump(doc))
    loaded = load(tmp_path / "state.yaml")
    assert [r.name for r in loaded.state.nsg("subnet-nsg").securityRules] == ["r"]
    assert (tmp_path / "exports" / "nsg.json") in loaded.files


def test_missing_referenced_file_names_the_reference(tmp_path):
    doc = base_state()
    doc["networkSecurityGroups"] = [{"file": "gone.json"}]
    (tmp_path / "state.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(LoadError) as e:
        load(tmp_path / "state.yaml")
    (p,) = e.value.problems
    assert p.path == "networkSecurityGroups[0].file" and "gone.json" in p.message and p.line


def test_conflicting_definitions_in_two_files_name_both(tmp_path):
    a = base_state(subnet_rules=[rule("r", 100)])
    b = {"networkSecurityGroups": [{"name": "subnet-nsg", "securityRules": [rule("r", 200)]}]}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(a))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(b))
    with pytest.raises(LoadError) as e:
        load([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    (p,) = e.value.problems
    assert p.file.endswith("b.yaml") and "also defined in" in p.message and "a.yaml" in p.message


def test_same_object_in_two_files_is_fine(tmp_path):
    a = base_state(subnet_rules=[rule("r", 100)])
    b = {"networkSecurityGroups": copy.deepcopy(a["networkSecurityGroups"])}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    loaded = load([tmp_path / "a.yaml", tmp_path / "b.json"])
    assert len(loaded.state.networkSecurityGroups) == 1 and loaded.kind == "merged"


def test_daemon_watches_every_file_involved_and_honours_strict(tmp_path):
    """The reconciler loads all its inputs and their references, and watches each one; an
    edit of a referenced file changes what is enforced. With strict, an unknown key is a
    config error and nothing is applied."""
    nsg_file = tmp_path / "nsg.yaml"
    text = policy_text()
    doc = yaml.safe_load(text)
    write(nsg_file, yaml.safe_dump({"networkSecurityGroups": doc.pop("networkSecurityGroups")}))
    doc["networkSecurityGroups"] = [{"file": "nsg.yaml"}]
    config = tmp_path / "state.yaml"
    write(config, yaml.safe_dump(doc))
    params = tmp_path / "params.json"
    write(params, json.dumps({"parameters": {}}))
    backend = FakeBackend()
    rec = Reconciler(config, backend, StatusStore(tmp_path / "run", "nsgh-t"), clock=FakeClock(),
                     compile_fn=fake_compile, load_options={"parameters": [params]})
    assert rec.reconcile("startup")
    assert {config.absolute(), nsg_file.absolute(), params.absolute()} <= rec.source.watched_files()
    assert any("allow-http" in r["comment"] for r in backend.table.rules)
    nsg = yaml.safe_load(nsg_file.read_text())
    nsg["networkSecurityGroups"][0]["securityRules"][0]["name"] = "allow-web"
    write(nsg_file, yaml.safe_dump(nsg))
    assert rec.reconcile("edit")
    assert any("allow-web" in r["comment"] for r in backend.table.rules)

    nsg["networkSecurityGroups"][0]["securityRules"][0]["destinationPortRnage"] = "22"
    write(nsg_file, yaml.safe_dump(nsg))
    strict = Reconciler(config, FakeBackend(), StatusStore(tmp_path / "run2", "nsgh-u"), clock=FakeClock(),
                        compile_fn=fake_compile, load_options={"strict": True})
    assert not strict.reconcile("startup")
    assert "destinationPortRnage" in json.dumps(strict.status.last_error)


# --- bounded input (issue 13.1) ---------------------------------------------------------------


def test_fifo_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "state.yaml"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(LoadError, match="not a regular file \\(a FIFO\\)"):
        load(fifo)
    assert time.monotonic() - t0 < 2


def test_devices_and_directories_are_refused(tmp_path):
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    with pytest.raises(LoadError, match="a character device"):
        load(link)
    with pytest.raises(LoadError, match="a directory"):
        load(tmp_path)


def test_size_limit_checked_before_reading(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(200 * 1024 * 1024)  # sparse: 200 MB that read() would have to zero-fill
    t0 = time.monotonic()
    with pytest.raises(LoadError, match="over the limit of 67108864"):
        load(big)
    assert time.monotonic() - t0 < 1
    small = tmp_path / "s.yaml"
    small.write_text(yaml.safe_dump(base_state()))
    with pytest.raises(LoadError, match="over the limit of 100"):
        load(small, limits=Limits(max_bytes=100))


def test_size_limit_on_the_command_line(tmp_path, capsys):
    small = tmp_path / "s.yaml"
    small.write_text(yaml.safe_dump(base_state()))
    assert main(["validate", "--max-file-size", "1k", str(small)]) == 0
    assert main(["validate", "--max-file-size", "100", str(small)]) == 2
    assert "over the limit" in capsys.readouterr().out


BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(9)]) + "\n"


def test_yaml_alias_bomb_refused_quickly_with_small_memory():
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        problems = _problems(BILLION_LAUGHS, "bomb.yaml")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - t0 < 2 and peak < 50 * 1024 * 1024
    assert "expands to more than" in problems[0].message and problems[0].line


def test_recursive_yaml_alias_refused():
    (p,) = _problems("networkSecurityGroups: &x [*x]\n")
    assert "recursive YAML alias" in p.message


@pytest.mark.parametrize("text,name,line", [
    ('{"networkSecurityGroups": [], "networkSecurityGroups": []}', "d.json", 1),
    ("networkSecurityGroups: []\nvirtualNetworks: []\nnetworkSecurityGroups: []\n", "d.yaml", 3),
])
def test_duplicate_keys_are_errors(text, name, line):
    (p,) = _problems(text, name)
    assert "duplicate key 'networkSecurityGroups'" in p.message and p.line == line


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_huge_priority_is_a_clear_error(fmt):
    r = rule("r", 100)
    doc = _doc_with_rule(r)
    text = json.dumps(doc) if fmt == "json" else yaml.safe_dump(doc, sort_keys=False)
    text = text.replace('"priority": 100' if fmt == "json" else "priority: 100", ('"priority": ' if fmt == "json" else "priority: ") + "9" * 5000)
    (p,) = _problems(text, f"f.{fmt}")
    assert p.path == "networkSecurityGroups[0].securityRules[0].priority"
    assert "5000 characters: too long" in p.message


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_deep_nesting_is_a_clear_error(fmt):
    text = '{"lab": ' + "[" * 1000 + "]" * 1000 + "}"
    (p,) = _problems(text, f"f.{fmt}")
    # ours ("nesting deeper than 64 levels"), or libyaml's own limit ("maximum nesting depth")
    assert "nesting deeper than 64 levels" in p.message or "maximum nesting depth" in p.message


@pytest.mark.parametrize("mutate,path,message", [
    (lambda d: d["networkSecurityGroups"][0].__setitem__("securityRules", ["x"]),
     "networkSecurityGroups[0].securityRules[0]", "expected an object (mapping) for a security rule, not the string 'x'"),
    (lambda d: d["networkSecurityGroups"][0].__setitem__("properties", 5),
     "networkSecurityGroups[0]", "properties must be an object (mapping), not the number 5"),
    (lambda d: d["virtualNetworks"][0].__setitem__("addressSpace", {"addressPrefixes": 7}),
     "virtualNetworks[0].addressSpace", "list"),
    (lambda d: d["networkInterfaces"][0].__setitem__("ipConfigurations", [3]),
     "networkInterfaces[0].ipConfigurations[0]", "expected an object (mapping) for an IP configuration"),
])
def test_wrong_type_where_an_object_is_expected(mutate, path, message):
    doc = base_state(subnet_rules=[rule("r", 100)])
    mutate(doc)
    problems = problems_of(doc)
    assert any(p.path == path and message in p.message for p in problems), [str(p) for p in problems]


def test_bounded_errors_exit_2_in_validate(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    assert main(["validate", str(bomb)]) == 2
    assert "expands to more than" in capsys.readouterr().out


# --- hypothesis: mutations through the loader end in LoadError or a valid state ---------------

VALID = base_state(subnet_rules=[rule("a", 100, protocol="Tcp", dport=["80", "443"]),
                                 rule("b", 200, direction="Outbound", access="Deny", dst="Internet")],
                   nic_rules=[rule("c", 300, src=["10.0.0.0/8"], sport="1000-2000")])
VALID["applicationSecurityGroups"] = [{"name": "g"}]
VALID["networkInterfaces"][0]["applicationSecurityGroups"] = ["g"]

ANY_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
              st.text(max_size=20), st.sampled_from(["*", "[parameters('x')]", "10.0.0.0/8", "Tcp", "All"])),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=3)),
    max_leaves=8)


def _paths(node, loc=()):
    yield loc
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, loc + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, loc + (i,))


ALL_PATHS = [p for p in _paths(VALID) if p]


def _set(doc, loc, value):
    node = doc
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = value


def _rename(doc, loc, new):
    node = doc
    for part in loc[:-1]:
        node = node[part]
    if isinstance(node, dict):
        node[new] = node.pop(loc[-1])


def _outcome(raw: bytes, name: str):
    try:
        load_bytes(raw, Path(name))
    except LoadError as e:
        assert e.problems and all(p.message for p in e.problems)
        for p in e.problems:
            assert "object has no attribute" not in p.message and "Traceback" not in p.message, str(p)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loc=st.sampled_from(ALL_PATHS), value=ANY_VALUE, fmt=st.sampled_from(["json", "yaml"]))
def test_type_mutations_end_in_load_error_or_valid(loc, value, fmt):
    doc = copy.deepcopy(VALID)
    _set(doc, loc, value)
    text = json.dumps(doc) if fmt == "json" else yaml.safe_dump(doc)
    _outcome(text.encode(), f"m.{fmt}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loc=st.sampled_from([p for p in ALL_PATHS if isinstance(p[-1], str)]),
       new=st.one_of(st.text(max_size=12), st.sampled_from(["properties", "file", "id", "type", "value",
                                                            "resources", "securityRules", "$schema"])))
def test_key_mutations_end_in_load_error_or_valid(loc, new):
    doc = copy.deepcopy(VALID)
    _rename(doc, loc, new)
    _outcome(json.dumps(doc).encode(), "k.json")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), fmt=st.sampled_from(["json", "yaml"]))
def test_byte_mutations_end_in_load_error_or_valid(data, fmt):
    text = (json.dumps(VALID) if fmt == "json" else yaml.safe_dump(VALID)).encode()
    raw = bytearray(text)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw[i:i] = data.draw(st.sampled_from([b"&a ", b"*a", b"[", b"{", b"'", b'"', b"\n- ", b": ", b"9" * 30]))
        elif op == "delete" and raw:
            del raw[i:i + data.draw(st.integers(1, 20))]
        else:
            del raw[i:]
    _outcome(bytes(raw), f"b.{fmt}")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.one_of(ANY_VALUE, st.lists(ANY_VALUE, max_size=4),
                     st.fixed_dictionaries({"value": st.lists(ANY_VALUE, max_size=3)}),
                     st.fixed_dictionaries({"resources": st.lists(ANY_VALUE, max_size=3)},
                                           optional={"parameters": ANY_VALUE, "variables": ANY_VALUE}),
                     st.fixed_dictionaries({"type": st.sampled_from(["Microsoft.Network/networkSecurityGroups",
                                                                      "Microsoft.Network/virtualNetworks",
                                                                      "Microsoft.Network/networkInterfaces"]),
                                            "name": ANY_VALUE, "properties": ANY_VALUE})))
def test_arbitrary_documents_and_export_shapes_never_crash(doc):
    _outcome(json.dumps(doc).encode(), "a.json")


# --- nsg-agent schema ---------------------------------------------------------------------------


def test_schema_command_prints_the_models_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"virtualNetworks", "networkInterfaces", "applicationSecurityGroups", "networkSecurityGroups",
            "routeTables", "serviceTags", "platform", "lab"} <= set(schema["properties"])
    rule_schema = schema["$defs"]["SecurityRule"]
    assert {"name", "priority", "direction", "access", "protocol"} <= set(rule_schema["required"])
    assert "destinationPortRange" in rule_schema["properties"]
    # every key of the flat corpus file is described by the schema (top level and rules)
    flat = yaml.safe_load((Path(__file__).parent / "corpus" / "flat.yaml").read_text())
    assert set(flat) <= set(schema["properties"])
    for nsg in flat["networkSecurityGroups"]:
        for r in nsg["securityRules"]:
            assert set(r) <= set(rule_schema["properties"]), set(r) - set(rule_schema["properties"])


def test_readme_and_docs_show_the_editor_line(repo_dir):
    line = "# yaml-language-server: $schema="
    assert line in (repo_dir / "README.md").read_text()
    assert line in (repo_dir / "docs" / "desired-state.md").read_text()
    assert "(docs/desired-state.md)" in (repo_dir / "README.md").read_text()


def test_yaml_with_too_many_values_refused_before_building_them():
    """Each YAML value costs ~0.5 kB once built: a YAML file with more values than the limit
    is refused from its event stream, in constant memory (here with a lowered limit)."""
    text = "lab:\n  externalHosts:\n" + "    - 1\n" * 200_000
    tracemalloc.start()
    try:
        (p,) = _problems(text, "big.yaml", limits=Limits(max_yaml_nodes=100_000))
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert "more than 100000 YAML values" in p.message and p.line
    assert peak < 30 * 1024 * 1024


def test_json_value_count_bounded_before_parsing():
    text = json.dumps({"lab": {"externalHosts": [{}] * 5000}})
    (p,) = _problems(text, "big.json", limits=Limits(max_json_values=1000))
    assert "more than the limit of 1000" in p.message


CORPUS_DOCS = {name: json.loads((Path(__file__).parent / "corpus" / name).read_text())
               for name in ("group-export.json", "nsg-list.json", "vnet-list.json", "nic-list.json",
                            "effective-nsg-web1.json", "route-table.json")}
CORPUS_PATHS = [(name, p) for name, doc in CORPUS_DOCS.items() for p in _paths(doc) if p]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.sampled_from(CORPUS_PATHS), value=ANY_VALUE)
def test_type_mutations_of_azure_exports_end_in_load_error_or_valid(target, value):
    """The same through the importers: ARM templates, az lists, effective-NSG lists."""
    name, loc = target
    doc = copy.deepcopy(CORPUS_DOCS[name])
    _set(doc, loc, value)
    _outcome(json.dumps(doc).encode(), name)


def test_yaml_anchors_in_normal_use_load():
    """Anchors and merge keys for repeated parts are fine (checked on the event stream)."""
    text = """
common: &allow
  direction: Inbound
  access: Allow
  protocol: Tcp
  sourceAddressPrefix: "*"
  sourcePortRange: "*"
  destinationAddressPrefix: "*"
virtualNetworks:
  - {name: v1, addressSpace: [10.0.0.0/16], subnets: [{name: s1, addressPrefix: 10.0.1.0/24, networkSecurityGroup: n}]}
networkInterfaces:
  - {name: n1, subnet: v1/s1, ipAddresses: [10.0.1.4]}
networkSecurityGroups:
  - name: n
    securityRules:
      - {<<: *allow, name: web, priority: 100, destinationPortRange: "80"}
      - {<<: *allow, name: tls, priority: 110, destinationPortRange: "443"}
"""
    loaded = _load_text(text, "a.yaml")
    assert [r.port_items("destination") for r in loaded.state.nsg("n").securityRules] == [["80"], ["443"]]
    assert [w.path for w in loaded.warnings if "unknown key" in w.message] == ["common"]
