"""The shared cache tier across Ray workers: a sub-graph computed on worker A is a hit on worker B, which then
executes only the nodes downstream of it (and never loads the checkpoint); after the workers and the object
store's index are gone, a fresh worker still hits the disk tier under the base directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from latentgraph.server.ray_workers import WorkerConfig, worker_actor
from latentgraph.server.shared_cache import INDEX_NAME, SHARED_DIR
from PIL import Image

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


def txt2img(inverted: bool) -> dict[str, Any]:
    prompt = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    prompt = {k: v for k, v in prompt.items() if not v["class_type"].startswith("Workflow")}
    prompt["3"]["inputs"].update(steps=3, seed=5)
    if inverted:  # the same sub-graph up to the decoded image, then one more node
        prompt["20"] = {"class_type": "ImageInvert", "inputs": {"image": ["8", 0]}}
        prompt["9"]["inputs"]["images"] = ["20", 0]
    return prompt


def run(actor: Any, prompt: dict[str, Any], prompt_id: str) -> dict[str, Any]:
    """Runs a prompt on one worker actor directly; the streamed result summary."""
    for ref in actor.run.remote(prompt, prompt_id, None, {}):
        message = ray.get(ref)
        if message[0] == "raised":
            raise message[1]
        if message[0] == "result":
            return message[1]
    raise AssertionError("the stream ended without a result")


def test_a_result_from_one_worker_is_a_hit_on_another_and_after_a_restart(ray_cluster: Any, tmp_path: Path) -> None:
    config = WorkerConfig(base_dir=str(tmp_path), threads=1)
    a, b = worker_actor(config, gpu=False), worker_actor(config, gpu=False)
    first = run(a, txt2img(inverted=False), "on-a")
    assert first["status"] == "success" and sorted(first["executed"]) == ["3", "4", "5", "6", "7", "8", "9"]
    assert first["state"]["shared"]["published"] >= 4  # two conditionings, two latents, the image

    second = run(b, txt2img(inverted=True), "on-b")
    assert second["status"] == "success"
    assert sorted(second["executed"]) == ["20", "9"], "B runs only what follows the shared decoded image"
    assert "8" in second["cached"] and second["state"]["shared"]["object_hits"] >= 1
    assert second["state"]["models"] == [], "no model weights travel: B never loaded the checkpoint"
    image_a = first["outputs"]["9"]["images"][0]["filename"]
    image_b = second["outputs"]["9"]["images"][0]["filename"]
    with Image.open(tmp_path / "output" / image_a) as made, Image.open(tmp_path / "output" / image_b) as inverted:
        expected = 255 - np.asarray(made.convert("RGB"), dtype=np.int16)  # B inverted A's very image
        assert np.abs(expected - np.asarray(inverted.convert("RGB"), dtype=np.int16)).max() <= 1

    for actor in (a, b, ray.get_actor(INDEX_NAME)):  # the workers and the object store's index are gone
        ray.kill(actor, no_restart=True)
    assert any((tmp_path / SHARED_DIR).rglob("*.pt"))
    fresh = worker_actor(config, gpu=False)
    third = run(fresh, txt2img(inverted=True), "after-restart")
    assert third["status"] == "success"
    assert third["state"]["shared"]["disk_hits"] >= 1 and third["state"]["shared"]["object_hits"] == 0
    assert sorted(third["executed"]) == ["9"], "the inverted image itself came from the disk tier"
    assert third["state"]["models"] == []
    ray.kill(fresh, no_restart=True)
