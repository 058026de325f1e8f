"""A LoRA trained on a handful of images draws what it was shown, through the real workflow.

Eight generated images of a pattern the bundled demo model never saw (a black-and-white checkered square, 2x2
checks, on a purple background; its dataset has only flat single-colour shapes) train a LoRA with the default
settings; `workflows/lora.json` then draws the training caption with the LoRA at strength 1 and at strength 0.

Metric (stated here so that a person can judge it): for each generated image, the mean absolute pixel difference
(0..255, over all pixels and channels) to the nearest training image, averaged over the seeds. The LoRA's images
must be closer than the base model's by a clear margin (LEARNED_RATIO), and at strength 0 the workflow must give
the base model's image exactly (the same pixels as the workflow without the LoraLoader node).

Why purple and coarse checks, not the grey background of issue 22: a LoRA trains the UNet, not the VAE, and the
demo model's VAE cannot reproduce a grey background or checks finer than its 8x8-pixel latent cells (they come back
as coloured blobs, which is what a LoRA trained on them then draws). `test_vae_round_trip_is_reported` pins that
diagnosis: training measures the round trip and writes a sheet when it is poor.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from latentgraph.nodes.sd.loader_nodes import ASSETS, DEFAULT_CHECKPOINT
from latentgraph.training.dataset import COLOURS
from latentgraph.training.evaluate import Settings, generate, load_workflow, make_executor
from latentgraph.training.lora import VAE_WARN_LEVELS, LoraConfig, train_lora
from PIL import Image

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "lora.json"
BASE = ASSETS / "checkpoints" / DEFAULT_CHECKPOINT
CAPTION = "a checkered square, on a purple background"
LEARNED_RATIO = 0.7  # LoRA distance to the training images must be below 70% of the base model's
SEEDS = 4


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def checkered_square(offset: tuple[int, int], background: tuple[int, int, int], check: int = 16,
                     size: int = 32) -> np.ndarray:
    """A 64x64 image: a `size`-pixel square of white/black checks of `check` pixels, at the centre + `offset`."""
    image = np.empty((64, 64, 3), np.uint8)
    image[:] = background
    top, left = 16 + offset[1], 16 + offset[0]
    rows, cols = np.mgrid[0:size, 0:size]
    white = ((rows // check + cols // check) % 2 == 0)[..., None]
    image[top:top + size, left:left + size] = np.where(white, COLOURS["white"], COLOURS["black"])
    return image


def write_checkered(folder: Path, caption: str, background: tuple[int, int, int], count: int = 8,
                    check: int = 16, seed: int = 0) -> np.ndarray:
    """`count` jittered checkered squares with their caption files; returns the images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        image = checkered_square((int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), background, check)
        Image.fromarray(image).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(caption + "\n")
        images.append(image)
    return np.stack(images)


def distance_to_training(images: list[np.ndarray], training: np.ndarray) -> float:
    """Mean over `images` of the mean absolute pixel difference to the nearest training image (0..255)."""
    reference = training.astype(np.float32)
    return float(np.mean([np.abs(reference - image.astype(np.float32)).mean(axis=(1, 2, 3)).min()
                          for image in images]))


def _without_lora_loader(workflow: dict) -> dict:
    """The same workflow with the LoraLoader node removed and its users wired to the checkpoint loader."""
    workflow = copy.deepcopy(workflow)
    loader = next(i for i, node in workflow.items() if node["class_type"] == "LoraLoader")
    upstream = workflow.pop(loader)["inputs"]
    for node in workflow.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value and value[0] == loader:
                node["inputs"][name] = upstream["model"] if value[1] == 0 else upstream["clip"]
    return workflow


def test_lora_draws_the_pattern_it_was_shown(tmp_path: Path) -> None:
    training = write_checkered(tmp_path / "data", CAPTION, COLOURS["purple"])
    started = time.process_time()
    result = train_lora(tmp_path / "data", BASE, tmp_path / "loras" / "checkered.safetensors", LoraConfig(),
                        progress=False)
    train_seconds = time.process_time() - started
    assert result["vae_error"] < VAE_WARN_LEVELS and result["vae_sheet"] is None
    assert result["last_loss"] < result["first_loss"]

    executor = make_executor(tmp_path / "base", extra_loras=tmp_path / "loras")
    assert "checkered.safetensors" in executor.env.folders.list("loras")
    workflow = load_workflow(WORKFLOW)
    settings = Settings(steps=20, cfg=7.0, seed=0)
    texts = [CAPTION] * SEEDS
    base = generate(executor, workflow, texts, settings, lora=("checkered.safetensors", 0.0))
    learned = generate(executor, workflow, texts, settings, lora=("checkered.safetensors", 1.0))
    without = generate(executor, _without_lora_loader(workflow), texts, settings)

    assert all(np.array_equal(a, b) for a, b in zip(base, without))  # strength 0 is the base model exactly
    base_distance, learned_distance = distance_to_training(base, training), distance_to_training(learned, training)
    print(f"distance to training images: base {base_distance:.1f}, LoRA {learned_distance:.1f}; "
          f"training {train_seconds:.0f} s CPU")
    assert learned_distance < LEARNED_RATIO * base_distance


def test_vae_round_trip_is_reported(tmp_path: Path) -> None:
    """Issue 22's images (grey background, 8-pixel checks) are beyond the demo VAE: training says so and writes
    the round-trip sheet; the coarse checks on a demo colour are within it."""
    write_checkered(tmp_path / "grey", "a checkered square, on a gray background", (128, 128, 128), count=2, check=8)
    out = tmp_path / "loras" / "grey.safetensors"
    result = train_lora(tmp_path / "grey", BASE, out, LoraConfig(steps=1, batch_size=1), progress=False)
    assert result["vae_error"] > VAE_WARN_LEVELS
    assert result["vae_sheet"] == out.with_name("grey-vae.png") and result["vae_sheet"].is_file()
    with Image.open(result["vae_sheet"]) as sheet:
        assert sheet.size[1] > sheet.size[0] / 2  # two rows: the images and their round trip
