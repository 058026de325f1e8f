"""KSampler and KSamplerAdvanced: denoising with ComfyUI's sampler and scheduler names.

Pairs a diffusers scheduler runs go through the step loop of nodes/sd/sampling.py; ComfyUI's other samplers and
schedules through the sigma loop of nodes/sd/custom_sampling.py (`uses_sigma_loop`)."""

from __future__ import annotations

from typing import Any, Literal

from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Conditioning, Latent, Model
from latentgraph.nodes.sd.custom_sampling import run_ksampler
from latentgraph.nodes.sd.samplers import KSAMPLER_NAMES, KSCHEDULER_NAMES, combination_error, uses_sigma_loop
from latentgraph.nodes.sd.sampling import SamplingRequest, run

SamplerName = Literal[KSAMPLER_NAMES]  # type: ignore[valid-type]
SchedulerName = Literal[KSCHEDULER_NAMES]  # type: ignore[valid-type]


def _check_pair(inputs: dict[str, Any]) -> list[tuple[str, str]]:
    sampler, scheduler = inputs.get("sampler_name"), inputs.get("scheduler")
    if sampler is None or scheduler is None:
        return []
    error = combination_error(sampler, scheduler)
    return [("scheduler", error)] if error else []


def _run(request: SamplingRequest) -> dict[str, Any]:
    return run_ksampler(request) if uses_sigma_loop(request.sampler_name, request.scheduler_name) else run(request)


class KSampler(Node):
    """Denoises a latent image step by step, guided by the positive and negative conditioning."""

    CATEGORY = "sampling"
    RETURN_TYPES = ("LATENT",)

    model: Model
    seed: int = Input(0, ge=0, le=2**64 - 1, control_after_generate=True,
                      tooltip="The random seed used for creating the noise.")
    steps: int = Input(20, ge=1, le=10000, tooltip="The number of steps used in the denoising process.")
    cfg: float = Input(8.0, ge=0.0, le=100.0, step=0.1, round=0.01,
                       tooltip="Classifier-free guidance scale: how closely to follow the prompt.")
    sampler_name: SamplerName = Input("euler")
    scheduler: SchedulerName = Input("normal")
    positive: Conditioning
    negative: Conditioning
    latent_image: Latent
    denoise: float = Input(1.0, ge=0.0, le=1.0, step=0.01,
                           tooltip="How much of the schedule to run; below 1 keeps some of the input latent.")

    @classmethod
    def check(cls, inputs: dict[str, Any], env: Environment) -> list[tuple[str, str]]:
        return _check_pair(inputs)

    def execute(self, ctx: RunContext) -> tuple:
        return (_run(SamplingRequest(
            self.model, seed=self.seed, steps=self.steps, cfg=self.cfg, sampler_name=self.sampler_name,
            scheduler_name=self.scheduler, positive=self.positive, negative=self.negative, latent=self.latent_image,
            denoise=self.denoise, progress=ctx.progress, preview=ctx.preview, check_interrupt=ctx.check_interrupt)),)


class KSamplerAdvanced(Node):
    """KSampler with control over adding noise and the range of steps run, for multi-stage sampling."""

    CATEGORY = "sampling"
    DISPLAY_NAME = "KSampler (Advanced)"
    RETURN_TYPES = ("LATENT",)

    model: Model
    add_noise: Literal["enable", "disable"] = Input("enable")
    noise_seed: int = Input(0, ge=0, le=2**64 - 1, control_after_generate=True)
    steps: int = Input(20, ge=1, le=10000)
    cfg: float = Input(8.0, ge=0.0, le=100.0, step=0.1, round=0.01)
    sampler_name: SamplerName = Input("euler")
    scheduler: SchedulerName = Input("normal")
    positive: Conditioning
    negative: Conditioning
    latent_image: Latent
    start_at_step: int = Input(0, ge=0, le=10000)
    end_at_step: int = Input(10000, ge=0, le=10000)
    return_with_leftover_noise: Literal["disable", "enable"] = Input("disable")

    @classmethod
    def check(cls, inputs: dict[str, Any], env: Environment) -> list[tuple[str, str]]:
        return _check_pair(inputs)

    def execute(self, ctx: RunContext) -> tuple:
        return (_run(SamplingRequest(
            self.model, seed=self.noise_seed, steps=self.steps, cfg=self.cfg, sampler_name=self.sampler_name,
            scheduler_name=self.scheduler, positive=self.positive, negative=self.negative, latent=self.latent_image,
            add_noise=self.add_noise == "enable", start_step=self.start_at_step, end_step=self.end_at_step,
            force_full_denoise=self.return_with_leftover_noise != "enable", progress=ctx.progress,
            preview=ctx.preview, check_interrupt=ctx.check_interrupt)),)
