"""Validation reports each kind of fault with node id, input name and ComfyUI's error type; nothing runs."""

from __future__ import annotations

import pytest
from latentgraph.engine.context import Environment
from latentgraph.engine.executor import Executor
from latentgraph.engine.validate import InvalidPrompt, validate

from tests.engine.cheap_nodes import cheap_registry

REGISTRY = cheap_registry()


def errors_of(prompt, tmp_path) -> dict:
    result = validate(prompt, REGISTRY, Environment(tmp_path))
    assert not result.ok
    return result.node_errors


def only_error(node_errors: dict, node_id: str) -> dict:
    assert list(node_errors) == [node_id], node_errors
    (error,) = node_errors[node_id]["errors"]
    return error


def show(source: str) -> dict:
    return {"class_type": "Show", "inputs": {"value": [source, 0]}}


CASES = {
    "required_input_missing": ({"c": {"class_type": "Combine", "inputs": {"k": 1}}, "o": show("c")}, "c", "a"),
    "bad_linked_input": (
        {"c": {"class_type": "Combine", "inputs": {"a": ["s", 0, 1]}}, "s": {"class_type": "Source", "inputs": {}},
         "o": show("c")}, "c", "a"),
    "return_type_mismatch": (
        {"t": {"class_type": "Text", "inputs": {}}, "c": {"class_type": "Combine", "inputs": {"a": ["t", 0]}},
         "o": show("c")}, "c", "a"),
    "invalid_input_type": ({"s": {"class_type": "Source", "inputs": {"value": "many"}}, "o": show("s")}, "s", "value"),
    "value_smaller_than_min": ({"s": {"class_type": "Source", "inputs": {"value": -5000}}, "o": show("s")}, "s",
                               "value"),
    "value_bigger_than_max": ({"s": {"class_type": "Source", "inputs": {"size": 65}}, "o": show("s")}, "s", "size"),
    "custom_validation_failed": ({"e": {"class_type": "Even", "inputs": {"value": 3}}, "o": show("e")}, "e", "value"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_error_type_names_node_and_input(kind, tmp_path):
    prompt, node_id, input_name = CASES[kind]
    error = only_error(errors_of(prompt, tmp_path), node_id)
    assert error["type"] == kind
    assert error["extra_info"]["input_name"] == input_name


def test_return_type_mismatch_reports_both_types(tmp_path):
    prompt, node_id, _ = CASES["return_type_mismatch"]
    error = only_error(errors_of(prompt, tmp_path), node_id)
    assert "STRING" in error["details"] and "NUMBER" in error["details"]


def test_link_to_missing_node_and_missing_output(tmp_path):
    prompt = {
        "c": {"class_type": "Combine", "inputs": {"a": ["nowhere", 0], "b": ["s", 3]}},
        "s": {"class_type": "Source", "inputs": {}},
        "o": show("c"),
    }
    errors = errors_of(prompt, tmp_path)["c"]["errors"]
    assert {e["extra_info"]["input_name"]: e["type"] for e in errors} == {"a": "bad_linked_input",
                                                                          "b": "bad_linked_input"}
    assert "nowhere" in errors[0]["details"] and "3" in errors[1]["details"]


def test_value_not_in_list(tmp_path):
    from typing import Literal

    from latentgraph.engine.node import Input, Node
    from latentgraph.engine.registry import Registry

    class Pick(Node):
        """Chooses a mode."""

        RETURN_TYPES = ("NUMBER",)
        mode: Literal["fast", "slow"] = Input("fast")

    registry = Registry()
    registry.register(Pick)
    for cls in (REGISTRY.get("Show"),):
        registry.register(cls)
    result = validate({"p": {"class_type": "Pick", "inputs": {"mode": "medium"}}, "o": show("p")}, registry,
                      Environment(tmp_path))
    error = only_error(result.node_errors, "p")
    assert error["type"] == "value_not_in_list"
    assert "medium" in error["details"] and "fast" in error["details"]


def test_dynamic_choices_are_checked_against_the_environment(tmp_path):
    from latentgraph.nodes import load_registry

    registry = load_registry(plugins=False)
    env = Environment(tmp_path)
    prompt = {"l": {"class_type": "LoadImage", "inputs": {"image": "absent.png"}},
              "o": {"class_type": "PreviewImage", "inputs": {"images": ["l", 0]}}}
    error = only_error(validate(prompt, registry, env).node_errors, "l")
    assert (error["type"], error["extra_info"]["input_name"]) == ("value_not_in_list", "image")


def test_unknown_class_is_reported_on_its_node(tmp_path):
    errors = errors_of({"x": {"class_type": "NoSuchNode", "inputs": {}}, "s": {"class_type": "Source", "inputs": {}},
                        "o": show("s")}, tmp_path)
    assert errors["x"]["class_type"] == "NoSuchNode"
    assert "NoSuchNode" in errors["x"]["errors"][0]["message"]


def test_cycle_is_reported_on_every_node_in_it(tmp_path):
    prompt = {
        "a": {"class_type": "Combine", "inputs": {"a": ["b", 0]}},
        "b": {"class_type": "Combine", "inputs": {"a": ["a", 0]}},
        "o": show("b"),
    }
    errors = errors_of(prompt, tmp_path)
    assert {n for n, e in errors.items() if e["errors"][0]["type"] == "dependency_cycle"} == {"a", "b"}
    assert errors["a"]["dependent_outputs"] == ["o"]


def test_no_output_node(tmp_path):
    result = validate({"s": {"class_type": "Source", "inputs": {}}}, REGISTRY, Environment(tmp_path))
    assert result.error["type"] == "prompt_no_outputs"


@pytest.mark.parametrize("document", [[], "text", {}, {"1": {"inputs": {}}}, {"1": "Source"}])
def test_documents_that_are_not_workflows(document, tmp_path):
    result = validate(document, REGISTRY, Environment(tmp_path))
    assert result.error["type"] == "invalid_prompt"
    assert result.error["details"]


def test_several_faults_are_all_reported_and_nothing_executes(tmp_path):
    prompt = {
        "s": {"class_type": "Source", "inputs": {"value": 10**9, "size": "x"}},
        "c": {"class_type": "Combine", "inputs": {"a": ["s", 0], "b": ["ghost", 0], "k": -10**6}},
        "e": {"class_type": "Even", "inputs": {"value": 1}},
        "o1": show("c"),
        "o2": show("e"),
    }
    executor = Executor(REGISTRY, Environment(tmp_path))
    with pytest.raises(InvalidPrompt) as caught:
        executor.run(prompt)
    errors = caught.value.validation.node_errors
    found = {(node, e["extra_info"].get("input_name"), e["type"]) for node, v in errors.items() for e in v["errors"]}
    assert found == {
        ("s", "value", "value_bigger_than_max"),
        ("s", "size", "invalid_input_type"),
        ("c", "b", "bad_linked_input"),
        ("c", "k", "value_smaller_than_min"),
        ("e", "value", "custom_validation_failed"),
    }
    assert errors["s"]["dependent_outputs"] == ["o1"]
    assert len(executor.cache) == 0
    summary = caught.value.validation.summary()
    assert "node c (Combine), input 'b'" in summary


def test_constants_are_coerced_and_defaults_filled(tmp_path):
    result = validate({"s": {"class_type": "Source", "inputs": {"value": "7"}}, "o": show("s")}, REGISTRY,
                      Environment(tmp_path))
    assert result.ok
    assert result.constants["s"] == {"value": 7, "size": 1}


def test_list_literals_travel_wrapped(tmp_path):
    result = validate({"s": {"class_type": "Source", "inputs": {"value": {"__value__": [1, 2]}}}, "o": show("s")},
                      REGISTRY, Environment(tmp_path))
    assert only_error(result.node_errors, "s")["type"] == "invalid_input_type"
