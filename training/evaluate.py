"""Scoring the demo model the way a user meets it: held-out prompts run through the engine with the saved
txt2img workflow, each image read back by the pixel classifier."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from latentgraph.engine.executor import Executor
from latentgraph.nodes import load_registry, make_environment
from latentgraph.training.classifier import Reading, classify
from latentgraph.training.dataset import Scene
from PIL import Image, ImageDraw

ATTRIBUTES = ("colour", "shape", "background")


@dataclass
class Settings:
    """Sampling settings for evaluation (the demo model's recommended ones)."""

    checkpoint: str = "latentgraph-demo.safetensors"
    size: int = 64
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "euler"
    scheduler: str = "normal"
    seed: int = 0


def _one(workflow: dict[str, Any], class_type: str) -> str:
    ids = [i for i, node in workflow.items() if node["class_type"] == class_type]
    if len(ids) != 1:
        raise ValueError(f"expected one {class_type} node in the workflow, found {len(ids)}")
    return ids[0]


def txt2img_prompt(workflow: dict[str, Any], text: str, settings: Settings, seed: int,
                   lora: tuple[str, float] | None = None) -> dict[str, Any]:
    """The workflow with its checkpoint, size, prompt, sampling settings, seed (and LoRA, if it has a loader) set."""
    prompt = copy.deepcopy(workflow)
    if lora is not None:
        loader = prompt[_one(prompt, "LoraLoader")]["inputs"]
        loader.update(lora_name=lora[0], strength_model=lora[1], strength_clip=lora[1])
    prompt[_one(prompt, "CheckpointLoaderSimple")]["inputs"]["ckpt_name"] = settings.checkpoint
    latent = prompt[_one(prompt, "EmptyLatentImage")]["inputs"]
    latent.update(width=settings.size, height=settings.size, batch_size=1)
    sampler = prompt[_one(prompt, "KSampler")]["inputs"]
    sampler.update(seed=seed, steps=settings.steps, cfg=settings.cfg, sampler_name=settings.sampler,
                   scheduler=settings.scheduler, denoise=1.0)
    prompt[sampler["positive"][0]]["inputs"]["text"] = text
    prompt[sampler["negative"][0]]["inputs"]["text"] = ""
    return prompt


def make_executor(base_dir: Path, extra_checkpoints: Path | None = None, extra_loras: Path | None = None) -> Executor:
    env = make_environment(base_dir)
    if extra_checkpoints is not None:
        env.folders.add("checkpoints", extra_checkpoints)
        for file in Path(extra_checkpoints).glob("*.safetensors"):  # a same-named model found first would be run
            found = env.folders.find("checkpoints", file.name)
            if found != file.resolve():
                raise ValueError(f"{file} has the name of {found}, which is found first: copy it under another name")
    if extra_loras is not None:
        env.folders.add("loras", extra_loras)
    return Executor(load_registry(), env)


def generate(executor: Executor, workflow: dict[str, Any], texts: list[str], settings: Settings,
             lora: tuple[str, float] | None = None) -> list[np.ndarray]:
    """One image per text, through the engine; seeds are settings.seed + index."""
    images = []
    output_dir = executor.env.folders.output_dir
    for index, text in enumerate(texts):
        result = executor.run(txt2img_prompt(workflow, text, settings, settings.seed + index, lora))
        if result.status != "success":
            raise RuntimeError(f"generation failed for {text!r}: {result.error}")
        saved = [img for out in result.outputs.values() for img in out.get("images", [])]
        path = output_dir / saved[0].get("subfolder", "") / saved[0]["filename"]
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB")))
    return images


def score(images: list[np.ndarray], scenes: list[Scene]) -> tuple[dict[str, float], list[Reading]]:
    """Accuracy per attribute (colour, shape, background) and the classifier's reading of each image."""
    readings = [classify(image) for image in images]
    accuracy = {
        name: float(np.mean([getattr(r, name) == getattr(s, name) for r, s in zip(readings, scenes)]))
        for name in ATTRIBUTES
    }
    return accuracy, readings


def contact_sheet(images: list[np.ndarray], scenes: list[Scene], readings: list[Reading], path: Path,
                  columns: int = 8, scale: int = 2) -> Path:
    """A grid of the generated images, each outlined green where every attribute was read right, else red."""
    tile = images[0].shape[0] * scale
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (tile + 4), rows * (tile + 4)), (128, 128, 128))
    draw = ImageDraw.Draw(sheet)
    for i, (image, scene, reading) in enumerate(zip(images, scenes, readings)):
        x, y = (i % columns) * (tile + 4), (i // columns) * (tile + 4)
        right = all(getattr(reading, a) == getattr(scene, a) for a in ATTRIBUTES)
        draw.rectangle((x, y, x + tile + 3, y + tile + 3), fill=(40, 200, 40) if right else (220, 40, 40))
        sheet.paste(Image.fromarray(image).resize((tile, tile), Image.Resampling.NEAREST), (x + 2, y + 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def load_workflow(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
