"""The shipped img2img, inpaint and hires-fix workflows do what their names promise on the bundled demo model.

Each test runs the file under workflows/ unchanged but for the inputs it declares (image, prompt), the way
`latentgraph run NAME --input ...` binds them, and reads the saved PNG back with the demo model's pixel classifier
(training/classifier.py). Input pictures are drawn by the dataset's renderer, so what they show is known exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from latentgraph.engine.executor import Executor
from latentgraph.engine.library import bind, extract_interface
from latentgraph.nodes import load_registry, make_environment
from latentgraph.training.classifier import classify
from latentgraph.training.dataset import COLOURS, Scene, render
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread")

FOLDER = Path(__file__).resolve().parents[2] / "workflows"


@pytest.fixture
def one_thread():
    """The demo model is small: one thread is fastest on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    return Executor(load_registry(plugins=False), make_environment(tmp_path_factory.mktemp("demo")))


def workflow(executor: Executor, name: str, **values: Any) -> dict[str, Any]:
    """workflows/NAME.json with its declared inputs set to `values`."""
    prompt = json.loads((FOLDER / f"{name}.json").read_text())
    interface = extract_interface(prompt, executor.registry, executor.env)
    assert set(values) <= set(interface.inputs), sorted(interface.inputs)
    return bind(prompt, interface, values)


def run(executor: Executor, prompt: dict[str, Any]) -> np.ndarray:
    """Runs a prompt and returns the one image it saved, as HxWx3 uint8."""
    result = executor.run(prompt)
    assert result.status == "success", result.error
    (saved,) = [image for output in result.outputs.values() for image in output.get("images", [])]
    with Image.open(executor.env.folders.output_dir / saved["subfolder"] / saved["filename"]) as image:
        return np.asarray(image.convert("RGB"))


def put_input(executor: Executor, name: str, pixels: np.ndarray) -> str:
    Image.fromarray(pixels).save(executor.env.folders.input_dir / name)
    return name


@pytest.mark.parametrize(
    ("drawn", "asked"),
    [(Scene("red", "square", "large", "in the center", "white"), "blue"),
     (Scene("green", "circle", "large", "in the center", "black"), "yellow"),
     (Scene("yellow", "triangle", "large", "in the center", "purple"), "orange")],
    ids=lambda v: v if isinstance(v, str) else f"{v.colour}-{v.shape}",
)
def test_img2img_turns_the_drawn_shape_into_the_asked_colour(executor: Executor, drawn: Scene, asked: str) -> None:
    pixels = np.asarray(render(drawn, 64))
    assert classify(pixels).colour == drawn.colour  # the classifier reads the input as drawn
    image = put_input(executor, f"drawn-{drawn.colour}-{drawn.shape}.png", pixels)
    text = f"a large {asked} {drawn.shape} in the center, on a {drawn.background} background"
    out = run(executor, workflow(executor, "img2img", image=image, prompt=text))
    reading = classify(out)
    assert out.shape == (64, 64, 3)
    assert (reading.colour, reading.background) == (asked, drawn.background), reading
    # nothing of the drawn colour is left: no pixel closer to it than to the asked colour
    to_drawn = np.linalg.norm(out - np.array(COLOURS[drawn.colour], np.float32), axis=-1)
    to_asked = np.linalg.norm(out - np.array(COLOURS[asked], np.float32), axis=-1)
    assert int(((to_drawn < 60) & (to_drawn < to_asked)).sum()) <= 4


def test_inpaint_replaces_what_the_mask_covers_and_keeps_the_rest(executor: Executor) -> None:
    """A green square on the left is masked (transparent) and a red circle asked for: the mask's area shows a red
    circle and no green; pixels away from the mask (beyond the workflow's 6 px growth plus 6 px of feathering) stay
    within 30 levels of the input (the VAE round trip's error)."""
    drawn = np.asarray(render(Scene("green", "square", "small", "on the left", "white"), 64).convert("RGBA")).copy()
    drawn[10:54, 2:32, 3] = 0
    image = put_input(executor, "masked.png", drawn)
    out = run(executor, workflow(executor, "inpaint", image=image,
                                 prompt="a small red circle on the left, on a white background"))
    reading = classify(out)
    assert (reading.colour, reading.shape, reading.background) == ("red", "circle", "white"), reading
    green = np.linalg.norm(out.astype(np.float32) - np.array(COLOURS["green"], np.float32), axis=-1) < 60
    assert int(green.sum()) == 0
    outside = np.abs(out[:, 44:].astype(np.int16) - drawn[:, 44:, :3].astype(np.int16))
    assert int(outside.max()) <= 30


def gradient_energy(pixels: np.ndarray) -> float:
    """Mean squared difference of neighbouring pixels: larger where edges are sharp."""
    values = pixels.astype(np.float64)
    return float(np.mean(np.diff(values, axis=0) ** 2) + np.mean(np.diff(values, axis=1) ** 2))


def test_hires_fix_gives_a_sharper_128px_image_of_the_same_scene(executor: Executor) -> None:
    """The second pass gives 128x128 with edges sharper than a bilinear upscale of its own 64px first pass (the
    first pass is decoded from the same graph by pointing the decoder at the first sampler), still the asked scene
    and the same composition (the 128px image box-downscaled stays close to the first pass)."""
    text = "a large red circle in the center, on a blue background"
    prompt = workflow(executor, "hires_fix", prompt=text)
    high = run(executor, prompt)
    first_pass = {**prompt, "8": {**prompt["8"], "inputs": {**prompt["8"]["inputs"], "samples": ["3", 0]}}}
    low = run(executor, first_pass)
    assert (high.shape, low.shape) == ((128, 128, 3), (64, 64, 3))
    reading = classify(high)
    assert (reading.colour, reading.shape, reading.background) == ("red", "circle", "blue"), reading
    bilinear = np.asarray(Image.fromarray(low).resize((128, 128), Image.Resampling.BILINEAR))
    assert gradient_energy(high) > 1.5 * gradient_energy(bilinear)
    box = np.asarray(Image.fromarray(high).resize((64, 64), Image.Resampling.BOX)).astype(np.float32)
    assert float(np.abs(box - low).mean()) < 25
