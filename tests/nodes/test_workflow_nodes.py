"""Saved workflows used as nodes (`Workflow: NAME`): expanded inline before validation, so they give the pixels of
the workflow run alone and share its cache; inputs (constants or links, through nested workflows) reach the
widgets they declare; a workflow that contains itself is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from latentgraph.engine.context import RunContext
from latentgraph.engine.executor import Executor, RunResult
from latentgraph.engine.node import Input, Node
from latentgraph.nodes import load_registry, make_environment
from latentgraph.nodes.workflow_nodes import register_workflow_nodes
from PIL import Image

TXT2IMG = Path(__file__).resolve().parents[2] / "workflows" / "txt2img.json"


class SeedSource(Node):
    """Test node: a number on a socket, to link into a workflow node's input."""

    RETURN_TYPES = ("INT",)
    value: int = Input(0, ge=0)

    def execute(self, ctx: RunContext) -> tuple:
        return (self.value,)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_txt2img(seed: int = 42) -> dict:
    prompt = json.loads(TXT2IMG.read_text())
    prompt["3"]["inputs"].update(steps=2, seed=seed)
    return prompt


def save(base: Path, name: str, prompt: dict) -> None:
    folder = base / "user" / "default" / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(prompt))


def make_executor(base: Path) -> Executor:
    registry = load_registry(plugins=False)
    registry.register(SeedSource)
    env = make_environment(base)
    register_workflow_nodes(registry, env)
    return Executor(registry, env)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    save(tmp_path, "small", small_txt2img())
    outer = {"1": {"class_type": "Workflow: small", "inputs": {}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "outer"}},
             "10": {"class_type": "WorkflowInput", "inputs": {"name": "seed", "target": "1.seed"}},
             "11": {"class_type": "WorkflowOutput", "inputs": {"name": "image", "source": "2"}}}
    save(tmp_path, "outer", outer)
    return tmp_path


def pixels(executor: Executor, result: RunResult, node: str) -> np.ndarray:
    assert result.status == "success", result.error
    image = result.outputs[node]["images"][0]
    return np.asarray(Image.open(executor.env.folders.output_dir / image["subfolder"] / image["filename"]))


def using(name: str, **inputs) -> dict:
    return {"1": {"class_type": f"Workflow: {name}", "inputs": inputs},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "user"}}}


def test_a_workflow_node_gives_the_workflows_pixels_and_reuses_its_cache(base: Path, tmp_path_factory) -> None:
    executor = make_executor(base)
    alone = executor.run(small_txt2img())
    expected = pixels(executor, alone, "9")
    inside = executor.run(using("small"))
    assert inside.executed == ["2"] and inside.cached == ["1:8"]  # nothing of the inner workflow ran again
    assert np.array_equal(pixels(executor, inside, "2"), expected)
    # and computed from scratch, in an executor that never ran it, the pixels are the same
    fresh = make_executor(tmp_path_factory.mktemp("fresh"))
    save(fresh.env.base_dir, "small", small_txt2img())
    register_workflow_nodes(fresh.registry, fresh.env)
    scratch = fresh.run(using("small"))
    assert "1:3" in scratch.executed
    assert np.array_equal(pixels(fresh, scratch, "2"), expected)


def test_inputs_reach_the_inner_widgets_as_constants_and_links_through_nesting(base: Path) -> None:
    executor = make_executor(base)
    expected = pixels(executor, executor.run(small_txt2img(seed=7)), "9")
    constant = executor.run(using("small", seed=7))
    assert constant.executed == ["2"]  # the same content keys as the edited workflow: a cache hit
    assert np.array_equal(pixels(executor, constant, "2"), expected)

    linked = using("small", seed=["5", 0])
    linked["5"] = {"class_type": "SeedSource", "inputs": {"value": 7}}
    result = executor.run(linked)
    assert "1:3" in result.executed  # the sampler's seed now comes over a link: a new key, the same pixels
    assert np.array_equal(pixels(executor, result, "2"), expected)

    nested = using("outer", seed=["5", 0])  # outer's `seed` sets the seed widget of its own `small` node
    nested["5"] = {"class_type": "SeedSource", "inputs": {"value": 7}}
    validation = executor.validate(nested)
    assert validation.ok, validation.summary()
    assert validation.prompt["1:1:3"].inputs["seed"] == ["5", 0]
    assert "1:2" not in validation.prompt  # the inner workflow's own SaveImage is dropped
    assert np.array_equal(pixels(executor, executor.run(nested), "2"), expected)


def test_editor_node_class_and_refusals(base: Path) -> None:
    executor = make_executor(base)
    info = executor.registry.object_info(executor.env, "Workflow: small")["Workflow: small"]
    seed = info["input"]["required"]["seed"]
    assert seed[0] == "INT" and seed[1]["default"] == 42 and seed[1]["max"] == 2**64 - 1
    assert info["input"]["required"]["checkpoint"][0] == ["latentgraph-demo.safetensors"]
    assert info["output"] == ["IMAGE"] and info["output_name"] == ["image"]

    save(base, "loop", using("loop"))
    refused = executor.validate(using("loop"))
    assert not refused.ok and "contains itself (loop > loop)" in refused.error["details"]
    unknown = executor.validate(using("nope"))
    assert not unknown.ok and "no workflow named 'nope'" in unknown.error["details"]
    wrong = using("small")
    wrong["2"]["inputs"]["images"] = ["1", 3]
    assert "has 1 output(s)" in executor.validate(wrong).error["details"]
