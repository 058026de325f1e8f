"""KSampler's sigma-loop samplers give the same pixels for the same seed, run after run.

test_sampler_reproducibility.py runs the 16 diffusers samplers; KSampler also accepts ComfyUI's other sampler
names (ipndm, dpmpp_2s_ancestral, res_multistep_ancestral, the _gpu aliases, ...) and runs them, and the diffusers
names paired with linear_quadratic or kl_optimal, on the sigma loop of nodes/sd/custom_sampling.py, whose noise
samplers (Gaussian and Brownian-tree) are seeded from the node's seed. Each name runs in two fresh executors with
the global RNG moved in between and must give identical PNG pixels; with no initial noise, a stochastic sampler's
result must still follow the seed (its step noise is seeded from it) and a deterministic one's must not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from latentgraph.engine.executor import Executor
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd.k_samplers import K_SAMPLER_NAMES
from latentgraph.nodes.sd.samplers import KSAMPLER_NAMES, SAMPLER_NAMES, uses_sigma_loop

from tests.nodes.sd.conftest import TINY, with_checkpoint
from tests.nodes.sd.sd_helpers import output_pixels, txt2img

pytestmark = pytest.mark.usefixtures("one_thread")

# Every KSampler name the sigma loop runs, each on a schedule that sends it there: ComfyUI-only names on karras,
# the diffusers names that the loop also implements on kl_optimal (no diffusers scheduler has it).
LOOP_RUNS = [(name, "karras" if name not in SAMPLER_NAMES else "kl_optimal") for name in K_SAMPLER_NAMES]
# The loop's samplers that draw noise during the steps (ComfyUI's ancestral, SDE, DDPM and LCM samplers).
STOCHASTIC = {"euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
              "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
              "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "res_multistep_ancestral",
              "res_multistep_ancestral_cfg_pp"}


def _workflow(sampler: str, scheduler: str, seed: int, initial_noise: bool) -> dict:
    workflow = txt2img(TINY, seed=seed, steps=3, size=32, sampler=sampler, scheduler=scheduler)
    if not initial_noise:  # KSamplerAdvanced without initial noise: only noise drawn during the steps is random
        inputs = {k: v for k, v in workflow["3"]["inputs"].items() if k not in ("seed", "denoise")}
        inputs.update(noise_seed=seed, add_noise="disable", start_at_step=0, end_at_step=10000,
                      return_with_leftover_noise="disable")
        workflow["3"] = {"class_type": "KSamplerAdvanced", "inputs": inputs}
    return workflow


def _pixels(registry, tiny_file: Path, base: Path, sampler: str, scheduler: str, seed: int,
            initial_noise: bool = True) -> np.ndarray:
    executor = Executor(registry, make_environment(with_checkpoint(base, tiny_file)))
    result = executor.run(_workflow(sampler, scheduler, seed, initial_noise))
    return output_pixels(executor.env, result)[0]


def test_every_loop_name_is_run() -> None:
    """All 35 KSampler names are covered: 16 here or in test_sampler_reproducibility.py, the other 19 only here."""
    assert all(uses_sigma_loop(*run) for run in LOOP_RUNS)
    assert set(KSAMPLER_NAMES) == set(SAMPLER_NAMES) | {name for name, _ in LOOP_RUNS}
    assert len(KSAMPLER_NAMES) == 35 and STOCHASTIC <= set(K_SAMPLER_NAMES)


@pytest.mark.parametrize(("sampler", "scheduler"), LOOP_RUNS)
def test_same_seed_gives_identical_pixels_in_fresh_executors(registry, tiny_file: Path, tmp_path: Path,
                                                             sampler: str, scheduler: str) -> None:
    torch.manual_seed(1)
    first = _pixels(registry, tiny_file, tmp_path / "a", sampler, scheduler, seed=5)
    torch.manual_seed(2)  # unseeded noise would follow the global RNG: move it
    torch.randn(1000)
    second = _pixels(registry, tiny_file, tmp_path / "b", sampler, scheduler, seed=5)
    assert first.shape == second.shape
    assert np.array_equal(first, second), f"{sampler}: max difference {np.abs(first.astype(int) - second).max()}"


@pytest.mark.slow  # 32 x 2 runs, about 100 s on 2 cores
@pytest.mark.parametrize(("sampler", "scheduler"), LOOP_RUNS)
def test_step_noise_follows_the_seed(registry, tiny_file: Path, tmp_path: Path, sampler: str, scheduler: str) -> None:
    first = _pixels(registry, tiny_file, tmp_path / "a", sampler, scheduler, seed=5, initial_noise=False)
    other = _pixels(registry, tiny_file, tmp_path / "c", sampler, scheduler, seed=6, initial_noise=False)
    assert np.array_equal(first, other) == (sampler not in STOCHASTIC)
