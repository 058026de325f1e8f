"""SDXL base and refiner on the engine: same latents as StableDiffusionXLPipeline, single-file round trips, the
base -> refiner hand-off with leftover noise, and detection of full-size architectures from shapes alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd.detect import family_config
from latentgraph.nodes.sd.families import checkpoint_handles as family_handles
from latentgraph.nodes.sd.families import inspect_checkpoint
from latentgraph.nodes.sd.families import load_component as load_family_component
from latentgraph.nodes.sd.sampling import sample
from latentgraph.nodes.sd.sdxl import big_g_to_open_clip, detect_sdxl, save_sdxl_single_file, xl_unet_key_to_ldm
from latentgraph.nodes.sd.sdxl_nodes import CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner
from latentgraph.nodes.sd.text_nodes import CLIPTextEncode
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from tests.nodes.sd.families_tiny import run_context, tiny_sdxl

PROMPT, NEGATIVE = "a photo of an astronaut riding a horse", "blurry"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("sdxl")
    parts = tiny_sdxl()
    path = save_sdxl_single_file(parts["unet"], parts["vae"], parts["text_encoder"], parts["text_encoder_2"],
                                 root / "models" / "checkpoints" / "tiny_sdxl.safetensors")
    return parts, path


@pytest.fixture(scope="module")
def refiner(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("refiner")
    parts = tiny_sdxl(refiner=True, seed=10)
    path = save_sdxl_single_file(parts["unet"], parts["vae"], None, parts["text_encoder_2"],
                                 root / "tiny_refiner.safetensors")
    return parts, path


def _euler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler.from_config(dict(family_config("sdxl_base", "scheduler"),
                                                   timestep_spacing="linspace"))


def test_single_file_round_trip(base: tuple[dict, Path], refiner: tuple[dict, Path]) -> None:
    for (parts, path), family in ((base, "sdxl"), (refiner, "sdxl_refiner")):
        info = inspect_checkpoint(path)
        assert info.family == family
        for name, module in parts.items():
            if module is None:
                assert name not in info.configs
                continue
            loaded = load_family_component(info, name).state_dict()
            original = module.state_dict()
            assert loaded.keys() == original.keys()
            assert all(torch.equal(loaded[k], original[k]) for k in original), name


def test_txt2img_equals_diffusers_pipeline(base: tuple[dict, Path]) -> None:
    parts, path = base
    env = make_environment(path.parents[2])
    model, clip, _ = family_handles(inspect_checkpoint(path), env)
    ctx = run_context(env)
    positive = CLIPTextEncode(text=PROMPT, clip=clip).execute(ctx)[0]
    negative = CLIPTextEncode(text=NEGATIVE, clip=clip).execute(ctx)[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    ours = sample(model, seed=42, steps=4, cfg=5.0, sampler_name="euler", scheduler_name="normal",
                  positive=positive, negative=negative, latent=latent)["samples"] * model.latent_scale
    pipe = StableDiffusionXLPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                                     text_encoder_2=parts["text_encoder_2"], tokenizer=load_clip_tokenizer(),
                                     tokenizer_2=load_clip_tokenizer("!"), unet=parts["unet"], scheduler=_euler())
    theirs = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=5.0, height=64, width=64,
                  generator=torch.Generator("cpu").manual_seed(42), output_type="latent").images
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_sdxl_nodes_carry_size_and_score(base: tuple[dict, Path], refiner: tuple[dict, Path]) -> None:
    env = make_environment(base[1].parents[2])
    ctx = run_context(env)
    _, clip, _ = family_handles(inspect_checkpoint(base[1]), env)
    [[context, options]] = CLIPTextEncodeSDXL(clip=clip, width=2048, height=1024, crop_w=8, crop_h=16,
                                              target_width=1024, target_height=512, text_g=PROMPT,
                                              text_l="a horse").execute(ctx)[0]
    assert context.shape == (1, 77, 64) and options["pooled_output"].shape == (1, 32)
    assert (options["width"], options["crop_h"], options["target_height"]) == (2048, 16, 512)
    _, refiner_clip, _ = family_handles(inspect_checkpoint(refiner[1]), env)
    [[context, options]] = CLIPTextEncodeSDXLRefiner(clip=refiner_clip, ascore=2.5, width=64, height=64,
                                                     text=NEGATIVE).execute(ctx)[0]
    assert context.shape == (1, 77, 32) and options["aesthetic_score"] == 2.5
    with pytest.raises(ValueError, match="sdxl_refiner"):
        CLIPTextEncodeSDXLRefiner(clip=clip, text="x").execute(ctx)


def test_base_to_refiner_hand_off_equals_diffusers(base: tuple[dict, Path], refiner: tuple[dict, Path]) -> None:
    """KSamplerAdvanced pair (base 0..3 of 5 with leftover noise, refiner 3..5 without adding noise) gives the
    latents of diffusers' denoising_end / denoising_start ensemble."""
    env = make_environment(base[1].parents[2])
    ctx = run_context(env)
    model, clip, _ = family_handles(inspect_checkpoint(base[1]), env)
    ref_model, ref_clip, _ = family_handles(inspect_checkpoint(refiner[1]), env)
    pos = CLIPTextEncode(text=PROMPT, clip=clip).execute(ctx)[0]
    neg = CLIPTextEncode(text=NEGATIVE, clip=clip).execute(ctx)[0]
    ref_pos = CLIPTextEncodeSDXLRefiner(clip=ref_clip, ascore=6.0, width=64, height=64, text=PROMPT).execute(ctx)[0]
    ref_neg = CLIPTextEncodeSDXLRefiner(clip=ref_clip, ascore=2.5, width=64, height=64, text=NEGATIVE).execute(ctx)[0]
    common = {"steps": 5, "cfg": 5.0, "sampler_name": "euler", "scheduler_name": "normal"}
    noisy = sample(model, seed=7, positive=pos, negative=neg, latent={"samples": torch.zeros(1, 4, 8, 8)},
                   start_step=0, end_step=3, force_full_denoise=False, **common)
    final = sample(ref_model, seed=7, positive=ref_pos, negative=ref_neg, latent=noisy, add_noise=False,
                   start_step=3, end_step=10000, **common)["samples"]
    full = sample(model, seed=7, positive=pos, negative=neg, latent={"samples": torch.zeros(1, 4, 8, 8)},
                  **common)["samples"]
    assert not torch.allclose(final, full, atol=1e-3), "the refiner must have taken over the last steps"

    parts, ref_parts = base[0], refiner[0]
    tokenizers = {"tokenizer": load_clip_tokenizer(), "tokenizer_2": load_clip_tokenizer("!")}
    pipe = StableDiffusionXLPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                                     text_encoder_2=parts["text_encoder_2"], unet=parts["unet"],
                                     scheduler=_euler(), **tokenizers)
    handed = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=5, guidance_scale=5.0, height=64, width=64,
                  denoising_end=0.6, generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    torch.testing.assert_close(noisy["samples"] * model.latent_scale, handed, atol=1e-4, rtol=1e-4)
    ref_pipe = StableDiffusionXLImg2ImgPipeline(vae=ref_parts["vae"], text_encoder=None,
                                                text_encoder_2=ref_parts["text_encoder_2"], unet=ref_parts["unet"],
                                                scheduler=_euler(), requires_aesthetics_score=True,
                                                tokenizer=None, tokenizer_2=tokenizers["tokenizer_2"])
    refined = ref_pipe(PROMPT, negative_prompt=NEGATIVE, image=handed, num_inference_steps=5, guidance_scale=5.0,
                       denoising_start=0.6, generator=torch.Generator("cpu").manual_seed(7),
                       output_type="latent").images
    torch.testing.assert_close(final * ref_model.latent_scale, refined, atol=1e-4, rtol=1e-4)


def _ldm_shapes(unet: UNet2DConditionModel, text_l: CLIPTextModel | None, text_g: CLIPTextModelWithProjection,
                ) -> dict[str, tuple[int, ...]]:
    config = unet.config
    up = {i for i, t in enumerate(config.up_block_types) if "CrossAttn" in t}
    shapes = {"model.diffusion_model." + xl_unet_key_to_ldm(k, config.layers_per_block, up): tuple(v.shape)
              for k, v in unet.state_dict().items()}
    prefix = "conditioner.embedders.0.model." if text_l is None else "conditioner.embedders.1.model."
    shapes.update({prefix + k: tuple(v.shape) for k, v in big_g_to_open_clip(text_g).items()})
    if text_l is not None:
        shapes.update({"conditioner.embedders.0.transformer." + k: tuple(v.shape)
                       for k, v in text_l.state_dict().items()})
    return shapes


@pytest.mark.parametrize("family", ["sdxl", "sdxl_refiner"])
def test_full_size_architecture_detected_from_shapes(family: str) -> None:
    """Full-size SDXL base/refiner built on the meta device (no memory, no download): detection rebuilds the
    published configs from the shapes."""
    source = "sdxl_base" if family == "sdxl" else "sdxl_refiner"
    published = family_config(source, "unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(published)
        text_g = CLIPTextModelWithProjection(CLIPTextConfig(**family_config(source, "text_encoder_2")))
        text_l = CLIPTextModel(CLIPTextConfig(**family_config("sdxl_base", "text_encoder"))) \
            if family == "sdxl" else None
    found, configs, _ = detect_sdxl(_ldm_shapes(unet, text_l, text_g))
    assert found == family
    depth, published_depth = configs["unet"]["transformer_layers_per_block"], published["transformer_layers_per_block"]
    for level, kind in enumerate(published["down_block_types"]):
        if "CrossAttn" in kind:
            expected = published_depth if isinstance(published_depth, int) else published_depth[level]
            assert (depth if isinstance(depth, int) else depth[level]) == expected
    for key in ("block_out_channels", "cross_attention_dim", "attention_head_dim",
                "projection_class_embeddings_input_dim", "down_block_types", "up_block_types", "layers_per_block"):
        expected = published[key]
        got = configs["unet"][key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == expected, key
    assert configs["text_encoder_2"]["num_hidden_layers"] == 32
    assert configs["text_encoder_2"]["hidden_size"] == configs["text_encoder_2"]["projection_dim"] == 1280
    if family == "sdxl":
        assert configs["text_encoder"]["hidden_size"] == 768 and configs["text_encoder"]["num_hidden_layers"] == 12
