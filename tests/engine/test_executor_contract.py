"""The executor's side of ComfyUI's protocol, field by field: hidden inputs and the payloads of its events.

Mutation testing (mutmut over engine/executor.py with only tests/engine) showed that the names and values of
these fields could be changed without any engine test failing; ComfyUI clients read them by name.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from latentgraph.engine.context import Environment
from latentgraph.engine.executor import Executor
from latentgraph.engine.node import Hidden, Node, NodeOutput

from tests.engine.cheap_nodes import Number, cheap_registry


class Witness(Node):
    """An output node that records what the executor put in its hidden inputs."""

    OUTPUT_NODE = True
    seen: ClassVar[list[dict[str, Any]]] = []
    value: Number
    prompt: dict | None = Hidden("PROMPT")
    extra_pnginfo: dict | None = Hidden("EXTRA_PNGINFO")
    unique_id: str | None = Hidden("UNIQUE_ID")

    def execute(self, ctx) -> NodeOutput:
        Witness.seen.append({"prompt": self.prompt, "extra_pnginfo": self.extra_pnginfo, "unique_id": self.unique_id,
                             "ctx": (ctx.node_id, ctx.prompt_id, ctx.prompt, ctx.extra_data)})
        return NodeOutput(ui={"value": [float(self.value[0])]})


PROMPT = {"s": {"class_type": "Source", "inputs": {"value": 4}},
          "w7": {"class_type": "Witness", "inputs": {"value": ["s", 0]}}}


def executor(tmp_path) -> Executor:
    registry = cheap_registry()
    registry.register(Witness)
    return Executor(registry, Environment(tmp_path))


def test_hidden_inputs_carry_the_prompt_the_png_info_and_the_node_id(tmp_path) -> None:
    Witness.seen.clear()
    pnginfo = {"workflow": {"nodes": [1, 2]}}
    executor(tmp_path).run(PROMPT, extra_data={"extra_pnginfo": pnginfo, "client_id": "c"})
    (seen,) = Witness.seen
    assert seen["unique_id"] == "w7"
    assert seen["extra_pnginfo"] == pnginfo
    assert seen["prompt"]["w7"] == {"class_type": "Witness", "inputs": {"value": ["s", 0]}}
    assert seen["prompt"]["s"]["inputs"]["value"] == 4
    node_id, prompt_id, prompt, extra = seen["ctx"]  # the run context says the same
    assert node_id == "w7" and prompt == seen["prompt"] and extra["client_id"] == "c" and prompt_id


class TwoForOne(Node):
    RETURN_TYPES = ("NUMBER",)

    def execute(self, ctx) -> tuple:
        return (1, 2)


def test_a_node_returning_the_wrong_number_of_outputs_fails_its_run(tmp_path) -> None:
    registry = cheap_registry()
    registry.register(TwoForOne)
    result = Executor(registry, Environment(tmp_path)).run({
        "t": {"class_type": "TwoForOne", "inputs": {}},
        "o": {"class_type": "Show", "inputs": {"value": ["t", 0]}}})
    assert result.status == "error" and result.error["node_id"] == "t"
    assert result.error["exception_message"] == "TwoForOne returned 2 outputs, declared 1"


def test_event_payloads_of_a_run_and_of_its_cached_rerun(tmp_path) -> None:
    runner = executor(tmp_path)
    before = int(time.time() * 1000)
    events: list[tuple[str, dict]] = []
    runner.run(PROMPT, prompt_id="p", sink=lambda e, d: events.append((e, d)))
    after = int(time.time() * 1000)
    by_name = [(e, d) for e, d in events if not e.startswith("latentgraph.")]
    start, cached = by_name[0][1], by_name[1][1]
    assert set(start) == {"prompt_id", "timestamp"} and before <= start["timestamp"] <= after
    assert set(cached) == {"nodes", "prompt_id", "timestamp"} and cached["nodes"] == []
    assert ("executing", {"node": "s", "display_node": "s", "prompt_id": "p"}) in by_name
    executed = [d for e, d in by_name if e == "executed"]
    assert executed == [{"node": "w7", "display_node": "w7", "output": {"value": [4.0]}, "prompt_id": "p"}]
    success = [d for e, d in by_name if e == "execution_success"]
    assert set(success[0]) == {"prompt_id", "timestamp"} and before <= success[0]["timestamp"] <= after

    events.clear()
    runner.run(PROMPT, prompt_id="q", sink=lambda e, d: events.append((e, d)))
    by_name = [(e, d) for e, d in events if not e.startswith("latentgraph.")]
    assert by_name[1] == ("execution_cached", {"nodes": ["w7"], "prompt_id": "q",
                                               "timestamp": by_name[1][1]["timestamp"]})
    assert by_name[2] == ("executed", {"node": "w7", "display_node": "w7", "output": {"value": [4.0]},
                                       "prompt_id": "q"})


def test_an_error_report_names_the_node_and_summarises_its_inputs(tmp_path) -> None:
    runner = executor(tmp_path)
    result = runner.run({"s": {"class_type": "Source", "inputs": {"value": 1, "size": 3}},
                         "f": {"class_type": "Combine", "inputs": {"a": ["s", 0], "k": 2}},
                         "x": {"class_type": "Fail", "inputs": {"message": "m" * 300}},
                         "o": {"class_type": "Show", "inputs": {"value": ["x", 0]}}})
    error = result.error
    assert result.status == "error" and error["node_id"] == "x" and error["node_type"] == "Fail"
    assert error["exception_message"] == "m" * 300
    assert error["exception_type"] == "builtins.RuntimeError"
    assert error["current_inputs"] == {"message": "m" * 200 + "..."}  # long strings are cut for the report


class Explode(Node):
    RETURN_TYPES = ("NUMBER",)
    a: Number

    def execute(self, ctx) -> tuple:
        raise ValueError("no")


def test_tensor_inputs_are_reported_by_shape_and_dtype(tmp_path) -> None:
    registry = cheap_registry()
    registry.register(Explode)
    result = Executor(registry, Environment(tmp_path)).run({
        "s": {"class_type": "Source", "inputs": {"value": 1, "size": 3}},
        "e": {"class_type": "Explode", "inputs": {"a": ["s", 0]}},
        "o": {"class_type": "Show", "inputs": {"value": ["e", 0]}}})
    assert result.error["current_inputs"] == {"a": "Tensor(shape=[3], dtype=torch.float32)"}
    assert result.error["executed"] == ["s"]
