"""The one denoising loop: the same previews, progress, masks and leftover-noise hand-over for every noise space.

SD1 (eps on a UNet schedule) and SD3 (flow matching) run through `run(SamplingRequest)`; what they must share is
checked on both, so that a fix made for one space cannot leave the other behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd import sampling
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.nodes.sd.sampling import SamplingRequest, run
from latentgraph.nodes.sd.sd3 import save_sd3_single_file
from latentgraph.nodes.sd.text_nodes import CLIPTextEncode

from .conftest import TINY
from .families_tiny import tiny_sd3
from .sd_helpers import run_context

pytestmark = pytest.mark.usefixtures("one_thread")


def _loaded(env, name: str) -> tuple:
    ctx = run_context(env)
    model, clip, _ = CheckpointLoaderSimple(ckpt_name=name).execute(ctx)
    cond = CLIPTextEncode(text="a red house", clip=clip).execute(ctx)[0]
    uncond = CLIPTextEncode(text="blurry", clip=clip).execute(ctx)[0]
    return model, cond, uncond


@pytest.fixture(scope="module")
def models(shared_executor, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """(model, positive, negative, latent channels) for an eps family (SD1) and a flow family (SD3)."""
    root = tmp_path_factory.mktemp("sd3_loop")
    parts = tiny_sd3(t5=False)
    save_sd3_single_file(parts["transformer"], parts["vae"], {c: parts[c] for c in ("text_encoder", "text_encoder_2")},
                         root / "models" / "checkpoints" / "sd3.safetensors")
    return {"eps": (*_loaded(shared_executor.env, TINY), 4),
            "flow": (*_loaded(make_environment(root), "sd3.safetensors"), 16)}


def _request(models: dict, space: str, **options) -> SamplingRequest:
    model, cond, uncond, channels = models[space]
    latent = options.pop("latent", {"samples": torch.zeros(1, channels, 8, 8)})
    defaults = dict(seed=5, steps=6, cfg=4.0, sampler_name="euler", scheduler_name="normal")
    return SamplingRequest(model, positive=cond, negative=uncond, latent=latent, **{**defaults, **options})


@pytest.mark.parametrize("space", ["eps", "flow"])
def test_previews_are_rate_limited_and_progress_counts_every_step(models, space: str, monkeypatch) -> None:
    """With a long preview interval only the first and the last step send one (the flow loop once sent one on
    every step); progress reports each step."""
    monkeypatch.setattr(sampling, "PREVIEW_INTERVAL", 1e9)
    previews: list = []
    progress: list[tuple[int, int]] = []
    run(_request(models, space, preview=previews.append, progress=lambda v, m: progress.append((v, m))))
    assert len(previews) == 2 and previews[0].size == (8, 8)
    assert progress == [(n, 6) for n in range(1, 7)]


@pytest.mark.parametrize("space", ["eps", "flow"])
def test_interrupt_is_checked_before_every_step(models, space: str) -> None:
    calls: list[int] = []

    class Stop(Exception):
        pass

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    with pytest.raises(Stop):
        run(_request(models, space, check_interrupt=check))
    assert len(calls) == 3


@pytest.mark.parametrize("space", ["eps", "flow"])
def test_leftover_noise_hands_over_to_a_second_sampler(models, space: str) -> None:
    """Steps 0-3 returned with leftover noise, then 3-6 with add_noise disabled, equal the six steps in one pass
    (Euler keeps no history between steps); stopping at step 3 with a full denoise gives another latent."""
    channels = models[space][3]
    latent = {"samples": torch.randn(1, channels, 8, 8, generator=torch.Generator().manual_seed(3))}
    whole = run(_request(models, space, latent=latent))["samples"]
    first = run(_request(models, space, latent=latent, end_step=3, force_full_denoise=False))
    second = run(_request(models, space, latent=first, add_noise=False, start_step=3))["samples"]
    assert torch.allclose(whole, second, atol=1e-4), (whole - second).abs().max()
    early = run(_request(models, space, latent=latent, end_step=3))["samples"]
    assert not torch.allclose(early, first["samples"], atol=1e-3)


def _sigma_at(model, space: str, steps: int, index: int) -> float:
    """The noise level after `index` of `steps` Euler steps, from diffusers' own scheduler for the model."""
    if space == "flow":
        scheduler = FlowMatchEulerDiscreteScheduler(shift=float(model.scheduler_config.get("shift", 3.0)))
    else:
        scheduler = EulerDiscreteScheduler.from_config(model.scheduler_config, timestep_spacing="linspace")
    scheduler.set_timesteps(steps)
    return float(scheduler.sigmas[index])


@pytest.mark.parametrize("space", ["eps", "flow"])
@pytest.mark.parametrize("leftover", [False, True])
def test_noise_mask_keeps_the_outside(models, space: str, leftover: bool) -> None:
    """Outside the mask the input latent comes back: exactly when fully denoised; with leftover noise, plus the
    seed's noise at the stopping step's level (x0 + sigma * noise for eps, (x0 + sigma/(1 - sigma) * noise) for
    flow, in the model's scaled space), computed here from diffusers' schedulers."""
    model, channels = models[space][0], models[space][3]
    start = torch.randn(1, channels, 8, 8, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 1:5] = 1.0
    out = run(_request(models, space, latent={"samples": start, "noise_mask": mask}, end_step=3,
                       force_full_denoise=not leftover))["samples"]
    keep = mask.expand_as(start) == 0
    expected = start
    if leftover:
        noise = torch.randn(start.shape, generator=torch.Generator().manual_seed(5))
        sigma = _sigma_at(model, space, 6, 3)
        level = sigma / (1 - sigma) if space == "flow" else sigma
        expected = start + noise * level / model.latent_scale
    assert torch.allclose(out[keep], expected[keep], atol=1e-4), (out[keep] - expected[keep]).abs().max()
    assert not torch.allclose(out[~keep], expected[~keep], atol=1e-2)


def test_nothing_to_run_returns_the_input(models) -> None:
    latent = {"samples": torch.ones(1, 4, 8, 8), "noise_mask": torch.ones(1, 1, 8, 8)}
    out = run(_request(models, "eps", latent=latent, start_step=5, end_step=3))
    assert out["samples"] is latent["samples"] and out["noise_mask"] is latent["noise_mask"]


def test_request_is_one_object(models, tmp_path: Path) -> None:
    """The nodes describe a run as one SamplingRequest; the keyword helper `sample` builds the same request."""
    request = _request(models, "eps")
    fields = {f: getattr(request, f) for f in ("seed", "steps", "cfg", "sampler_name", "scheduler_name", "positive",
                                               "negative", "latent")}
    assert torch.equal(run(request)["samples"], sampling.sample(request.model, **fields)["samples"])
