"""The saved SD1 workflows run on the bundled default model, and a seed change re-runs only what depends on it.

(Workflows for other model families, which need their own checkpoints, are tested with those families.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from latentgraph.engine.executor import Executor
from latentgraph.nodes import make_environment

pytestmark = pytest.mark.usefixtures("one_thread")

FOLDER = Path(__file__).resolve().parents[3] / "workflows"
WORKFLOWS = [FOLDER / f"{name}.json" for name in ("txt2img", "img2img", "inpaint", "lora", "hires_fix")]


@pytest.fixture(scope="module")
def executor(registry, tmp_path_factory: pytest.TempPathFactory) -> Executor:
    return Executor(registry, make_environment(tmp_path_factory.mktemp("fresh")))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_and_writes_a_png(executor: Executor, path: Path) -> None:
    result = executor.run(json.loads(path.read_text()))
    assert result.status == "success", result.error
    images = [image for output in result.outputs.values() for image in output.get("images", [])]
    assert images
    for image in images:
        assert (executor.env.folders.output_dir / image["subfolder"] / image["filename"]).stat().st_size > 0


def test_changing_only_the_seed_reruns_only_sampler_decode_and_save(executor: Executor) -> None:
    workflow = json.loads((FOLDER / "txt2img.json").read_text())
    executor.run(workflow)
    workflow["3"]["inputs"]["seed"] += 1
    result = executor.run(workflow)
    assert result.status == "success"
    assert sorted(result.executed) == ["3", "8", "9"]
    assert sorted(result.cached) == ["4", "5", "6", "7"]
