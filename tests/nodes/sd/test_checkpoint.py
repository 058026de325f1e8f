"""Checkpoint files: single-file round trip, diffusers folders, detection from shapes, refusal of pickles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from latentgraph.engine.executor import Executor
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd.checkpoint import (
    UnsafeCheckpoint,
    build_text_encoder,
    build_unet,
    build_vae,
)
from latentgraph.nodes.sd.checkpoint_save import save_single_file, text_encoder_to_ldm, unet_to_ldm, vae_to_ldm
from latentgraph.nodes.sd.detect import family_config
from latentgraph.nodes.sd.families import detect_ldm as detect
from latentgraph.nodes.sd.families import inspect_checkpoint, load_component
from latentgraph.nodes.sd.loader_nodes import checkpoint_names
from latentgraph.nodes.sd.model_paths import read_extra_model_paths

from .sd_helpers import output_pixels, txt2img

pytestmark = pytest.mark.usefixtures("one_thread")


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_single_file_loads_to_the_same_weights(tiny_parts, tmp_path: Path) -> None:
    path = save_single_file(tiny_parts.unet, tiny_parts.vae, tiny_parts.text_encoder, tmp_path / "m.safetensors")
    info = inspect_checkpoint(path)
    assert (info.family, info.prediction_type) == ("sd1", "epsilon")
    assert _state_equal(load_component(info, "unet"), tiny_parts.unet)
    assert _state_equal(load_component(info, "vae"), tiny_parts.vae)
    assert _state_equal(load_component(info, "text_encoder"), tiny_parts.text_encoder)


def test_our_ldm_names_agree_with_diffusers_converter(tiny_parts) -> None:
    """diffusers' own LDM converter reads what we write back to the original weights."""
    unet = convert_ldm_unet_checkpoint(unet_to_ldm(tiny_parts.unet), dict(tiny_parts.unet.config))
    vae = convert_ldm_vae_checkpoint(vae_to_ldm(tiny_parts.vae), dict(tiny_parts.vae.config))
    for converted, model in ((unet, tiny_parts.unet), (vae, tiny_parts.vae)):
        reference = model.state_dict()
        assert converted.keys() == reference.keys()
        assert all(torch.equal(converted[k].reshape(reference[k].shape), reference[k]) for k in reference)


def test_single_file_and_diffusers_folder_give_the_same_image(registry, tiny_parts, tmp_path: Path) -> None:
    checkpoints = tmp_path / "models" / "checkpoints"
    save_single_file(tiny_parts.unet, tiny_parts.vae, tiny_parts.text_encoder, checkpoints / "single.safetensors")
    pipe = StableDiffusionPipeline(vae=tiny_parts.vae, text_encoder=tiny_parts.text_encoder,
                                   tokenizer=tiny_parts.tokenizer, unet=tiny_parts.unet, scheduler=tiny_parts.scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(checkpoints / "folder")
    executor = Executor(registry, make_environment(tmp_path))
    assert {"single.safetensors", "folder"} <= set(checkpoint_names(executor.env))
    assert not any(n.startswith("folder/") for n in checkpoint_names(executor.env))
    single = executor.run(txt2img("single.safetensors", prefix="single"))
    folder = executor.run(txt2img("folder", prefix="folder"))
    assert single.status == folder.status == "success"
    (a,), (b,) = output_pixels(executor.env, single), output_pixels(executor.env, folder)
    assert (a == b).all()


def _ldm_shapes(family: str, v_pred: bool) -> dict[str, tuple[int, ...]]:
    """A full-size LDM checkpoint's key shapes, from models built on the meta device (no memory, no download)."""
    unet = build_unet(family_config(family, "unet"))
    vae = build_vae(family_config(family, "vae"))
    text = build_text_encoder(family_config(family, "text_encoder"))
    state = {**unet_to_ldm(unet), **vae_to_ldm(vae), **text_encoder_to_ldm(text)}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if v_pred:
        shapes["v_pred"] = (0,)
    return shapes


@pytest.mark.parametrize(("family", "v_pred", "blocks", "context", "text_width", "text_layers"), [
    ("sd1", False, [320, 640, 1280, 1280], 768, 768, 12),
    ("sd2", True, [320, 640, 1280, 1280], 1024, 1024, 23),
])
def test_full_size_architectures_detected_from_shapes(family: str, v_pred: bool, blocks: list[int], context: int,
                                                      text_width: int, text_layers: int) -> None:
    shapes = _ldm_shapes(family, v_pred)
    detected = detect(shapes)
    assert detected.family == family
    assert detected.prediction_type == ("v_prediction" if v_pred else "epsilon")
    assert detected.unet["block_out_channels"] == blocks
    assert detected.unet["cross_attention_dim"] == context
    assert detected.unet["layers_per_block"] == 2
    assert detected.unet["use_linear_projection"] == (family == "sd2")
    assert detected.text_encoder["hidden_size"] == text_width
    assert detected.text_encoder["num_hidden_layers"] == text_layers
    assert detected.text_layers_in_file == text_layers + (family == "sd2")
    assert detected.vae["block_out_channels"] == [128, 256, 512, 512]
    for component, build in (("unet", build_unet), ("vae", build_vae)):
        expected = family_config(family, component)
        assert {k: detected_value for k, detected_value in getattr(detected, component).items() if k in expected} \
            == {k: v for k, v in expected.items() if k in getattr(detected, component)}
        assert {k: tuple(v.shape) for k, v in build(getattr(detected, component)).state_dict().items()} == \
            {k: tuple(v.shape) for k, v in build(expected).state_dict().items()}


def test_shapes_not_tables_decide_dimensions() -> None:
    """An unusual width and depth, which no table lists, is read from the shapes."""
    config = dict(family_config("sd1", "unet"), block_out_channels=[96, 192, 192], layers_per_block=3,
                  down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=256)
    text = dict(family_config("sd1", "text_encoder"), hidden_size=256, intermediate_size=512, num_hidden_layers=5,
                num_attention_heads=4)
    state = {**unet_to_ldm(build_unet(config)), **vae_to_ldm(build_vae(family_config("sd1", "vae"))),
             **text_encoder_to_ldm(build_text_encoder(text))}
    detected = detect({k: tuple(v.shape) for k, v in state.items()})
    assert detected.unet["block_out_channels"] == [96, 192, 192]
    assert detected.unet["layers_per_block"] == 3
    assert detected.unet["down_block_types"] == config["down_block_types"]
    assert detected.unet["up_block_types"] == config["up_block_types"]
    assert detected.unet["cross_attention_dim"] == 256
    assert (detected.text_encoder["num_hidden_layers"], detected.text_encoder["num_attention_heads"]) == (5, 4)


def test_sd2_v_prediction_single_file_round_trip(tmp_path: Path) -> None:
    """An SD2-style (OpenCLIP, gelu) model written with v-prediction loads back as such, with the same weights."""
    from latentgraph.nodes.sd.tiny import build_tiny_pipeline_components

    parts = build_tiny_pipeline_components(seed=1)
    config = dict(parts.text_encoder.config.to_dict(), hidden_act="gelu")
    torch.manual_seed(0)
    text = build_text_encoder(config).to_empty(device="cpu")
    for p in text.parameters():
        torch.nn.init.normal_(p)
    path = save_single_file(parts.unet, parts.vae, text, tmp_path / "sd2.safetensors", prediction_type="v_prediction")
    info = inspect_checkpoint(path)
    assert (info.family, info.prediction_type) == ("sd2", "v_prediction")
    loaded = load_component(info, "text_encoder")
    reference = {k: v for k, v in text.state_dict().items() if not k.endswith("position_ids")}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in reference.items())


def test_pickled_checkpoints_are_refused_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, path)
    monkeypatch.delenv("LATENTGRAPH_ALLOW_PICKLE", raising=False)
    with pytest.raises(UnsafeCheckpoint, match="LATENTGRAPH_ALLOW_PICKLE=1"):
        inspect_checkpoint(path)


def test_pickled_checkpoint_loads_when_the_user_opts_in(tiny_parts, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    state = {**unet_to_ldm(tiny_parts.unet), **vae_to_ldm(tiny_parts.vae),
             **text_encoder_to_ldm(tiny_parts.text_encoder)}
    torch.save({"state_dict": state}, tmp_path / "model.ckpt")
    monkeypatch.setenv("LATENTGRAPH_ALLOW_PICKLE", "1")
    info = inspect_checkpoint(tmp_path / "model.ckpt")
    assert _state_equal(load_component(info, "unet"), tiny_parts.unet)


def test_extra_model_paths_yaml(tmp_path: Path, registry) -> None:
    a1111 = tmp_path / "webui"
    (a1111 / "models" / "Stable-diffusion").mkdir(parents=True)
    (a1111 / "models" / "Stable-diffusion" / "other.safetensors").write_bytes(b"")
    (a1111 / "models" / "Lora").mkdir(parents=True)
    base = tmp_path / "base"
    base.mkdir()
    (base / "extra_model_paths.yaml").write_text(
        f"a111:\n    base_path: {a1111}\n    checkpoints: models/Stable-diffusion\n"
        f"    loras: |\n        models/Lora\n        models/LyCORIS\n")
    pairs = read_extra_model_paths(base / "extra_model_paths.yaml")
    assert ("loras", (a1111 / "models" / "LyCORIS").resolve()) in pairs
    env = make_environment(base)
    info = registry.object_info(env, "CheckpointLoaderSimple")["CheckpointLoaderSimple"]
    choices = info["input"]["required"]["ckpt_name"][0]
    assert "other.safetensors" in choices and "latentgraph-demo.safetensors" in choices
    assert json.dumps(info)


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_standalone_vae_file_decodes_like_the_checkpoint_vae(registry, tiny_parts, tiny_file: Path, tmp_path: Path,
                                                             layout: str) -> None:
    from safetensors.torch import save_file

    from .conftest import TINY, with_checkpoint

    base = with_checkpoint(tmp_path, tiny_file)
    state = vae_to_ldm(tiny_parts.vae, prefix="") if layout == "ldm" else tiny_parts.vae.state_dict()
    (base / "models" / "vae").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(base / "models" / "vae" / "my.vae.safetensors"))
    workflow = txt2img(TINY, seed=2)
    executor = Executor(registry, make_environment(base))
    reference = output_pixels(executor.env, executor.run(workflow))[0]
    workflow["20"] = {"class_type": "VAELoader", "inputs": {"vae_name": "my.vae.safetensors"}}
    workflow["8"]["inputs"]["vae"] = ["20", 0]
    result = executor.run(workflow)
    assert result.status == "success", result.error
    assert np.array_equal(output_pixels(executor.env, result)[0], reference)


def test_settings_shapes_cannot_tell_travel_in_the_metadata(tiny_parts, tmp_path: Path) -> None:
    """A VAE with one norm group and a UNet with 4 heads load back with those settings, not SD's conventions."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(dict(tiny_parts.vae.config, norm_num_groups=1))
    unet = UNet2DConditionModel.from_config(dict(tiny_parts.unet.config, attention_head_dim=4))
    path = save_single_file(unet, vae, tiny_parts.text_encoder, tmp_path / "odd.safetensors")
    info = inspect_checkpoint(path)
    assert load_component(info, "vae").config.norm_num_groups == 1
    loaded = load_component(info, "unet")
    assert loaded.config.attention_head_dim == 4 and _state_equal(loaded, unet)
