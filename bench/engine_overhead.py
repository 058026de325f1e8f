"""What the engine adds to a txt2img: the same computation through the executor and hand-written on diffusers.

The engine runs ComfyUI's default txt2img graph (CheckpointLoaderSimple, two CLIPTextEncode, EmptyLatentImage,
KSampler euler/normal, VAEDecode, SaveImage) with its cache cleared before each run, so every node executes; the
model weights stay loaded in the model manager, as they would in a server. The baseline, in the same process, is the
loop a diffusers user writes by hand over the same components and weights (loaded from the same checkpoint file):
tokenize and encode both prompts, draw the noise, 20 Euler steps with classifier-free guidance in one batched UNet
call, decode, write the PNG. Engine and baseline alternate, repetition by repetition, so that the machine's noise
falls on both alike; the images are compared as a check that the two did the same work.
Target: engine / hand-written <= 1.03.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    TINY_CKPT,
    make_base_dir,
    median,
    ms,
    quiet_threads,
    report,
    sd_nodes_available,
    txt2img,
)
from PIL import Image

POSITIVE = "a red circle on a blue square, detailed"
NEGATIVE = "blurry"


class HandWritten:
    """txt2img written directly against diffusers components, the way the diffusers docs teach it."""

    def __init__(self, checkpoint: Path, device: torch.device) -> None:
        from diffusers import EulerDiscreteScheduler
        from latentgraph.nodes.sd.families import inspect_checkpoint, load_component
        from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer

        info = inspect_checkpoint(checkpoint)
        self.device = device
        self.unet = load_component(info, "unet").to(device)
        self.vae = load_component(info, "vae").to(device)
        self.text_encoder = load_component(info, "text_encoder").to(device)
        self.tokenizer = load_clip_tokenizer()
        self.scheduler_config = dict(info.configs["scheduler"], timestep_spacing="linspace")
        self.scheduler_cls = EulerDiscreteScheduler
        self.scale = self.vae.config.scaling_factor

    @torch.no_grad()
    def encode(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids).last_hidden_state

    @torch.no_grad()
    def __call__(self, seed: int, steps: int, cfg: float, width: int, height: int, out: Path,
                 stages: dict[str, list[float]]) -> np.ndarray:
        start = time.perf_counter()
        context = torch.cat([self.encode(NEGATIVE), self.encode(POSITIVE)])
        encoded = time.perf_counter()
        scheduler = self.scheduler_cls.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps, device=self.device)
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn((1, 4, height // 8, width // 8), generator=generator)
        latents = noise.to(self.device) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            uncond, cond = self.unet(model_in, t, encoder_hidden_states=context).sample.chunk(2)
            latents = scheduler.step(uncond + cfg * (cond - uncond), t, latents).prev_sample
        sampled = time.perf_counter()
        image = self.vae.decode(latents / self.scale).sample
        # Truncated to 8 bits, as ComfyUI's SaveImage (and ours) quantise.
        pixels = ((image[0].float().cpu().permute(1, 2, 0) / 2 + 0.5).clamp(0, 1) * 255).floor()
        array = pixels.to(torch.uint8).numpy()
        Image.fromarray(array).save(out, compress_level=4)
        done = time.perf_counter()
        stages["encode"].append(encoded - start)
        stages["sample"].append(sampled - encoded)
        stages["decode+save"].append(done - sampled)
        return array


STAGE_OF_NODE = {"6": "encode", "7": "encode", "3": "sample", "8": "decode+save", "9": "decode+save"}


class NodeClock:
    """A sink that times each node from its `executing` event to the next one."""

    def __init__(self) -> None:
        self.marks: list[tuple[str | None, float]] = []

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "executing":
            self.marks.append((data["node"], time.perf_counter()))

    def stages(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for (node, start), (_, end) in zip(self.marks, self.marks[1:]):
            totals[STAGE_OF_NODE.get(node or "", "other nodes")] += end - start
        return totals


def engine_image(result: Any, base: Path) -> np.ndarray:
    saved = result.outputs["9"]["images"][0]
    return np.asarray(Image.open(base / "output" / saved["subfolder"] / saved["filename"]).convert("RGB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="image width and height")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint file to use instead of the tiny model (e.g. a full-size SD1.5 file)")
    args = parser.parse_args()
    if not sd_nodes_available():
        print("skipped: the SD nodes (KSampler) have not landed yet")
        return
    quiet_threads()

    from latentgraph.engine.executor import Executor
    from latentgraph.nodes import load_registry, make_environment
    from latentgraph.nodes.sd.handles import model_manager

    base = make_base_dir("lg-bench-overhead-")
    ckpt_name = TINY_CKPT
    if args.checkpoint is not None:
        ckpt_name = args.checkpoint.name
        (base / "models" / "checkpoints" / ckpt_name).symlink_to(args.checkpoint.resolve())
    scratch = Path(tempfile.mkdtemp(prefix="lg-bench-hand-"))
    try:
        executor = Executor(load_registry(), make_environment(base))
        device = model_manager(executor.env).device

        def workflow(seed: int) -> dict[str, Any]:
            return txt2img(ckpt=ckpt_name, positive=POSITIVE, negative=NEGATIVE, seed=seed, steps=args.steps,
                           cfg=args.cfg, width=args.size, height=args.size, prefix=f"overhead_{seed}")

        hand = HandWritten(base / "models" / "checkpoints" / ckpt_name, device)
        executor.run(workflow(0))  # warm-up: weights into the model manager, first-call allocations
        hand_stages: dict[str, list[float]] = defaultdict(list)
        engine_stages: dict[str, list[float]] = defaultdict(list)
        hand(0, args.steps, args.cfg, args.size, args.size, scratch / "warm.png", defaultdict(list))

        engine_times, hand_times, diffs = [], [], []
        nodes_run = 0
        for repeat in range(1, args.repeats + 1):
            executor.cache.clear()
            first = repeat % 2 == 0  # alternate which goes first, so drift in the machine's load cancels
            for turn in ((True, False) if first else (False, True)):
                if turn:
                    clock = NodeClock()
                    start = time.perf_counter()
                    result = executor.run(workflow(repeat), sink=clock)
                    engine_times.append(time.perf_counter() - start)
                    within = clock.stages()
                    for stage, value in within.items():
                        engine_stages[stage].append(value)
                    engine_stages["executor (outside nodes)"].append(engine_times[-1] - sum(within.values()))
                    assert result.status == "success", result.error
                    nodes_run = len(result.executed)
                else:
                    start = time.perf_counter()
                    array = hand(repeat, args.steps, args.cfg, args.size, args.size, scratch / f"{repeat}.png",
                                 hand_stages)
                    hand_times.append(time.perf_counter() - start)
            diffs.append(int(np.abs(engine_image(result, base).astype(int) - array.astype(int)).max()))
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)

    ratios = [e / h for e, h in zip(engine_times, hand_times)]
    per_node_us = [(e - h) / nodes_run * 1e6 for e, h in zip(engine_times, hand_times)]
    ratio = median(engine_times) / median(hand_times)
    print(f"txt2img {args.size}x{args.size}, {args.steps} steps euler/normal, cfg {args.cfg}, "
          f"{'tiny model' if args.checkpoint is None else args.checkpoint.name}, device {device}, "
          f"{args.repeats} alternating repeats")
    print(f"  hand-written diffusers loop   {ms(hand_times)}")
    print(f"  engine ({nodes_run} nodes executed)   {ms(engine_times)}")
    verdict = "met" if ratio <= 1.03 else "MISSED"
    print(f"  ratio of medians engine / hand-written {ratio:7.3f}x   target <= 1.03: {verdict}")
    print(f"    paired per-repeat ratios: median {median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}; "
          f"ratio of the fastest runs {min(engine_times) / min(hand_times):.3f}")
    print(f"  overhead per node             {median(per_node_us):9.0f} us   "
          f"(min {min(per_node_us):.0f}, max {max(per_node_us):.0f})")
    print(f"  per step: engine {median(engine_times) / args.steps * 1e3:.2f} ms, "
          f"hand-written {median(hand_times) / args.steps * 1e3:.2f} ms")
    print("  stage by stage (medians):           engine    hand-written")
    for stage in ("encode", "sample", "decode+save", "other nodes", "executor (outside nodes)"):
        engine_value = median(engine_stages[stage]) if engine_stages[stage] else 0.0
        hand_value = median(hand_stages[stage]) if hand_stages[stage] else 0.0
        print(f"    {stage:28s} {engine_value * 1e3:9.2f} ms {hand_value * 1e3:9.2f} ms")
    print(f"  largest pixel difference engine vs hand-written: {max(diffs)} / 255"
          + ("" if max(diffs) <= 2 else "   (the two did not compute the same image: check the comparison)"))
    report("engine/hand-written txt2img ratio", ratio, "x", "<= 1.03",
           note=f"{args.size}px {args.steps} steps; {median(per_node_us):.0f} us/node; max pixel diff {max(diffs)}")


if __name__ == "__main__":
    main()
