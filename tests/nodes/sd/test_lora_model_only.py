"""LoraLoaderModelOnly is ComfyUI's LoraLoader with strength_clip 0 (its reference here): the same image, pixel
for pixel, from a random LoRA on the tiny SD1 checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from latentgraph.engine.executor import Executor
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd.tiny import write_random_lora

from .conftest import TINY, with_checkpoint
from .sd_helpers import output_pixels, txt2img, with_lora

pytestmark = pytest.mark.usefixtures("one_thread")


def test_model_only_equals_lora_loader_with_clip_strength_zero(registry, tiny_file: Path, tiny_parts,
                                                                tmp_path: Path) -> None:
    base = with_checkpoint(tmp_path, tiny_file)
    write_random_lora(base / "models" / "loras" / "style.safetensors", tiny_parts.unet, tiny_parts.text_encoder)
    executor = Executor(registry, make_environment(base))

    def pixels(workflow: dict) -> np.ndarray:
        result = executor.run(workflow)
        assert result.status == "success", result.error
        return output_pixels(executor.env, result)[0]

    plain = txt2img(TINY, seed=4)
    reference = with_lora(plain, "style.safetensors", 0.8)
    reference["10"]["inputs"]["strength_clip"] = 0.0
    model_only = dict(plain)
    model_only["10"] = {"class_type": "LoraLoaderModelOnly",
                        "inputs": {"lora_name": "style.safetensors", "strength_model": 0.8, "model": ["4", 0]}}
    model_only["3"] = {**plain["3"], "inputs": {**plain["3"]["inputs"], "model": ["10", 0]}}
    ours, theirs, without = pixels(model_only), pixels(reference), pixels(plain)
    assert np.array_equal(ours, theirs)
    assert not np.array_equal(ours, without)
