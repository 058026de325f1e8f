"""Every accepted sampler/scheduler pair samples as a diffusers pipeline whose scheduler this test builds by hand.

test_equivalence.py builds the pipeline's scheduler with our own `make_scheduler`, which checks the sampling loop
but not the name mapping. Here the mapping from ComfyUI's names to diffusers classes, solver options and spacings
is written out again, independently, and each of the 99 pairs runs through our `sample()` and through
StableDiffusionPipeline with that hand-made scheduler on the tiny SD1 model: the latents must agree.
"""

from __future__ import annotations

from typing import Any

import diffusers
import pytest
import torch
from diffusers import StableDiffusionPipeline
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.nodes.sd.prompt import encode_prompt
from latentgraph.nodes.sd.samplers import SAMPLER_NAMES, supported_schedulers
from latentgraph.nodes.sd.sampling import sample
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer

from .conftest import TINY
from .sd_helpers import run_context

# diffusers' beta spacings hand torch tensors to numpy, which warns thousands of times per run.
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")]

# ComfyUI sampler name -> (diffusers class, solver options), from each scheduler's documentation.
BY_HAND: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "ddpm": ("DDPMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
}
# ComfyUI scheduler name -> diffusers spacing options.
SPACING: dict[str, dict[str, Any]] = {
    "normal": {"timestep_spacing": "linspace"},
    "karras": {"timestep_spacing": "linspace", "use_karras_sigmas": True},
    "exponential": {"timestep_spacing": "linspace", "use_exponential_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "simple": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading"},
    "beta": {"timestep_spacing": "linspace", "use_beta_sigmas": True},
}
PAIRS = [(sampler, scheduler) for sampler in SAMPLER_NAMES for scheduler in supported_schedulers(sampler)]
PROMPT, NEGATIVE = "a lighthouse on a cliff", "blurry"
STEPS, CFG, SEED = 3, 6.0, 11


def by_hand(sampler: str, scheduler: str, base: dict[str, Any]) -> Any:
    class_name, options = BY_HAND[sampler]
    config = {**base, **options, **SPACING[scheduler]}
    if sampler == "dpmpp_sde":
        config["noise_sampler_seed"] = SEED  # ComfyUI seeds the Brownian tree with the node's seed
    return getattr(diffusers, class_name).from_config(config)


@pytest.fixture(scope="module")
def setup(shared_executor, tiny_parts):
    model, clip, _ = CheckpointLoaderSimple(ckpt_name=TINY).execute(run_context(shared_executor.env))
    with clip.use() as encoder:
        positive = [[encode_prompt(PROMPT, encoder, load_clip_tokenizer()), {}]]
        negative = [[encode_prompt(NEGATIVE, encoder, load_clip_tokenizer()), {}]]
    pipe = StableDiffusionPipeline(vae=tiny_parts.vae, text_encoder=tiny_parts.text_encoder,
                                   tokenizer=tiny_parts.tokenizer, unet=tiny_parts.unet, scheduler=None,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return model, positive, negative, pipe


def test_every_accepted_pair_is_listed() -> None:
    assert len(PAIRS) == 99 and set(BY_HAND) == set(SAMPLER_NAMES)


@pytest.mark.parametrize(("sampler", "scheduler"), PAIRS)
def test_sampling_equals_a_pipeline_with_a_hand_made_scheduler(setup, sampler: str, scheduler: str) -> None:
    model, positive, negative, pipe = setup
    ours = sample(model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name=sampler, scheduler_name=scheduler,
                  positive=positive, negative=negative, latent={"samples": torch.zeros(1, 4, 8, 8)})["samples"]
    pipe.scheduler = by_hand(sampler, scheduler, model.scheduler_config)
    theirs = pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=STEPS,
                  guidance_scale=CFG, generator=torch.Generator().manual_seed(SEED), output_type="latent").images
    assert torch.allclose(ours * model.latent_scale, theirs, atol=1e-4, rtol=1e-4), \
        f"max difference {(ours * model.latent_scale - theirs).abs().max():.2e}"
