"""Workflows as people share them, built from the everyday nodes, run end to end on the tiny SD1 checkpoint:
outpainting (pad, inpaint-encode, sample) and a latent two-subject composite with a second pass."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.nodes.sd.conftest import TINY
from tests.nodes.sd.sd_helpers import output_pixels, txt2img

pytestmark = pytest.mark.usefixtures("one_thread")


def test_outpainting_workflow(shared_executor):
    env = shared_executor.env
    Image.new("RGB", (32, 32), (220, 30, 30)).save(env.folders.input_dir / "outpaint_in.png")
    workflow = txt2img(TINY, steps=2, size=32, prefix="outpaint")
    del workflow["5"]
    workflow.update({
        "10": {"class_type": "LoadImage", "inputs": {"image": "outpaint_in.png"}},
        "11": {"class_type": "ImagePadForOutpaint", "inputs": {"image": ["10", 0], "left": 16, "top": 0,
                                                               "right": 16, "bottom": 8, "feathering": 8}},
        "12": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["11", 0], "vae": ["4", 2],
                                                               "mask": ["11", 1], "grow_mask_by": 4}},
    })
    workflow["3"]["inputs"]["latent_image"] = ["12", 0]
    result = shared_executor.run(workflow)
    assert result.status == "success", result.error
    assert output_pixels(env, result)[0].shape == (40, 64, 3)


def test_latent_composite_then_second_pass(shared_executor):
    workflow = txt2img(TINY, steps=2, size=32, prefix="composite")
    workflow.update({
        "20": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 32, "batch_size": 1}},
        "21": {"class_type": "LatentComposite", "inputs": {"samples_to": ["20", 0], "samples_from": ["3", 0],
                                                           "x": 32, "y": 0, "feather": 8}},
        "22": {"class_type": "LatentFlip", "inputs": {"samples": ["3", 0], "flip_method": "y-axis: horizontally"}},
        "23": {"class_type": "LatentCompositeMasked", "inputs": {"destination": ["21", 0], "source": ["22", 0],
                                                                 "x": 0, "y": 0, "resize_source": False}},
        "24": {"class_type": "KSampler", "inputs": {
            "seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.5,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["23", 0]}},
    })
    workflow["8"]["inputs"]["samples"] = ["24", 0]
    result = shared_executor.run(workflow)
    assert result.status == "success", result.error
    pixels = output_pixels(shared_executor.env, result)[0]
    assert pixels.shape == (32, 64, 3) and np.ptp(pixels) > 0
