"""The four kinds of shared workflow issue 16 names, run from the command line in the editor's format on tiny models
under the file names people use: SDXL Turbo (ComfyUI's own sdxlturbo_example template file, unchanged: SamplerCustom,
SDTurboScheduler, KSamplerSelect), an ESRGAN upscale, an outpaint (ImagePadForOutpaint into VAEEncodeForInpaint)
and a Canny ControlNet (ControlNetLoader, ControlNetApplyAdvanced). The last three are laid out as ComfyUI's examples
lay them out and saved in the editor's format (`api_to_ui`), so `latentgraph run` converts them as it would a
downloaded file. Only sizes and step counts are set from the command line (`--set`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from latentgraph.cli.main import main
from latentgraph.engine.workflow_format import api_to_ui
from latentgraph.nodes import load_registry, make_environment
from PIL import Image

from tests.workflows.test_comfyui_templates import (
    _write_controlnet,
    _write_esrgan,
    _write_sd1,
    _write_sdxl,
    templates_folder,
)

pytestmark = pytest.mark.slow

SD15, TURBO = "v1-5-pruned-emaonly.safetensors", "sd_xl_turbo_1.0_fp16.safetensors"
CANNY, ESRGAN = "control_v11p_sd15_canny.safetensors", "RealESRGAN_x4plus.safetensors"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shared")
    models = root / "models"
    for folder in ("checkpoints", "controlnet", "upscale_models"):
        (models / folder).mkdir(parents=True)
    _write_sd1(models / "checkpoints" / SD15, 1)
    _write_sdxl(models / "checkpoints" / TURBO, 2)
    _write_controlnet(models / "controlnet" / CANNY, 3, "sd1")
    _write_esrgan(models / "upscale_models" / ESRGAN, 4, ESRGAN)
    (root / "input").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "input" / "photo.png")
    return root


def cli_run(base: Path, workflow: Path, *sets: str, capsys: pytest.CaptureFixture[str]) -> np.ndarray:
    """`latentgraph run WORKFLOW --set ...`; the pixels of the one image it saved."""
    arguments = ["run", str(workflow), "--base-dir", str(base), "--quiet", "--threads", "1"]
    for item in sets:
        arguments += ["--set", item]
    code = main(arguments)
    out, err = capsys.readouterr()
    assert code == 0, err
    (path,) = [line for line in out.splitlines() if line.endswith(".png")]
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def save_as_editor_file(base: Path, name: str, prompt: dict[str, Any]) -> Path:
    info = load_registry(plugins=False).object_info(make_environment(base))
    path = base / f"{name}.json"
    path.write_text(json.dumps(api_to_ui(prompt, info)))
    return path


def sd15_graph(latent: list[Any], positive: list[Any], negative: list[Any]) -> dict[str, Any]:
    """ComfyUI's default graph from the checkpoint to SaveImage, sampling `latent` under the given conditioning."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a house by a lake", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 5, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": positive, "negative": negative, "latent_image": latent}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}},
    }


def test_sdxl_turbo_template_runs_unchanged_from_the_cli(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    template = templates_folder() / "sdxlturbo_example.json"
    pixels = cli_run(base, template, "5.width=64", "5.height=64", capsys=capsys)
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0


def test_esrgan_upscale_from_the_cli(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workflow = save_as_editor_file(base, "upscale", {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": ESRGAN}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "upscaled"}},
    })
    pixels = cli_run(base, workflow, capsys=capsys)
    assert pixels.shape == (128, 128, 3)  # 32 px times the x4 the file's architecture holds


def test_outpaint_from_the_cli(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompt = sd15_graph(["12", 0], ["6", 0], ["7", 0])
    prompt.update({
        "10": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "11": {"class_type": "ImagePadForOutpaint", "inputs": {
            "image": ["10", 0], "left": 16, "top": 0, "right": 16, "bottom": 8, "feathering": 8}},
        "12": {"class_type": "VAEEncodeForInpaint", "inputs": {
            "pixels": ["11", 0], "vae": ["4", 2], "mask": ["11", 1], "grow_mask_by": 6}},
    })
    pixels = cli_run(base, save_as_editor_file(base, "outpaint", prompt), "3.steps=2", capsys=capsys)
    assert pixels.shape == (40, 64, 3) and pixels.std() > 0


def test_canny_controlnet_from_the_cli(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompt = sd15_graph(["5", 0], ["13", 0], ["13", 1])
    prompt.update({
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "11": {"class_type": "Canny", "inputs": {"image": ["10", 0], "low_threshold": 0.4, "high_threshold": 0.8}},
        "12": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CANNY}},
        "13": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["12", 0], "image": ["11", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
    })
    workflow = save_as_editor_file(base, "controlnet", prompt)
    controlled = cli_run(base, workflow, "5.width=32", "5.height=32", capsys=capsys)
    plain = cli_run(base, workflow, "5.width=32", "5.height=32", "13.strength=0", capsys=capsys)
    assert controlled.shape == plain.shape == (32, 32, 3)
    assert np.abs(controlled.astype(int) - plain.astype(int)).max() > 0  # the ControlNet steers the result
