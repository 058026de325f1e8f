"""Validation of constants, message by message, and dynamic choices accepted as well as refused.

Mutation testing of engine/validate.py with the engine tests alone left these alive: the error messages ComfyUI
clients show (with the bound that was crossed), a dynamic choice that is present being accepted, the listing being
cut at 20 entries, unhashable choices, and one listing per validation however many nodes use it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from latentgraph.engine.context import Environment
from latentgraph.engine.node import Input, Node
from latentgraph.engine.validate import validate

from tests.engine.cheap_nodes import cheap_registry


def _names(env: Environment) -> list[str]:
    Pick.listings += 1
    return [f"item{i}.png" for i in range(25)]


class Pick(Node):
    """A combo whose choices come from the environment, as a file listing does."""

    OUTPUT_NODE = True
    listings: ClassVar[int] = 0
    name: str = Input("", choices=_names)
    mode: Literal["fast", "slow"] = Input("fast")

    def execute(self, ctx) -> tuple:
        return ()


class PickPair(Node):
    """Choices that cannot be hashed (lists), compared by equality."""

    OUTPUT_NODE = True
    pair: list = Input(..., choices=lambda env: [[1, 2], [3, 4]])

    def execute(self, ctx) -> tuple:
        return ()


def registry():
    reg = cheap_registry()
    reg.register(Pick)
    reg.register(PickPair)
    return reg


def errors(prompt: dict, tmp_path) -> dict:
    return validate(prompt, registry(), Environment(tmp_path)).node_errors


def test_a_listed_choice_is_accepted_and_an_unlisted_one_refused_with_the_listing(tmp_path) -> None:
    assert errors({"p": {"class_type": "Pick", "inputs": {"name": "item3.png"}}}, tmp_path) == {}
    (error,) = errors({"p": {"class_type": "Pick", "inputs": {"name": "nope.png"}}}, tmp_path)["p"]["errors"]
    assert error["type"] == "value_not_in_list" and error["message"] == "Value not in list"
    shown = [f"item{i}.png" for i in range(20)] + ["..."]
    assert error["details"] == f"name: 'nope.png' not in {shown}"
    assert error["extra_info"]["input_name"] == "name" and error["extra_info"]["received_value"] == "nope.png"


def test_unhashable_choices_are_compared_by_equality(tmp_path) -> None:
    assert errors({"p": {"class_type": "PickPair", "inputs": {"pair": {"__value__": [3, 4]}}}}, tmp_path) == {}
    bad = errors({"p": {"class_type": "PickPair", "inputs": {"pair": {"__value__": [5, 6]}}}}, tmp_path)
    assert bad["p"]["errors"][0]["type"] == "value_not_in_list"


def test_choices_are_listed_once_per_validation(tmp_path) -> None:
    Pick.listings = 0
    prompt = {f"p{i}": {"class_type": "Pick", "inputs": {"name": "item1.png"}} for i in range(5)}
    assert errors(prompt, tmp_path) == {}
    assert Pick.listings == 1
    errors(prompt, tmp_path)
    assert Pick.listings == 2


def test_bounds_and_literals_are_reported_as_comfyui_words_them(tmp_path) -> None:
    low = errors({"s": {"class_type": "Source", "inputs": {"value": -5000}},
                  "o": {"class_type": "Show", "inputs": {"value": ["s", 0]}}}, tmp_path)["s"]["errors"][0]
    assert (low["type"], low["message"]) == ("value_smaller_than_min", "Value -5000 smaller than min of -1000")
    high = errors({"s": {"class_type": "Source", "inputs": {"size": 65}},
                   "o": {"class_type": "Show", "inputs": {"value": ["s", 0]}}}, tmp_path)["s"]["errors"][0]
    assert (high["type"], high["message"]) == ("value_bigger_than_max", "Value 65 bigger than max of 64")
    literal = errors({"p": {"class_type": "Pick", "inputs": {"name": "item1.png", "mode": "medium"}}},
                     tmp_path)["p"]["errors"][0]
    assert (literal["type"], literal["message"]) == ("value_not_in_list", "Value not in list")
    assert literal["details"] == "mode: 'medium' not in ['fast', 'slow']"
    wrong = errors({"s": {"class_type": "Source", "inputs": {"value": "many"}},
                    "o": {"class_type": "Show", "inputs": {"value": ["s", 0]}}}, tmp_path)["s"]["errors"][0]
    assert wrong["type"] == "invalid_input_type"
    assert wrong["message"] == "Failed to convert an input value to a INT value"
    assert wrong["details"].startswith("value, 'many', ")


def test_a_prompt_that_is_not_a_workflow_is_invalid(tmp_path) -> None:
    result = validate(["not", "a", "workflow"], registry(), Environment(tmp_path))
    assert result.ok is False and result.error["type"] == "invalid_prompt"
    assert result.error["message"] == "Invalid prompt" and result.error["details"]


def test_requested_outputs_missing_from_the_workflow_are_named(tmp_path) -> None:
    prompt = {"p": {"class_type": "Pick", "inputs": {"name": "item1.png"}}}
    result = validate(prompt, registry(), Environment(tmp_path), outputs=["p", "ghost"])
    assert result.ok is False and result.error["type"] == "invalid_prompt"
    assert result.error["details"] == "requested outputs not in the workflow: ['ghost']"
    assert validate(prompt, registry(), Environment(tmp_path), outputs=["p"]).ok is True


class Slow(Node):
    """A node whose own check is slow, as a check over thousands of nodes can be."""

    OUTPUT_NODE = True
    value: int = Input(0)

    @classmethod
    def check(cls, inputs: dict, env) -> list[tuple[str, str]]:
        import time

        time.sleep(0.02)
        return []

    def execute(self, ctx) -> tuple:
        return ()


def test_a_validation_over_its_time_budget_answers_validation_timeout(tmp_path) -> None:
    reg = registry()
    reg.register(Slow)
    prompt = {f"n{i}": {"class_type": "Slow", "inputs": {}} for i in range(100)}
    result = validate(prompt, reg, Environment(tmp_path), time_budget_s=0.1)
    assert result.ok is False and result.error["type"] == "validation_timeout"
    assert result.error["message"] == "Validation took too long" and "0.1 s" in result.error["details"]
    assert validate(dict(list(prompt.items())[:2]), reg, Environment(tmp_path), time_budget_s=30).ok is True
