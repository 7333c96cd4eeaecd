"""nsg_agent.desired.arm: the ARM expression evaluator and template expansion, and how the importer
refuses what cannot be evaluated (naming the field and the function)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nsg_agent.desired.arm import Evaluator, ExpressionError, Template, Unevaluable, evaluate_template, parse
from nsg_agent.desired.loader import load_bytes
from nsg_agent.errors import LoadError


def ev(text: str, **params):
    return Evaluator(Template(parameters=params, variables={"v": "[concat('a', 'b')]", "n": 3})).value(text)


@pytest.mark.parametrize("expr,expected", [
    ("[concat('nsg-', 'web')]", "nsg-web"),
    ("[concat(createArray(1), createArray(2, 3))]", [1, 2, 3]),
    ("[format('{0}-{1}', 'a', 7)]", "a-7"),
    ("[toLower('WeB')]", "web"),
    ("[toUpper(parameters('p'))]", "X"),
    ("[variables('v')]", "ab"),
    ("[add(variables('n'), 4)]", 7),
    ("[if(equals(parameters('p'), 'x'), 'Allow', 'Deny')]", "Allow"),
    ("[createObject('a', 1).a]", 1),
    ("[createArray('x', 'y')[1]]", "y"),
    ("[split('a,b', ',')[0]]", "a"),
    ("[string(22)]", "22"),
    ("[resourceId('Microsoft.Network/virtualNetworks/subnets', 'hub', 'web')]",
     "/subscriptions/{subscription}/resourceGroups/{resourceGroup}/providers/Microsoft.Network/virtualNetworks/hub/subnets/web"),
    ("[[not an expression]", "[not an expression]"),
    ("plain", "plain"),
    ("['it''s']", "it's"),
])
def test_expressions(expr, expected):
    assert ev(expr, p="x") == expected


@pytest.mark.parametrize("expr,function", [
    ("[uniqueString(resourceGroup().id)]", "uniqueString"),
    ("[newGuid()]", "newGuid"),
    ("[reference('vm1').ipConfigurations]", "reference"),
    ("[parameters('missing')]", "parameters"),
    ("[variables('missing')]", "variables"),
    ("[copyIndex()]", "copyIndex"),
    ("[someFutureFunction(1)]", "someFutureFunction"),
])
def test_unevaluable_names_the_function(expr, function):
    with pytest.raises(Unevaluable) as e:
        ev(expr)
    assert e.value.function == function


@pytest.mark.parametrize("expr", ["[concat('a']", "[concat('a'))]", "[1 2]", "[.x]", "[a.b]", "['" + "x" * 30000 + "']"])
def test_syntax_errors_are_expression_errors(expr):
    with pytest.raises(ExpressionError):
        ev(expr)


def test_parse_tree_is_bounded():
    with pytest.raises(ExpressionError, match="nested more than 100"):
        parse("concat(" * 150 + "'a'" + ")" * 150)


def test_resource_copy_property_copy_condition_and_children():
    doc = {"parameters": {"n": {"defaultValue": 2}, "deploy": {"defaultValue": False}},
           "resources": [
               {"type": "Microsoft.Network/networkSecurityGroups", "name": "[concat('nsg', copyIndex(1))]",
                "copy": {"name": "loop", "count": "[parameters('n')]"},
                "properties": {"copy": [{"name": "securityRules", "count": 2,
                                         "input": {"name": "[concat('r', copyIndex('securityRules'))]"}}]},
                "resources": [{"type": "securityRules", "name": "child"}]},
               {"type": "Microsoft.Network/networkSecurityGroups", "name": "skipped",
                "condition": "[parameters('deploy')]"}]}
    resources, problems = evaluate_template(doc)
    assert problems == []
    assert [(r.type, r.name) for r in resources] == [
        ("Microsoft.Network/networkSecurityGroups", "nsg1"), ("Microsoft.Network/networkSecurityGroups", "nsg2"),
        ("Microsoft.Network/networkSecurityGroups/securityRules", "nsg1/child"),
        ("Microsoft.Network/networkSecurityGroups/securityRules", "nsg2/child")]
    assert [r["name"] for r in resources[0].body["properties"]["securityRules"]] == ["r0", "r1"]


def test_copy_count_is_bounded():
    doc = {"resources": [{"type": "Microsoft.Network/networkSecurityGroups", "name": "x", "copy": {"name": "l", "count": 10**6}}]}
    resources, problems = evaluate_template(doc)
    assert resources == [] and "outside 0..800" in problems[0][1]


RULE = {"protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "22", "sourceAddressPrefix": "*",
        "destinationAddressPrefix": "*", "access": "Allow", "priority": 100, "direction": "Inbound"}


def _template(name, rule_props=RULE, location="westeurope"):
    return {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
            "resources": [{"type": "Microsoft.Network/networkSecurityGroups", "name": name, "location": location,
                           "properties": {"securityRules": [{"name": "r", "properties": rule_props}]}}]}


def test_unevaluable_where_it_matters_is_refused_naming_field_and_function():
    with pytest.raises(LoadError) as e:
        load_bytes(json.dumps(_template("[concat('nsg-', uniqueString(resourceGroup().id))]"), indent=1).encode(), Path("t.json"))
    (p,) = e.value.problems
    assert p.path == "resources[0].name" and "uniqueString()" in p.message and p.line == 6


def test_unevaluable_informational_field_is_dropped_quietly():
    loaded = load_bytes(json.dumps(_template("nsg", location="[uniqueString('x')]")).encode(), Path("t.json"))
    assert [n.name for n in loaded.state.networkSecurityGroups] == ["nsg"] and not loaded.warnings


def test_unevaluable_rule_field_named_with_its_path():
    rule = {**RULE, "destinationPortRange": "[reference('vm1').port]"}
    with pytest.raises(LoadError) as e:
        load_bytes(json.dumps(_template("nsg", rule), indent=1).encode(), Path("t.json"))
    (p,) = e.value.problems
    assert p.path == "resources[0].properties.securityRules[0].properties.destinationPortRange"
    assert "reference()" in p.message


def test_reference_to_a_resource_of_the_template_reads_its_properties():
    """reference() to a resource declared in the same template (before or after) gives its
    evaluated properties; to one outside the template it is refused naming reference()."""
    shared = {"type": "Microsoft.Network/networkSecurityGroups", "name": "base",
              "properties": {"securityRules": [{"name": "r", "properties": RULE}]}}
    user = {"type": "Microsoft.Network/networkSecurityGroups", "name": "copy-of-base",
            "properties": {"securityRules": "[reference('base').securityRules]"}}
    for order in ([shared, user], [user, shared]):
        loaded = load_bytes(json.dumps({"resources": order}).encode(), Path("t.json"))
        assert {n.name: [r.name for r in n.securityRules] for n in loaded.state.networkSecurityGroups} == {
            "base": ["r"], "copy-of-base": ["r"]}
    with pytest.raises(LoadError) as e:
        load_bytes(json.dumps({"resources": [user]}).encode(), Path("t.json"))
    assert "reference()" in e.value.problems[0].message and e.value.problems[0].path == "resources[0].properties.securityRules"
