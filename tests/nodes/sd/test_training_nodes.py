"""TrainLora: a workflow trains a LoRA on its images and draws with it; the file lands in models/loras (listed by
LoraLoader at once), is reused when the inputs are the same (even by a fresh executor), retrained when a caption
changes, and an interrupt stops training without leaving a file. All on the tiny SD1 checkpoint, a few steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from latentgraph.engine.executor import Executor
from latentgraph.engine.interrupt import Interrupted, InterruptToken
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.training.lora_nodes import TrainLora
from PIL import Image

from .conftest import TINY
from .sd_helpers import output_pixels, run_context, txt2img, with_lora

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTION = "a checkered square"
STEPS = 3


def _inputs(env) -> None:
    env.folders.input_dir.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        pixels = np.zeros((64, 64, 3), np.uint8)
        pixels[16 + 4 * i:48, 16:48] = 255
        Image.fromarray(pixels).save(env.folders.input_dir / f"train{i}.png")


def _training_workflow(caption: str = CAPTION) -> dict:
    workflow = txt2img(TINY, steps=3, positive=CAPTION)
    workflow.update({
        "20": {"class_type": "LoadImage", "inputs": {"image": "train0.png"}},
        "21": {"class_type": "LoadImage", "inputs": {"image": "train1.png"}},
        "22": {"class_type": "ImageBatch", "inputs": {"image1": ["20", 0], "image2": ["21", 0]}},
        "10": {"class_type": "TrainLora", "inputs": {
            "model": ["4", 0], "clip": ["4", 1], "images": ["22", 0], "captions": caption, "lora_name": "check",
            "steps": STEPS, "rank": 4, "learning_rate": 1e-2, "conv": True, "text_encoder": True, "seed": 0,
            "strength_model": 1.0, "strength_clip": 1.0}},
    })
    workflow["3"]["inputs"]["model"] = ["10", 0]
    workflow["6"]["inputs"]["clip"] = ["10", 1]
    workflow["7"]["inputs"]["clip"] = ["10", 1]
    return workflow


def _loras(env) -> list[Path]:
    return sorted((env.base_dir / "models" / "loras").glob("*.safetensors"))


def test_a_workflow_trains_a_lora_and_draws_with_it(registry, base_dir: Path) -> None:
    env = make_environment(base_dir)
    _inputs(env)
    executor = Executor(registry, env)
    events: list = []
    result = executor.run(_training_workflow(), sink=lambda event, data: events.append((event, data)))
    assert result.status == "success", result.error
    [trained] = _loras(env)
    assert trained.name.startswith("check-") and trained.name in env.folders.list("loras")
    progress = [d for e, d in events if e == "progress" and d.get("node") == "10"]
    assert [p["value"] for p in progress] == list(range(1, STEPS + 1)) and progress[-1]["max"] == STEPS
    trained_image = output_pixels(env, result)[0]

    # the same drawing as LoraLoader applying the written file; and different from the base model's
    loaded = executor.run(with_lora(txt2img(TINY, steps=3, positive=CAPTION), trained.name, 1.0))
    assert np.array_equal(output_pixels(env, loaded)[0], trained_image)
    base = executor.run(txt2img(TINY, steps=3, positive=CAPTION))
    assert not np.array_equal(output_pixels(env, base)[0], trained_image)

    # a fresh executor (no cache) finds the file and does not train again
    stamp = trained.stat().st_mtime_ns
    events.clear()
    again = Executor(registry, make_environment(base_dir)).run(_training_workflow(),
                                                               sink=lambda e, d: events.append((e, d)))
    assert again.status == "success"
    assert _loras(env) == [trained] and trained.stat().st_mtime_ns == stamp
    assert not [d for e, d in events if e == "progress" and d.get("node") == "10"]

    # another caption is another LoRA
    other = executor.run(_training_workflow(caption="a chequered square"))
    assert other.status == "success" and len(_loras(env)) == 2


def test_interrupt_stops_training_without_a_file(base_dir: Path) -> None:
    env = make_environment(base_dir)
    model, clip, _ = CheckpointLoaderSimple(ckpt_name=TINY).execute(run_context(env))
    token = InterruptToken()
    seen: list[int] = []

    def sink(event: str, data: dict) -> None:
        if event == "progress":
            seen.append(data["value"])
            token.set()

    ctx = run_context(env)
    ctx.interrupt, ctx._sink = token, sink
    node = TrainLora(model=model, clip=clip, images=torch.rand(2, 64, 64, 3), captions=CAPTION, steps=50)
    with pytest.raises(Interrupted):
        node.execute(ctx)
    assert seen == [1]
    assert _loras(env) == []


def test_captions_must_match_the_images(base_dir: Path) -> None:
    env = make_environment(base_dir)
    model, clip, _ = CheckpointLoaderSimple(ckpt_name=TINY).execute(run_context(env))
    node = TrainLora(model=model, clip=clip, images=torch.rand(3, 64, 64, 3), captions="one\ntwo", steps=1)
    with pytest.raises(ValueError, match="one caption per image"):
        node.execute(run_context(env))
