"""The SDXL and SD3 workflows in workflows/ run on tiny random models saved under the file names they name, and
the refiner workflow's KSamplerAdvanced pair hands its leftover noise over."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from latentgraph.engine.executor import Executor
from latentgraph.nodes import load_registry, make_environment
from latentgraph.nodes.sd.sd3 import save_sd3_single_file
from latentgraph.nodes.sd.sdxl import save_sdxl_single_file
from PIL import Image

from tests.nodes.sd.families_tiny import tiny_sd3, tiny_sdxl

WORKFLOWS = Path(__file__).resolve().parents[3] / "workflows"


def _write_models(root: Path) -> None:
    folder = root / "models" / "checkpoints"
    base = tiny_sdxl()
    save_sdxl_single_file(base["unet"], base["vae"], base["text_encoder"], base["text_encoder_2"],
                          folder / "sd_xl_base_1.0.safetensors")
    refiner = tiny_sdxl(refiner=True, seed=10)
    save_sdxl_single_file(refiner["unet"], refiner["vae"], None, refiner["text_encoder_2"],
                          folder / "sd_xl_refiner_1.0.safetensors")
    sd3 = tiny_sd3(t5=False)
    save_sd3_single_file(sd3["transformer"], sd3["vae"], {c: sd3[c] for c in ("text_encoder", "text_encoder_2")},
                         folder / "sd3_medium_incl_clips.safetensors")


def _small(workflow: dict) -> dict:
    """The same graph at 64x64 and 4 steps (the refiner hand-off at step 3)."""
    for node in workflow.values():
        inputs = node["inputs"]
        for key in ("width", "height", "target_width", "target_height"):
            if key in inputs:
                inputs[key] = 64
        if "steps" in inputs:
            inputs["steps"] = 4
        if inputs.get("end_at_step") == 20:
            inputs["end_at_step"] = 3
        if inputs.get("start_at_step") == 20:
            inputs["start_at_step"] = 3
    return workflow


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    root = tmp_path_factory.mktemp("families")
    _write_models(root)
    return Executor(load_registry(plugins=False), make_environment(root))


@pytest.mark.parametrize("name", ["sdxl_txt2img.json", "sdxl_refiner.json", "sd3_txt2img.json"])
def test_workflow_runs(executor: Executor, name: str) -> None:
    workflow = _small(json.loads((WORKFLOWS / name).read_text()))
    result = executor.run(workflow)
    assert result.status == "success", result.error
    [images] = [out["images"] for out in result.outputs.values()]
    assert len(images) == 1
    assert (executor.env.folders.output_dir / images[0]["filename"]).is_file()


def test_refiner_graph_hands_leftover_noise_over(executor: Executor) -> None:
    """With the base's leftover noise disabled (fully denoised at step 3), the refiner would start from a clean
    latent: the picture must change, so the noise really travels along the link."""
    workflow = _small(json.loads((WORKFLOWS / "sdxl_refiner.json").read_text()))
    with_noise = executor.run(workflow)
    workflow["10"]["inputs"]["return_with_leftover_noise"] = "disable"
    without = executor.run(workflow)
    out = executor.env.folders.output_dir
    files = [out / r.outputs["19"]["images"][0]["filename"] for r in (with_noise, without)]
    # Pixels, not file bytes: the PNGs embed the (changed) workflow, so their bytes differ in any case.
    pixels = [np.asarray(Image.open(f)) for f in files]
    assert pixels[0].shape == pixels[1].shape and not np.array_equal(pixels[0], pixels[1])
