"""What the executor and validator report to people and clients: input summaries in error reports, the text of
InvalidPrompt, ComfyUI's 400 body, what `free()` clears by default, and the fields of an estimate.

Mutation testing (mutmut 3.8.1 over engine/executor.py and engine/validate.py with tests/engine, bench/MUTATION.md)
left these alive: they were exercised only by server tests, or not at all.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from latentgraph.engine.context import Environment
from latentgraph.engine.executor import Executor
from latentgraph.engine.insight import Timing
from latentgraph.engine.node import Input, Node
from latentgraph.engine.validate import InvalidPrompt, validate

from tests.engine.cheap_nodes import Number, cheap_registry
from tests.engine.test_node_insight import registry as insight_registry
from tests.engine.test_node_insight import txt2img


class Shaped:
    """Has a shape but no dtype (a PIL-like or custom array object)."""

    shape = (2, 3)


class Odd(Node):
    """Gives an object of the chosen kind on a NUMBER socket, for the error report to summarise."""

    RETURN_TYPES = ("NUMBER",)
    kind: str = Input("shaped")

    def execute(self, ctx) -> tuple:
        made: dict[str, Any] = {
            "shaped": Shaped(),
            "dict": {i: torch.zeros(i + 1) if i % 2 else f"v{i}" for i in range(12)},
            "object": object(),
            "none": None,
        }
        return (made[self.kind],)


class Explode(Node):
    """Fails with its input in the report."""

    OUTPUT_NODE = True
    a: Number

    def execute(self, ctx) -> tuple:
        raise ValueError("no")


def _report(tmp_path, kind: str) -> Any:
    registry = cheap_registry()
    registry.register(Odd)
    registry.register(Explode)
    result = Executor(registry, Environment(tmp_path)).run({
        "o": {"class_type": "Odd", "inputs": {"kind": kind}},
        "e": {"class_type": "Explode", "inputs": {"a": ["o", 0]}}})
    assert result.status == "error" and result.error["node_id"] == "e"
    return result.error["current_inputs"]["a"]


def test_error_reports_summarise_inputs_as_short_json(tmp_path) -> None:
    assert _report(tmp_path, "shaped") == "Shaped(shape=[2, 3], dtype=?)"
    assert _report(tmp_path, "object") == "object"  # not the object itself: the report must stay JSON
    assert _report(tmp_path, "none") is None
    expected = {str(i): f"Tensor(shape=[{i + 1}], dtype=torch.float32)" if i % 2 else f"v{i}" for i in range(10)}
    assert _report(tmp_path, "dict") == expected  # the first ten entries, keys as strings, values summarised


@pytest.mark.parametrize(("length", "reported"), [(199, 199), (200, 200), (201, 203)])
def test_strings_up_to_200_characters_are_reported_whole(tmp_path, length: int, reported: int) -> None:
    result = Executor(cheap_registry(), Environment(tmp_path)).run({
        "x": {"class_type": "Fail", "inputs": {"message": "m" * length}},
        "o": {"class_type": "Show", "inputs": {"value": ["x", 0]}}})
    message = result.error["current_inputs"]["message"]
    assert len(message) == reported and message.startswith("m" * min(length, 200))
    assert message.endswith("...") == (length > 200)


class Counting:
    """A service that counts how often the environment freed it."""

    def __init__(self, env: Environment) -> None:
        self.freed = 0

    def free(self) -> None:
        self.freed += 1


def test_free_by_default_clears_the_cache_and_the_services(tmp_path) -> None:
    executor = Executor(cheap_registry(), Environment(tmp_path))
    service = executor.env.service(Counting, Counting)
    prompt = {"s": {"class_type": "Source", "inputs": {"value": 2}},
              "o": {"class_type": "Show", "inputs": {"value": ["s", 0]}}}
    executor.run(prompt)
    assert len(executor.cache) > 0
    executor.free()
    assert len(executor.cache) == 0 and service.freed == 1


def test_every_free_is_told_as_freed_not_only_the_first(tmp_path) -> None:
    (tmp_path / "a.ckpt").write_bytes(b"weights of a")
    executor = Executor(insight_registry(), Environment(tmp_path))
    for _ in range(3):
        executor.run(txt2img())
        executor.free(cache=True, models=False)
        reasons = {n: r["reason"]["kind"] for n, r in executor.run(txt2img()).nodes.items() if r["status"] == "ran"}
        assert set(reasons.values()) == {"freed"}, reasons


def test_estimate_reports_device_samples_and_a_total_to_one_decimal(tmp_path) -> None:
    (tmp_path / "a.ckpt").write_bytes(b"weights of a")
    executor = Executor(insight_registry(), Environment(tmp_path))
    blind = executor.estimate(txt2img())  # no timing history at all
    assert blind["unknown"] == blind["run"] == ["4", "5", "6", "3", "8", "9"] and blind["total_ms"] == 0
    assert blind["device"] == executor.probe.device

    result = executor.run(txt2img(seed=1))
    rows: dict[str, list[Timing]] = {}
    for node_id, report in result.nodes.items():
        ms = 10.04 if node_id == "3" else 0.51
        rows[report["class_type"]] = [Timing(report["shapes"], report["steps"], report["pixels"], ms)] * 3

    estimate = executor.estimate(txt2img(seed=2), history=lambda class_type, device: rows.get(class_type, []))
    assert [(n["node"], n["samples"]) for n in estimate["nodes"]] == [("3", 3), ("8", 3), ("9", 3)]
    assert estimate["total_ms"] == 11.1  # 10.04 + 0.51 + 0.51 = 11.06, to one decimal


def test_estimate_validates_only_the_requested_outputs(tmp_path) -> None:
    (tmp_path / "a.ckpt").write_bytes(b"weights of a")
    executor = Executor(insight_registry(), Environment(tmp_path))
    prompt = txt2img() | {"10": {"class_type": "Show", "inputs": {}}}  # an output without its input
    assert executor.estimate(prompt, outputs=["9"])["run"] == ["4", "5", "6", "3", "8", "9"]
    with pytest.raises(InvalidPrompt, match=r"node 10 \(Show\), input 'value'"):
        executor.estimate(prompt)


class Picky(Node):
    """An output node whose own check refuses the node as a whole (no input named, no details)."""

    OUTPUT_NODE = True
    value: int = Input(0)

    @classmethod
    def check(cls, inputs: dict, env) -> list[tuple[str, str]]:
        return [("", "this node is never happy")]

    def execute(self, ctx) -> tuple:
        return ()


def test_invalid_prompt_text_names_each_node_input_and_error_type(tmp_path) -> None:
    registry = cheap_registry()
    registry.register(Picky)
    prompt = {"s": {"class_type": "Source", "inputs": {"value": -5000, "size": 2}},
              "c": {"class_type": "Combine", "inputs": {"a": ["s", 0], "k": "many"}},
              "o": {"class_type": "Show", "inputs": {"value": ["c", 0]}},
              "p": {"class_type": "Picky", "inputs": {}}}
    validation = validate(prompt, registry, Environment(tmp_path))
    with pytest.raises(InvalidPrompt) as raised:
        Executor(registry, Environment(tmp_path)).run(prompt)
    assert str(raised.value) == validation.summary()
    assert sorted(validation.summary().split("\n")) == sorted([
        "Prompt outputs failed validation: 3 node(s) have errors",
        "  node c (Combine), input 'k': Failed to convert an input value to a INT value [k, 'many', Input should "
        "be a valid integer, unable to parse string as an integer] (invalid_input_type)",
        "  node s (Source), input 'value': Value -5000 smaller than min of -1000 [value, -5000, Input should be "
        "greater than or equal to -1000] (value_smaller_than_min)",
        "  node p (Picky): this node is never happy (custom_validation_failed)",
    ])
    assert raised.value.validation.ok is False


def test_a_valid_prompt_summarises_as_valid_and_answers_comfyui_s_body(tmp_path) -> None:
    valid = validate({"s": {"class_type": "Source", "inputs": {"value": 1}},
                      "o": {"class_type": "Show", "inputs": {"value": ["s", 0]}}},
                     cheap_registry(), Environment(tmp_path))
    assert valid.ok and valid.summary() == "Prompt is valid"
    invalid = validate({"o": {"class_type": "Show", "inputs": {}}}, cheap_registry(), Environment(tmp_path))
    body = invalid.as_response()
    assert set(body) == {"error", "node_errors"}  # ComfyUI's 400 answer to POST /prompt
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["o"]["errors"][0]["type"] == "required_input_missing"
    assert body["node_errors"]["o"]["class_type"] == "Show"
