"""GPU check: full-size SD1.5- and SDXL-architecture models with random weights, fp16, through the engine and
through the diffusers pipeline in the same process; then what SDPA, channels_last and torch.compile do to a UNet step.

Run by bench/gpu_check.sh on one H100/H200 (10-minute limit; a deadline skips what would not fit and says so). With
--dry-run it runs on the CPU at tiny sizes, fp32, 2 steps, so that every code path is exercised without a GPU.
For each case (model x size): a random-weight model is built from the shipped full-size configs, written as a
single-file checkpoint (what a user's models/checkpoints holds), run through the engine's txt2img graph (KSampler
time from the executor's events) and through StableDiffusionPipeline / StableDiffusionXLPipeline built from the
same modules (Euler, same steps and cfg, output_type="latent"); it/s of each, the ratio, and the peak VRAM of each.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import bench_threads, report, txt2img

STEPS, CFG = 20, 7.0
CASES = [("sd15", 512), ("sdxl", 1024), ("sd15", 1024), ("sdxl", 512)]
TINY_SDXL = {
    "unet": dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 64), down_block_types=(
        "DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=32),
    "text_encoder": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                         projection_dim=32),
    "text_encoder_2": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                           projection_dim=32),
    "vae": dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=32, sample_size=64),
}
TINY_SD15 = {
    "unet": dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 64), down_block_types=(
        "CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32),
    "text_encoder": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1,
                         projection_dim=32),
    "vae": TINY_SDXL["vae"],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else 0.0


def build_random(model: str, tiny: bool, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Random-weight modules of the family's real (or, with `tiny`, a narrow) configuration, built on `device`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from latentgraph.nodes.sd.detect import family_config
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    family = "sd1" if model == "sd15" else "sdxl_base"
    small = (TINY_SD15 if model == "sd15" else TINY_SDXL) if tiny else {}
    parts = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if model == "sdxl" else [])
    built: dict[str, Any] = {}
    torch.manual_seed(0)
    with torch.device(device):
        for part in parts:
            config = {k: v for k, v in family_config(family, part).items() if not k.startswith("_")}
            config.update(small.get(part, {}))
            if part == "unet":
                module = UNet2DConditionModel.from_config(config)
            elif part == "vae":
                module = AutoencoderKL.from_config(config)
            else:
                cls = CLIPTextModelWithProjection if part == "text_encoder_2" else CLIPTextModel
                module = cls(CLIPTextConfig(**config))
            built[part] = module.to(dtype).eval().requires_grad_(False)
    return built


def write_checkpoint(model: str, parts: dict[str, Any], path: Path) -> None:
    if model == "sd15":
        from latentgraph.nodes.sd.checkpoint_save import save_single_file

        save_single_file(parts["unet"], parts["vae"], parts["text_encoder"], path, dtype=torch.float16)
    else:
        from latentgraph.nodes.sd.sdxl import save_sdxl_single_file

        save_sdxl_single_file(parts["unet"], parts["vae"], parts["text_encoder"], parts["text_encoder_2"], path,
                              dtype=torch.float16)


def diffusers_pipeline(model: str, parts: dict[str, Any]) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from latentgraph.nodes.sd.detect import family_config
    from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer

    family = "sd1" if model == "sd15" else "sdxl_base"
    scheduler = EulerDiscreteScheduler.from_config(dict(family_config(family, "scheduler"),
                                                        timestep_spacing="linspace"))
    if model == "sd15":
        return StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                                       tokenizer=load_clip_tokenizer(), unet=parts["unet"], scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return StableDiffusionXLPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                                     text_encoder_2=parts["text_encoder_2"], tokenizer=load_clip_tokenizer(),
                                     tokenizer_2=load_clip_tokenizer("!"), unet=parts["unet"], scheduler=scheduler)


class SamplerClock:
    """Times the KSampler node ("3") from the executor's `executing` events."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.current: str | None = None

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event != "executing":
            return
        now = time.perf_counter()
        if self.current == "3":
            self.end = now
        if data["node"] == "3":
            self.start = now
        self.current = data["node"]

    @property
    def seconds(self) -> float:
        return self.end - self.start


def run_case(model: str, size: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
             scratch: Path) -> dict[str, Any]:
    from latentgraph.engine.executor import Executor
    from latentgraph.nodes import load_registry, make_environment

    t0 = time.perf_counter()
    parts = build_random(model, args.dry_run, device, dtype)
    base = scratch / f"{model}_{size}"
    ckpt = base / "models" / "checkpoints" / f"{model}.safetensors"
    write_checkpoint(model, parts, ckpt)
    prepared = time.perf_counter() - t0

    executor = Executor(load_registry(), make_environment(base))
    pipe = diffusers_pipeline(model, parts)
    pipe.set_progress_bar_config(disable=True)

    def engine_once(seed: int) -> tuple[float, float]:
        clock = SamplerClock()
        executor.cache.clear()
        start = time.perf_counter()
        result = executor.run(txt2img(ckpt=ckpt.name, seed=seed, steps=args.steps, cfg=CFG, width=size, height=size,
                                      prefix=f"gpu_{model}_{size}"), sink=clock)
        total = time.perf_counter() - start
        if result.status != "success":
            raise RuntimeError(json.dumps(result.error, default=str)[:3000])
        return clock.seconds, total

    def pipeline_once(seed: int) -> float:
        generator = torch.Generator("cpu").manual_seed(seed)
        sync(device)
        start = time.perf_counter()
        out = pipe(prompt="a red circle on a blue square", negative_prompt="blurry", num_inference_steps=args.steps,
                   guidance_scale=CFG, width=size, height=size, generator=generator, output_type="latent")
        latents = out.images
        sync(device)
        del latents
        return time.perf_counter() - start

    peak_reset(device)
    engine_once(0)  # warm-up: loads the checkpoint into the model manager, first kernels
    engine_peak = peak_gib(device)
    pipeline_once(0)
    engine_sampler, engine_total, pipe_times = [], [], []
    for seed in range(1, args.repeats + 1):
        sampler_s, total_s = engine_once(seed)
        engine_sampler.append(sampler_s)
        engine_total.append(total_s)
        peak_reset(device)
        pipe_times.append(pipeline_once(seed))
    pipe_peak = peak_gib(device)
    engine_its = args.steps / statistics.median(engine_sampler)
    pipe_its = args.steps / statistics.median(pipe_times)
    executor.free()
    return {"model": model, "size": size, "prepare_s": prepared, "engine_its": engine_its, "pipe_its": pipe_its,
            "engine_total_s": statistics.median(engine_total), "engine_peak_gib": engine_peak,
            "pipe_peak_gib": pipe_peak, "spread": (min(engine_sampler), max(engine_sampler), min(pipe_times),
                                                   max(pipe_times))}


def step_time(unet: torch.nn.Module, x: torch.Tensor, context: torch.Tensor, device: torch.device,
              repeats: int, extra: dict[str, Any]) -> float:
    with torch.no_grad():
        for _ in range(2):
            unet(x, 500, encoder_hidden_states=context, **extra)
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            unet(x, 500, encoder_hidden_states=context, **extra)
            sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def options_effect(args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                   deadline: Callable[[], float]) -> list[tuple[str, float]]:
    """One CFG-batched UNet step of SD1.5 at 512 (tiny at 64 in dry-run) under each option, same process."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    parts = build_random("sd15", args.dry_run, device, dtype)
    unet = parts["unet"]
    side = 8 if args.dry_run else 64
    x = torch.randn(2, 4, side, side, device=device, dtype=dtype)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    rows = []
    unet.set_attn_processor(AttnProcessor2_0())
    rows.append(("SDPA attention (diffusers default)", step_time(unet, x, context, device, args.repeats * 3, {})))
    unet.set_attn_processor(AttnProcessor())
    rows.append(("classic attention (no SDPA)", step_time(unet, x, context, device, args.repeats * 3, {})))
    unet.set_attn_processor(AttnProcessor2_0())
    unet.to(memory_format=torch.channels_last)
    rows.append(("SDPA + channels_last", step_time(unet, x.to(memory_format=torch.channels_last), context, device,
                                                   args.repeats * 3, {})))
    if args.compile and deadline() > 150:
        start = time.perf_counter()
        compiled = torch.compile(unet)
        first = step_time(compiled, x.to(memory_format=torch.channels_last), context, device, 1, {})
        rows.append(("SDPA + channels_last + torch.compile",
                     step_time(compiled, x.to(memory_format=torch.channels_last), context, device,
                               args.repeats * 3, {})))
        rows.append((f"  (torch.compile warm-up took {time.perf_counter() - start:.1f} s)", first))
    elif args.compile:
        rows.append(("torch.compile skipped: too little time left", float("nan")))
    del unet, parts
    gc.collect()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, 64x64, 2 steps: logic check only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds; later cases are skipped past it")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    args = parser.parse_args()
    started = time.perf_counter()

    def left() -> float:
        return args.budget - (time.perf_counter() - started)

    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32
        torch.set_num_threads(bench_threads())
        args.steps = args.steps or 2
        args.compile = False
        cases = [("sd15", 64), ("sdxl", 64)]
        import os

        os.environ.setdefault("LATENTGRAPH_DEVICE", "cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run on a machine without a GPU")
        device, dtype = torch.device("cuda"), torch.float16
        args.steps = args.steps or STEPS
        cases = CASES
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    print(f"device {name}, torch {torch.__version__}, {args.steps} steps, cfg {CFG}, {args.repeats} repeats, "
          f"budget {args.budget:.0f} s", flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="lg-gpu-check-"))
    results = []
    try:
        # the UNet-level options first: they are the cheapest and matter most to the roadmap
        for label, seconds in options_effect(args, device, dtype, left):
            print(f"  UNet step, {label:44s} {seconds * 1e3:9.2f} ms", flush=True)
            if seconds == seconds:
                report(f"UNet step {label.strip()}", seconds * 1e3, "ms")
        for model, size in cases:
            need = 60 if model == "sd15" else 150
            if left() < need:
                print(f"  {model} {size}x{size}: skipped, {left():.0f} s left", flush=True)
                continue
            row = run_case(model, size, args, device, dtype, scratch)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            results.append(row)
            lo_e, hi_e, lo_p, hi_p = row["spread"]
            print(f"  {model} {size}x{size}: engine {row['engine_its']:7.2f} it/s (sampler {lo_e:.3f}..{hi_e:.3f} s), "
                  f"diffusers pipeline {row['pipe_its']:7.2f} it/s ({lo_p:.3f}..{hi_p:.3f} s), "
                  f"engine/pipeline time {row['pipe_its'] / row['engine_its']:.3f}x; peak VRAM engine "
                  f"{row['engine_peak_gib']:.2f} GiB, pipeline {row['pipe_peak_gib']:.2f} GiB; "
                  f"engine total {row['engine_total_s']:.2f} s; setup {row['prepare_s']:.0f} s", flush=True)
            report(f"{model} {size} engine it/s", row["engine_its"], "it/s",
                   note=f"diffusers {row['pipe_its']:.2f} it/s; VRAM {row['engine_peak_gib']:.1f} vs "
                        f"{row['pipe_peak_gib']:.1f} GiB")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
