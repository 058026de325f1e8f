"""Every sampler gives the same pixels for the same seed, run after run.

KSampler's result is cached as a deterministic function of its inputs, and a PNG's embedded workflow is meant to
re-create the image; both break if any noise a sampler draws is not seeded from the node's seed (DPMSolverSDE's
Brownian tree once drew its entropy from torch's global RNG). Each sampler runs in two fresh executors (fresh
caches, fresh model managers), with the global RNG deliberately moved in between, and the PNG pixels must match
exactly. A different seed must change the pixels, so that a sampler ignoring its noise cannot pass either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from latentgraph.engine.executor import Executor
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd.samplers import SAMPLER_NAMES, supported_schedulers

from tests.nodes.sd.conftest import TINY, with_checkpoint
from tests.nodes.sd.sd_helpers import output_pixels, txt2img

# diffusers' KDPM2 schedulers hand torch tensors to numpy, which warns thousands of times per run.
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")]

# Samplers that draw fresh noise at each step; only these can tell one seed from another beyond the first noise.
STOCHASTIC = {"euler_ancestral", "dpm_2_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm"}


def _pixels(registry, tiny_file: Path, base: Path, sampler: str, seed: int) -> np.ndarray:
    executor = Executor(registry, make_environment(with_checkpoint(base, tiny_file)))
    workflow = txt2img(TINY, seed=seed, steps=3, size=32, sampler=sampler, scheduler=supported_schedulers(sampler)[0])
    result = executor.run(workflow)
    return output_pixels(executor.env, result)[0]


def test_all_sixteen_samplers_are_listed() -> None:
    assert len(SAMPLER_NAMES) == 16


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_same_seed_gives_identical_pixels_in_fresh_executors(registry, tiny_file: Path, tmp_path: Path,
                                                             sampler: str) -> None:
    torch.manual_seed(1)
    first = _pixels(registry, tiny_file, tmp_path / "a", sampler, seed=5)
    torch.manual_seed(2)  # unseeded noise would follow the global RNG: move it
    torch.randn(1000)
    second = _pixels(registry, tiny_file, tmp_path / "b", sampler, seed=5)
    assert first.shape == second.shape
    assert np.array_equal(first, second), f"{sampler}: max difference {np.abs(first.astype(int) - second).max()}"


def _step_noise_only(registry, tiny_file: Path, base: Path, sampler: str, seed: int) -> np.ndarray:
    """Pixels of a KSamplerAdvanced run that adds no initial noise: only noise drawn during the steps is random."""
    executor = Executor(registry, make_environment(with_checkpoint(base, tiny_file)))
    workflow = txt2img(TINY, steps=3, size=32, sampler=sampler, scheduler=supported_schedulers(sampler)[0])
    inputs = {k: v for k, v in workflow["3"]["inputs"].items() if k not in ("seed", "denoise")}
    inputs.update(noise_seed=seed, add_noise="disable", start_at_step=0, end_at_step=10000,
                  return_with_leftover_noise="disable")
    workflow["3"] = {"class_type": "KSamplerAdvanced", "inputs": inputs}
    return output_pixels(executor.env, executor.run(workflow))[0]


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_step_noise_follows_the_seed(registry, tiny_file: Path, tmp_path: Path, sampler: str) -> None:
    """With no initial noise, a stochastic sampler's result still depends on the seed (its step noise is seeded
    from it) and a deterministic one's does not (it draws nothing)."""
    first = _step_noise_only(registry, tiny_file, tmp_path / "a", sampler, seed=5)
    again = _step_noise_only(registry, tiny_file, tmp_path / "b", sampler, seed=5)
    other = _step_noise_only(registry, tiny_file, tmp_path / "c", sampler, seed=6)
    assert np.array_equal(first, again)
    assert np.array_equal(first, other) == (sampler not in STOCHASTIC)
