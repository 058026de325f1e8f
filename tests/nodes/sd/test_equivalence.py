"""Our sampler loop against diffusers' own pipelines on the same tiny SD1 model, scheduler, seed, steps and cfg."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.nodes.sd.prompt import encode_prompt
from latentgraph.nodes.sd.samplers import make_scheduler
from latentgraph.nodes.sd.sampling import sample
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer
from latentgraph.nodes.sd.vae_nodes import encode

from .conftest import TINY
from .sd_helpers import run_context

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT, NEGATIVE = "a lighthouse on a cliff, oil painting", "blurry"
PAIRS = [("euler", "normal"), ("euler_ancestral", "normal"), ("heun", "karras"), ("dpmpp_2m", "karras"),
         ("ddim", "ddim_uniform"), ("uni_pc", "sgm_uniform"), ("lms", "exponential")]


@pytest.fixture(scope="module")
def handles(shared_executor):
    return CheckpointLoaderSimple(ckpt_name=TINY).execute(run_context(shared_executor.env))


def _conditioning(clip, text: str) -> list:
    with clip.use() as encoder:
        return [[encode_prompt(text, encoder, load_clip_tokenizer()), {}]]


def _pipeline(cls, parts, scheduler):
    return cls(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
               scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.mark.parametrize(("sampler", "scheduler"), PAIRS)
def test_txt2img_equals_stable_diffusion_pipeline(handles, tiny_parts, sampler: str, scheduler: str) -> None:
    model, clip, _ = handles
    steps, cfg, seed = 5, 7.5, 123
    ours = sample(model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler_name=scheduler,
                  positive=_conditioning(clip, PROMPT), negative=_conditioning(clip, NEGATIVE),
                  latent={"samples": torch.zeros(1, 4, 8, 8)})["samples"]
    pipe = _pipeline(StableDiffusionPipeline, tiny_parts, make_scheduler(sampler, scheduler, model.scheduler_config))
    theirs = pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=steps,
                  guidance_scale=cfg, generator=torch.Generator().manual_seed(seed), output_type="latent").images
    assert torch.allclose(ours * model.latent_scale, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("sampler", "scheduler"), [("euler", "normal"), ("dpmpp_2m", "karras"), ("ddim", "normal")])
def test_img2img_equals_img2img_pipeline(handles, tiny_parts, sampler: str, scheduler: str) -> None:
    model, clip, vae = handles
    pixels = torch.linspace(0, 1, 64 * 64 * 3).reshape(1, 64, 64, 3)
    init = encode(vae, pixels)
    steps, strength, cfg, seed = 4, 0.5, 6.0, 7
    ours = sample(model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler_name=scheduler,
                  positive=_conditioning(clip, PROMPT), negative=_conditioning(clip, NEGATIVE),
                  latent={"samples": init}, denoise=strength)["samples"]
    pipe = _pipeline(StableDiffusionImg2ImgPipeline, tiny_parts,
                     make_scheduler(sampler, scheduler, model.scheduler_config))
    theirs = pipe(PROMPT, image=init * model.latent_scale, strength=strength, negative_prompt=NEGATIVE,
                  num_inference_steps=int(steps / strength), guidance_scale=cfg,
                  generator=torch.Generator().manual_seed(seed), output_type="latent").images
    assert torch.allclose(ours * model.latent_scale, theirs, atol=1e-4, rtol=1e-4)


def test_cfg_one_skips_the_unconditional_pass(handles) -> None:
    """At cfg 1 the negative prompt has no influence, since its pass is not run."""
    model, clip, _ = handles
    common = dict(seed=3, steps=3, cfg=1.0, sampler_name="euler", scheduler_name="normal",
                  positive=_conditioning(clip, PROMPT), latent={"samples": torch.zeros(1, 4, 8, 8)})
    a = sample(model, negative=_conditioning(clip, "one thing"), **common)["samples"]
    b = sample(model, negative=_conditioning(clip, "something else entirely"), **common)["samples"]
    assert torch.equal(a, b)


def test_v_prediction_txt2img_equals_pipeline(registry, tiny_parts, tmp_path) -> None:
    """A checkpoint marked v-prediction (ComfyUI's `v_pred` key) samples as diffusers does with v_prediction."""
    from latentgraph.engine.executor import Executor
    from latentgraph.nodes import make_environment
    from latentgraph.nodes.sd.checkpoint_save import save_single_file

    save_single_file(tiny_parts.unet, tiny_parts.vae, tiny_parts.text_encoder,
                     tmp_path / "models" / "checkpoints" / "v.safetensors", prediction_type="v_prediction")
    env = Executor(registry, make_environment(tmp_path)).env
    model, clip, _ = CheckpointLoaderSimple(ckpt_name="v.safetensors").execute(run_context(env))
    assert model.prediction_type == "v_prediction"
    ours = sample(model, seed=5, steps=4, cfg=7.0, sampler_name="dpmpp_2m", scheduler_name="karras",
                  positive=_conditioning(clip, PROMPT), negative=_conditioning(clip, NEGATIVE),
                  latent={"samples": torch.zeros(1, 4, 8, 8)})["samples"]
    pipe = _pipeline(StableDiffusionPipeline, tiny_parts, make_scheduler("dpmpp_2m", "karras", model.scheduler_config))
    theirs = pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=4, guidance_scale=7.0,
                  generator=torch.Generator().manual_seed(5), output_type="latent").images
    assert torch.allclose(ours * model.latent_scale, theirs, atol=1e-4, rtol=1e-4)


def test_batch_index_gives_each_image_its_own_noise() -> None:
    """As in ComfyUI: image i of a batch gets the i-th draw of the seed, so one image can be re-made alone."""
    from latentgraph.nodes.sd.sampling import prepare_noise

    whole, _ = prepare_noise(torch.zeros(3, 4, 8, 8), 42)
    picked, _ = prepare_noise(torch.zeros(1, 4, 8, 8), 42, batch_index=[2])
    pair, _ = prepare_noise(torch.zeros(2, 4, 8, 8), 42, batch_index=[2, 0])
    assert torch.equal(picked[0], whole[2])
    assert torch.equal(pair[0], whole[2]) and torch.equal(pair[1], whole[0])
