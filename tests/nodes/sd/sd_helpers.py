"""Workflows and a run context for the SD node tests (tiny models, small images, few steps)."""

from __future__ import annotations

import copy
import io
from typing import Any

import numpy as np
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.interrupt import InterruptToken
from PIL import Image


def run_context(env: Environment, events: list | None = None) -> RunContext:
    """A real run context whose events go to a list."""
    sink = (lambda e, d: events.append((e, d))) if events is not None else (lambda e, d: None)
    return RunContext(env=env, node_id="1", prompt_id="test", prompt={}, extra_data={}, interrupt=InterruptToken(),
                      sink=sink)


def txt2img(ckpt: str, seed: int = 1, steps: int = 4, size: int = 64, batch: int = 1, sampler: str = "euler",
            scheduler: str = "normal", cfg: float = 7.0, positive: str = "a red house",
            negative: str = "blurry", prefix: str = "test") -> dict[str, Any]:
    """An API-format txt2img workflow."""
    return copy.deepcopy({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    })


def with_lora(workflow: dict[str, Any], lora: str, strength: float) -> dict[str, Any]:
    """The workflow with a LoraLoader between the checkpoint and its users."""
    workflow = copy.deepcopy(workflow)
    workflow["10"] = {"class_type": "LoraLoader", "inputs": {"lora_name": lora, "strength_model": strength,
                                                             "strength_clip": strength, "model": ["4", 0],
                                                             "clip": ["4", 1]}}
    workflow["6"]["inputs"]["clip"] = ["10", 1]
    workflow["7"]["inputs"]["clip"] = ["10", 1]
    workflow["3"]["inputs"]["model"] = ["10", 0]
    return workflow


def output_files(env: Environment, result: Any, node: str = "9") -> list[bytes]:
    """The bytes of the PNGs a SaveImage node wrote."""
    images = result.outputs[node]["images"]
    return [(env.folders.output_dir / i["subfolder"] / i["filename"]).read_bytes() for i in images]


def output_pixels(env: Environment, result: Any, node: str = "9") -> list[np.ndarray]:
    """The pixels of the PNGs a SaveImage node wrote (the files also carry the workflow, which may differ)."""
    return [np.asarray(Image.open(io.BytesIO(data))) for data in output_files(env, result, node)]
