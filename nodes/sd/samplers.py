"""ComfyUI's sampler and scheduler names, mapped onto diffusers schedulers.

A sampler name picks a diffusers scheduler class (and its solver options); a scheduler name picks how its timesteps
or noise levels are spaced. Not every class can space its steps every way (DDIM has no Karras sigmas, for
example); `supported_schedulers` says which pairs exist, and the sampler nodes refuse the others at validation.

ComfyUI's other sampler names (dpmpp_2s_ancestral, euler_cfg_pp, ipndm, ...) and schedules (linear_quadratic,
kl_optimal) have no diffusers scheduler: KSampler runs those on the sigma loop of nodes/sd/custom_sampling.py (the
samplers of nodes/sd/k_samplers.py over ComfyUI's schedules); `uses_sigma_loop` says which pairs go there.
"""

from __future__ import annotations

import importlib.util
import inspect
from functools import cache
from typing import Any

from latentgraph.nodes.sd.k_samplers import K_SAMPLERS, NOT_IMPLEMENTED

SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
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
    # diffusers' bh1 variant divides by zero when stepping to noise level 0; it ends at the smallest level instead.
    "uni_pc": ("UniPCMultistepScheduler", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
}

# ComfyUI "normal" spaces timesteps evenly from the last to the first; "simple" and "sgm_uniform" step back from
# the last timestep in equal strides; "ddim_uniform" steps forward from 1 in equal strides. Karras, exponential and
# beta spacings span the whole noise range, from the first training timestep's noise level to the last's.
SCHEDULERS: dict[str, dict[str, Any]] = {
    "normal": {"timestep_spacing": "linspace"},
    "karras": {"use_karras_sigmas": True, "timestep_spacing": "linspace"},
    "exponential": {"use_exponential_sigmas": True, "timestep_spacing": "linspace"},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "simple": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading"},
    "beta": {"use_beta_sigmas": True, "timestep_spacing": "linspace"},
}

SAMPLER_NAMES = tuple(SAMPLERS)
SCHEDULER_NAMES = tuple(SCHEDULERS)
# What KSampler accepts: the diffusers names, then ComfyUI's names that only the sigma loop runs.
KSAMPLER_NAMES = SAMPLER_NAMES + tuple(name for name in K_SAMPLERS if name not in SAMPLERS)
KSCHEDULER_NAMES = SCHEDULER_NAMES + ("linear_quadratic", "kl_optimal")
_NEEDS = {"dpmpp_sde": "torchsde", "beta": "scipy"}
# LCM keeps its own timestep grid; it takes the uniform spacings, all of which give that grid.
_ONLY = {"lcm": ("normal", "sgm_uniform", "simple")}


@cache
def _parameters(class_name: str) -> frozenset[str]:
    import diffusers
    return frozenset(inspect.signature(getattr(diffusers, class_name).__init__).parameters)


def _missing_package(name: str) -> str | None:
    package = _NEEDS.get(name)
    return package if package and importlib.util.find_spec(package) is None else None


def supported_schedulers(sampler: str) -> list[str]:
    class_name, _ = SAMPLERS[sampler]
    allowed = _ONLY.get(sampler, SCHEDULER_NAMES)
    return [s for s in allowed
            if all(k in _parameters(class_name) for k in SCHEDULERS[s]) and _missing_package(s) is None]


def diffusers_error(sampler: str, scheduler: str) -> str | None:
    """Why a diffusers scheduler cannot run the pair, or None."""
    if sampler not in SAMPLERS:
        return f"unknown sampler {sampler!r}; known: {', '.join(SAMPLER_NAMES)}"
    if scheduler not in SCHEDULERS:
        return f"unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULER_NAMES)}"
    package = _missing_package(sampler)
    if package:
        return f"sampler {sampler} needs the Python package {package} (pip install {package})"
    supported = supported_schedulers(sampler)
    if scheduler not in supported:
        return (f"scheduler {scheduler} is not supported with sampler {sampler}; "
                f"supported schedulers for {sampler}: {', '.join(ksampler_schedulers(sampler))}")
    return None


def uses_sigma_loop(sampler: str, scheduler: str) -> bool:
    """Whether KSampler runs the pair on the sigma loop: a sampler or schedule no diffusers scheduler has."""
    return sampler not in SAMPLERS or scheduler not in SCHEDULERS


def ksampler_schedulers(sampler: str) -> list[str]:
    """The schedulers KSampler accepts with `sampler`."""
    if sampler not in SAMPLERS:
        return list(KSCHEDULER_NAMES)
    extra = [s for s in KSCHEDULER_NAMES if s not in SCHEDULERS] if sampler in K_SAMPLERS else []
    return supported_schedulers(sampler) + extra


def combination_error(sampler: str, scheduler: str) -> str | None:
    """Why KSampler cannot run a sampler/scheduler pair (at validation), or None."""
    if sampler not in KSAMPLER_NAMES:
        hint = " (ComfyUI has it; latentgraph does not implement it)" if sampler in NOT_IMPLEMENTED else ""
        return f"unknown sampler {sampler!r}{hint}; supported: {', '.join(KSAMPLER_NAMES)}"
    if scheduler not in KSCHEDULER_NAMES:
        return f"unknown scheduler {scheduler!r}; supported: {', '.join(KSCHEDULER_NAMES)}"
    if not uses_sigma_loop(sampler, scheduler):
        return diffusers_error(sampler, scheduler)
    if sampler not in K_SAMPLERS:
        return (f"scheduler {scheduler} is not supported with sampler {sampler}; "
                f"supported schedulers for {sampler}: {', '.join(ksampler_schedulers(sampler))}")
    return None


def make_scheduler(sampler: str, scheduler: str, base_config: dict[str, Any], seed: int | None = None) -> Any:
    """A fresh diffusers scheduler for the pair, on the model's noise schedule (betas, prediction type).

    `seed` seeds noise the scheduler draws on its own: DPMSolverSDE's Brownian tree takes no generator and, left
    unseeded, draws its entropy from torch's global RNG, so the same KSampler seed gave a different image on every
    run (and a cached, supposedly deterministic result that a re-run did not reproduce). Like ComfyUI's
    BrownianTreeNoiseSampler, one tree per call is seeded with the node's seed. Ancestral and SDE schedulers that
    take a generator get the seeded one from the sampling loop instead.
    """
    import diffusers
    error = diffusers_error(sampler, scheduler)
    if error:
        raise ValueError(error)
    class_name, sampler_options = SAMPLERS[sampler]
    params = _parameters(class_name)
    config = {k: v for k, v in base_config.items() if k in params}
    config.update(sampler_options)
    config.update(SCHEDULERS[scheduler])
    if "noise_sampler_seed" in params:
        config["noise_sampler_seed"] = seed
    return getattr(diffusers, class_name)(**config)
