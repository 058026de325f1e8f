"""SD3 (MMDiT, flow matching) on the engine: same latents as StableDiffusion3Pipeline with and without T5,
single-file round trip, separate-file loaders, shift node, and detection of the full-size architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd.detect import METADATA_KEY, UnknownCheckpoint, family_config
from latentgraph.nodes.sd.families import checkpoint_handles as family_handles
from latentgraph.nodes.sd.families import inspect_checkpoint
from latentgraph.nodes.sd.families import load_component as load_family_component
from latentgraph.nodes.sd.sampling import sample
from latentgraph.nodes.sd.sd3 import detect_sd3, save_sd3_single_file, transformer_to_sai
from latentgraph.nodes.sd.sd3_nodes import (
    CLIPLoader,
    DualCLIPLoader,
    EmptySD3LatentImage,
    ModelSamplingSD3,
    TripleCLIPLoader,
    UNETLoader,
)
from latentgraph.nodes.sd.text_nodes import CLIPTextEncode
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer
from safetensors.torch import save_file

from tests.nodes.sd.families_tiny import run_context, tiny_sd3, write_t5_tokenizer

PROMPT, NEGATIVE = "a photo of an astronaut riding a horse on the moon", "blurry"
ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


@pytest.fixture(scope="module")
def sd3(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("sd3")
    parts = tiny_sd3()
    path = save_sd3_single_file(parts["transformer"], parts["vae"], {c: parts[c] for c in ENCODERS},
                                root / "models" / "checkpoints" / "tiny_sd3.safetensors")
    write_t5_tokenizer(root / "models" / "text_encoders" / "t5_tokenizer")
    return parts, path


def _save_text_file(model: torch.nn.Module, path: Path) -> None:
    """A standalone text encoder file as ComfyUI keeps them; the tiny model's head count and activation, which
    shapes cannot tell, go in the metadata."""
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    config = model.config.to_dict()
    hints = {k: config[k] for k in ("num_attention_heads", "hidden_act") if k in config}
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps({"text_encoder": hints})})


def _pipeline(parts: dict, t5: bool, root: Path) -> StableDiffusion3Pipeline:
    from transformers import AutoTokenizer

    tokenizer_3 = AutoTokenizer.from_pretrained(str(root / "models" / "text_encoders" / "t5_tokenizer")) if t5 else None
    return StableDiffusion3Pipeline(
        transformer=parts["transformer"], scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=parts["vae"],
        text_encoder=parts["text_encoder"], tokenizer=load_clip_tokenizer(), text_encoder_2=parts["text_encoder_2"],
        tokenizer_2=load_clip_tokenizer("!"), text_encoder_3=parts["text_encoder_3"] if t5 else None,
        tokenizer_3=tokenizer_3)


def test_single_file_round_trip(sd3: tuple[dict, Path]) -> None:
    parts, path = sd3
    info = inspect_checkpoint(path)
    assert info.family == "sd3"
    for name in ("transformer", "vae", *ENCODERS):
        loaded, original = load_family_component(info, name).state_dict(), parts[name].state_dict()
        assert loaded.keys() == original.keys(), name
        assert all(torch.equal(loaded[k], original[k]) for k in original), name


@pytest.mark.parametrize("t5", [True, False])
def test_txt2img_equals_diffusers_pipeline(sd3: tuple[dict, Path], t5: bool, tmp_path: Path) -> None:
    parts, path = sd3
    root = path.parents[2]
    env = make_environment(root)
    ctx = run_context(env)
    if t5:
        model, clip, _ = family_handles(inspect_checkpoint(path), env)
    else:
        text_dir = tmp_path / "models" / "text_encoders"
        text_dir.mkdir(parents=True)
        for i, name in enumerate(ENCODERS[:2]):
            _save_text_file(parts[name], text_dir / f"c{i}.sft")
        env = make_environment(tmp_path)
        ctx = run_context(env)
        model, _, _ = family_handles(inspect_checkpoint(path), env)
        clip = DualCLIPLoader(clip_name1="c0.sft", clip_name2="c1.sft", type="sd3").execute(ctx)[0]
    latent = EmptySD3LatentImage(width=64, height=64, batch_size=1).execute(ctx)[0]
    positive = CLIPTextEncode(text=PROMPT, clip=clip).execute(ctx)[0]
    negative = CLIPTextEncode(text=NEGATIVE, clip=clip).execute(ctx)[0]
    ours = sample(model, seed=3, steps=4, cfg=4.5, sampler_name="euler", scheduler_name="simple",
                  positive=positive, negative=negative, latent=latent)["samples"]
    theirs = _pipeline(parts, t5, root)(
        PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=4.5, height=64, width=64,
        generator=torch.Generator("cpu").manual_seed(3), output_type="latent").images
    torch.testing.assert_close((ours - model.latent_shift) * model.latent_scale, theirs, atol=1e-4, rtol=1e-4)


def test_triple_loader_unet_loader_and_shift(sd3: tuple[dict, Path], tmp_path: Path) -> None:
    parts, _ = sd3
    text_dir, unet_dir = tmp_path / "models" / "text_encoders", tmp_path / "models" / "diffusion_models"
    unet_dir.mkdir(parents=True)
    text_dir.mkdir(parents=True)
    for i, name in enumerate(ENCODERS):
        _save_text_file(parts[name], text_dir / f"te{i}.safetensors")
    write_t5_tokenizer(text_dir / "t5_tokenizer")
    save_file({k: v.contiguous() for k, v in transformer_to_sai(parts["transformer"]).items()},
              str(unet_dir / "mmdit.safetensors"),
              metadata={METADATA_KEY: json.dumps({"transformer": {"attention_head_dim": 8}})})
    env = make_environment(tmp_path)
    ctx = run_context(env)
    clip = TripleCLIPLoader(clip_name1="te0.safetensors", clip_name2="te1.safetensors",
                            clip_name3="te2.safetensors").execute(ctx)[0]
    assert clip.roles == ("clip_l", "clip_g", "t5")
    model = UNETLoader(unet_name="mmdit.safetensors").execute(ctx)[0]
    shifted = ModelSamplingSD3(model=model, shift=6.0).execute(ctx)[0]
    assert shifted.scheduler_config["shift"] == 6.0 and model.scheduler_config["shift"] == 3.0
    [[context, options]] = CLIPTextEncode(text=PROMPT, clip=clip).execute(ctx)[0]
    assert context.shape == (1, 77 + 256, 64) and options["pooled_output"].shape == (1, 64)
    latent = EmptySD3LatentImage(width=64, height=64).execute(ctx)[0]
    common = {"seed": 1, "steps": 3, "cfg": 1.0, "sampler_name": "euler", "scheduler_name": "simple",
              "positive": [[context, options]], "negative": [[context, options]], "latent": latent}
    assert not torch.allclose(sample(model, **common)["samples"], sample(shifted, **common)["samples"])


def test_clip_loader_alone_gives_clip_l_and_zeros_for_the_missing_encoders(sd3: tuple[dict, Path],
                                                                          tmp_path: Path) -> None:
    """CLIPLoader with one CLIP-L file: its columns of the context and of the pooled vector equal the CLIP-L part
    of diffusers' SD3 encode_prompt (penultimate layer; pooled projection), and the missing CLIP-G and T5 parts
    are zeros (ComfyUI's SD3 text model without them). A loader that ignored its file, or the wrong layer, fails."""
    parts, path = sd3
    text_dir = tmp_path / "models" / "text_encoders"
    text_dir.mkdir(parents=True)
    _save_text_file(parts["text_encoder"], text_dir / "l.sft")
    _save_text_file(parts["text_encoder_2"], text_dir / "other.sft")
    ctx = run_context(make_environment(tmp_path))
    clip = CLIPLoader(clip_name="l.sft", type="sd3").execute(ctx)[0]
    assert clip.roles == ("clip_l",)
    [[context, options]] = CLIPTextEncode(text=PROMPT, clip=clip).execute(ctx)[0]
    embeds, _, pooled, _ = _pipeline(parts, False, path.parents[2]).encode_prompt(
        PROMPT, None, None, device="cpu", do_classifier_free_guidance=False)
    width = parts["text_encoder"].config.hidden_size
    torch.testing.assert_close(context[:, :77, :width], embeds[:, :77, :width], atol=1e-5, rtol=1e-5)
    assert not context[:, :77, width:].any() and not context[:, 77:].any()
    torch.testing.assert_close(options["pooled_output"][:, :width], pooled[:, :width], atol=1e-5, rtol=1e-5)
    assert not options["pooled_output"][:, width:].any()
    other = CLIPLoader(clip_name="other.sft", type="sd3").execute(ctx)[0]
    [[other_context, _]] = CLIPTextEncode(text=PROMPT, clip=other).execute(ctx)[0]
    assert float((other_context[:, :77, :width] - context[:, :77, :width]).abs().max()) > 1e-2


def test_full_size_architecture_detected_from_shapes() -> None:
    published = family_config("sd3", "transformer")
    with torch.device("meta"):
        transformer = SD3Transformer2DModel.from_config(published)
    shapes = {"model.diffusion_model." + k: tuple(v.shape) for k, v in transformer_to_sai(transformer).items()}
    config = detect_sd3(shapes)["transformer"]
    for key in ("num_layers", "num_attention_heads", "joint_attention_dim", "caption_projection_dim",
                "pooled_projection_dim", "pos_embed_max_size", "in_channels", "patch_size", "qk_norm"):
        assert config[key] == published[key], key
    with torch.device("meta"):
        sd35 = SD3Transformer2DModel.from_config(dict(published, num_layers=24, dual_attention_layers=list(range(13)),
                                                      qk_norm="rms_norm", num_attention_heads=24))
    shapes = {"model.diffusion_model." + k: tuple(v.shape) for k, v in transformer_to_sai(sd35).items()}
    assert detect_sd3(shapes)["transformer"]["dual_attention_layers"] == list(range(13))


def test_unknown_file_names_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "odd.safetensors"
    save_file({"model.diffusion_model.foo.weight": torch.zeros(2), "something.else": torch.zeros(1)}, str(path))
    with pytest.raises(UnknownCheckpoint, match=r"SDXL refiner, SD3.*model\.diffusion_model \(1 tensors\)"):
        inspect_checkpoint(path)
