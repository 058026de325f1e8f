"""Issue 18, item 6: an interrupt takes effect inside a denoiser call, before the next block, not after the step."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from latentgraph.engine.interrupt import Interrupted, InterruptToken
from latentgraph.nodes.sd.interrupt_hooks import blocks, interrupt_checks
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.nodes.sd.sampling import BLOCK_CHECKS_MIN_AREA, SamplingRequest, run
from latentgraph.nodes.sd.text_nodes import CLIPTextEncode

from .conftest import TINY
from .sd_helpers import run_context

pytestmark = pytest.mark.usefixtures("one_thread")


def _unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=32).eval().requires_grad_(False)


def test_the_interrupt_stops_a_forward_between_blocks_and_the_hooks_go_away() -> None:
    unet = _unet()
    ran: list[str] = []
    members = {id(block) for block in blocks(unet)}
    for name, module in unet.named_modules():
        if id(module) in members:
            module.register_forward_hook(lambda m, a, o, name=name: ran.append(name))
    args = (torch.zeros(1, 4, 8, 8), torch.tensor(10), torch.zeros(1, 3, 16))
    with torch.no_grad():
        unet(*args)
    every = len(ran)
    assert every >= 10  # down/up blocks, their resnets and attentions, the transformer blocks inside
    token = InterruptToken()

    def check() -> None:
        if len(ran) >= 5 and not token.is_set():  # another thread's stop arrives during the forward
            token.set()
        token.check()

    ran.clear()
    with interrupt_checks(unet, check, per_block=True), pytest.raises(Interrupted), torch.no_grad():
        unet(*args)
    assert len(ran) == 5  # stopped before the sixth block ran, not after the whole network
    ran.clear()
    with torch.no_grad():
        unet(*args)  # the context removed its hooks: the token, still set, no longer stops anything
    assert len(ran) == every


def _forwards_before_a_stop_at_the_third_check(executor, latent_side: int) -> int:
    """Denoiser calls that finished before a stop raised at the third interrupt check."""
    ctx = run_context(executor.env)
    model, clip, _ = CheckpointLoaderSimple(ckpt_name=TINY).execute(ctx)
    cond = CLIPTextEncode(text="a red house", clip=clip).execute(ctx)[0]
    uncond = CLIPTextEncode(text="blurry", clip=clip).execute(ctx)[0]
    finished: list[int] = []
    calls: list[int] = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted("stop")

    with model.use() as net:
        handle = net.register_forward_hook(lambda m, a, o: finished.append(1))
    try:
        with pytest.raises(Interrupted):
            run(SamplingRequest(model, positive=cond, negative=uncond,
                                latent={"samples": torch.zeros(1, 4, latent_side, latent_side)},
                                seed=1, steps=4, cfg=4.0, sampler_name="euler", scheduler_name="normal",
                                check_interrupt=check))
    finally:
        handle.remove()
    return len(finished)


def test_sampling_stops_inside_the_first_denoiser_call(shared_executor) -> None:
    """Before the hooks, the second check came at the start of step 2, after a whole denoiser call."""
    side = int(BLOCK_CHECKS_MIN_AREA ** 0.5)
    assert _forwards_before_a_stop_at_the_third_check(shared_executor, side) == 0


def test_small_latents_are_checked_between_steps_only(shared_executor) -> None:
    """Below the threshold no block hooks run (their dispatch would cost more than a short step saves)."""
    assert _forwards_before_a_stop_at_the_third_check(shared_executor, 8) == 2
