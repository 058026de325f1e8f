"""Node versions and migrations: a test node whose input was renamed (v1 `amount` -> v2 `value`, then v3 scaled
by 10) still loads and runs workflows saved before each change, API and editor format; a version with no path to
the current one is an error naming node, class and versions, and nothing runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.executor import Executor
from latentgraph.engine.node import Input, Node
from latentgraph.engine.validate import InvalidPrompt
from latentgraph.engine.workflow_format import api_to_ui, ui_to_api

from tests.engine.cheap_nodes import Show, cheap_registry


def _rename(inputs: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2: `amount` became `value` (no-op on inputs that already say `value`)."""
    if "amount" in inputs:
        inputs = {**inputs, "value": inputs["amount"]}
        del inputs["amount"]
    return inputs


class Constant(Node):
    """Version 2 of the test node: the input once called `amount` is `value`."""

    RETURN_TYPES = ("NUMBER",)
    VERSION = 2
    MIGRATIONS = {1: _rename}
    value: int = Input(0, ge=0, le=1000)

    def execute(self, ctx: RunContext) -> tuple:
        return (torch.tensor([float(self.value)]),)


def _tenths(inputs: dict[str, Any]) -> dict[str, Any]:
    """v2 -> v3: `value` is in tenths now (an incompatible change of meaning, not of name)."""
    return {**inputs, "value": inputs["value"] * 10} if isinstance(inputs.get("value"), int) else inputs


class ConstantV3(Constant):
    VERSION = 3
    MIGRATIONS = {1: _rename, 2: _tenths}


class ConstantV3WithoutOld(Constant):
    VERSION = 3
    MIGRATIONS = {2: _tenths}  # nobody wrote the v1 -> v2 step


def executor_with(cls: type[Node], tmp_path: Path) -> Executor:
    registry = cheap_registry()
    cls.__name__ = "Constant"  # every version registers under the one class name workflows use
    registry.register(cls)
    return Executor(registry, Environment(tmp_path))


def saved_v1(marked: bool = False) -> dict[str, Any]:
    meta = {"_meta": {"title": "old", "node_version": 1}} if marked else {}
    return {"1": {"class_type": "Constant", "inputs": {"amount": 7}, **meta},
            "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}


def shown(executor: Executor, prompt: dict[str, Any]) -> float:
    result = executor.run(prompt)
    assert result.status == "success", result.error
    return result.outputs["2"]["value"][0]


@pytest.mark.parametrize("marked", [False, True], ids=["unmarked", "marked-v1"])
def test_a_workflow_saved_before_the_rename_loads_and_runs(tmp_path: Path, marked: bool) -> None:
    executor = executor_with(Constant, tmp_path)
    without = executor_with(type("Plain", (Constant,), {"MIGRATIONS": {}}), tmp_path)
    assert shown(without, saved_v1()) == 0.0  # without the migration the saved 7 would be lost (default 0)
    assert shown(executor, saved_v1(marked)) == 7.0
    validation = executor.validate(saved_v1(marked))
    assert validation.prompt["1"].inputs == {"value": 7} and validation.prompt["1"].meta["node_version"] == 2
    # a workflow saved after the change is left as it is
    assert shown(executor, {**saved_v1(), "1": {"class_type": "Constant", "inputs": {"value": 9}}}) == 9.0


def test_migrations_chain_and_the_editor_format_goes_through_them(tmp_path: Path) -> None:
    executor = executor_with(ConstantV3, tmp_path)
    assert shown(executor, saved_v1(marked=True)) == 70.0  # v1 -> v2 (rename) -> v3 (tenths)
    v2 = {**saved_v1(), "1": {"class_type": "Constant", "inputs": {"value": 4}, "_meta": {"node_version": 2}}}
    assert shown(executor, v2) == 40.0
    object_info = executor.registry.object_info(executor.env)
    ui = api_to_ui(v2, object_info)
    ui_node = next(n for n in ui["nodes"] if n["type"] == "Constant")
    assert ui_node["widgets_values"][0] == 4
    api = ui_to_api(ui, object_info)
    api["1"]["_meta"] = {"node_version": 2}  # what a v2-era save recorded
    assert shown(executor, api) == 40.0


def test_no_path_from_the_saved_version_is_a_clear_error_and_nothing_runs(tmp_path: Path) -> None:
    executor = executor_with(ConstantV3WithoutOld, tmp_path)
    validation = executor.validate(saved_v1(marked=True))
    assert not validation.ok
    assert validation.error["details"] == ("node 1 (Constant) was saved at version 1; Constant is now version 3 and "
                                           "has no migration from version 1")
    with pytest.raises(InvalidPrompt):
        executor.run(saved_v1(marked=True))
    newer = {**saved_v1(), "1": {"class_type": "Constant", "inputs": {"value": 1}, "_meta": {"node_version": 5}}}
    assert "saved by a newer version (5)" in executor.validate(newer).error["details"]


def test_unmarked_nodes_of_classes_without_migrations_are_untouched(tmp_path: Path) -> None:
    executor = executor_with(Constant, tmp_path)
    prompt = {"1": {"class_type": "Source", "inputs": {"value": 3}}, "2": {"class_type": "Show",
                                                                          "inputs": {"value": ["1", 0]}}}
    assert executor.registry.expand(prompt, executor.env) is prompt
    assert Show.VERSION == 1
