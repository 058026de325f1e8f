"""GPU check: full-size SD1.5- and SDXL-architecture models with random weights, fp16 (or bf16), eager vs compiled
(nodes/sd/compiled.py, what `--compile` runs) vs diffusers, in one process; then the VAE decode in fp16/bf16/fp32 and
what SDPA and channels_last do to a UNet step.

Run by bench/gpu_check.sh on one H100/H200 (10-minute limit; a deadline skips what would not fit and says so, most
important first: SD1.5 512x512, then SDXL 1024x1024, then the rest). With --dry-run it runs on the CPU at tiny
sizes, fp32, 2 steps, so that every code path is exercised without a GPU (compiling too with --dry-run --compile).
For each case (model x size), from random weights built on the device:
  step:   one CFG step (batch 2) as the sampling loop makes it (`guided`), eager and through the compiled net, and
          the same step as a diffusers user writes it (one batched UNet call); the first compiled call (the compile,
          its cache under the case's base directory), medians of interleaved rounds, max |compiled - eager|.
  engine: the weights written as a single-file checkpoint (what a user's models/checkpoints holds) and run through
          the engine's txt2img graph, eager and with the environment's default compile (`--compile`), interleaved
          with StableDiffusionPipeline / StableDiffusionXLPipeline built from the same modules (Euler, same steps and
          cfg, output_type="latent"); sampler it/s of each, the first compiled prompt (the step phase's compile cache
          is warm by then: what a restart pays), and peak VRAM.
"""

from __future__ import annotations

import argparse
import copy
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


def step_inputs(model: str, unet: torch.nn.Module, size: int, device: torch.device) -> tuple[Any, ...]:
    """A latent and positive/negative conditioning of the shapes the sampling loop gives this model."""
    generator = torch.Generator("cpu").manual_seed(1)
    x = torch.randn(1, 4, size // 8, size // 8, generator=generator).to(device)
    width = unet.config.cross_attention_dim

    def entry() -> list:
        context = torch.randn(1, 77, width, generator=generator).to(device)
        if model == "sd15":
            return [[context, {}]]
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        return [[context, {"pooled_output": torch.randn(1, pooled, generator=generator).to(device)}]]

    return x, entry(), entry()


def engine_step(model: str) -> Callable[..., torch.Tensor]:
    """One CFG step as the sampling loop makes it (nodes/sd/sampling.py `guided` with the family's denoiser)."""
    from latentgraph.nodes.sd.families.sd1 import FAMILY as SD1
    from latentgraph.nodes.sd.families.sdxl import FAMILY as SDXL
    from latentgraph.nodes.sd.sampling import guided

    family = SD1 if model == "sd15" else SDXL

    def step(net: Any, x: torch.Tensor, t: torch.Tensor, positive: list, negative: list) -> torch.Tensor:
        return guided(net, x, t, positive, negative, CFG, family.denoise)

    return step


def diffusers_step(model: str, size: int) -> Callable[..., torch.Tensor]:
    """The same step as a diffusers pipeline makes it: one batched UNet call in the model's dtype, then CFG."""

    def step(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, positive: list,
             negative: list) -> torch.Tensor:
        dtype = unet.dtype
        context = torch.cat([negative[0][0], positive[0][0]]).to(dtype)
        extra: dict[str, Any] = {}
        if model == "sdxl":
            pooled = torch.cat([negative[0][1]["pooled_output"], positive[0][1]["pooled_output"]]).to(dtype)
            ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, device=x.device, dtype=dtype)
            extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": ids}
        uncond, cond = unet(torch.cat([x, x]).to(dtype), t, encoder_hidden_states=context, **extra).sample.chunk(2)
        return (uncond + CFG * (cond - uncond)).float()

    return step


def step_phase(model: str, size: int, unet: torch.nn.Module, args: argparse.Namespace, device: torch.device,
               base: Path, left: Callable[[], float]) -> dict[str, Any]:
    """Per-step eager vs compiled vs diffusers on the built UNet; compiles into `base`'s compile cache."""
    from latentgraph.nodes.sd.compiled import CompileOptions, compiled

    x, positive, negative = step_inputs(model, unet, size, device)
    t = torch.tensor(500.0, device=device)
    ours, theirs = engine_step(model), diffusers_step(model, size)

    def clocked(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        return time.perf_counter() - start, out

    result: dict[str, Any] = {}
    backends = [b for b in args.backends if b == "inductor" or device.type == "cuda"]
    nets = {}
    with torch.no_grad():
        eager_out = ours(unet, x, t, positive, negative)
        result["max_abs_eager_diffusers"] = float((eager_out - theirs(unet, x, t, positive, negative)).abs().max())
        result["output_abs_max"] = float(eager_out.abs().max())
        for index, backend in enumerate(backends if args.compile else []):
            # the first backend may use what the engine phase needs not; later ones leave it its time
            need = (200 if model == "sdxl" else 100) + (150 if index else 0)
            if left() < need:
                result[f"{backend}_skipped"] = f"{left():.0f} s left, {need} s needed"
                continue
            compiled_net = compiled(unet, CompileOptions(backend), base)
            net = compiled_net.bound(f"{model} random weights")
            result[f"{backend}_compile_s"], out = clocked(lambda n=net: ours(n, x, t, positive, negative))
            if compiled_net.failed:
                result[f"{backend}_skipped"] = "compile failed, fell back to eager (see the warning above)"
                continue
            result[f"{backend}_max_abs_diff"] = float((out - eager_out).abs().max())
            nets[backend] = net
        for warm in [lambda: ours(unet, x, t, positive, negative), lambda: theirs(unet, x, t, positive, negative),
                     *[lambda n=n: ours(n, x, t, positive, negative) for n in nets.values()]]:
            clocked(warm)
        runs: dict[str, list[float]] = {"eager": [], "diffusers": [], **{b: [] for b in nets}}
        for _ in range(args.repeats * 3):
            runs["eager"].append(clocked(lambda: ours(unet, x, t, positive, negative))[0])
            runs["diffusers"].append(clocked(lambda: theirs(unet, x, t, positive, negative))[0])
            for backend, net in nets.items():
                runs[backend].append(clocked(lambda n=net: ours(n, x, t, positive, negative))[0])
    result["step_s"] = {k: statistics.median(v) for k, v in runs.items()}
    return result


def run_case(model: str, size: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
             scratch: Path, left: Callable[[], float]) -> dict[str, Any]:
    from latentgraph.engine.executor import Executor
    from latentgraph.nodes import load_registry, make_environment
    from latentgraph.nodes.sd.compiled import CompileOptions, set_default_compile

    t0 = time.perf_counter()
    parts = build_random(model, args.dry_run, device, dtype)
    base = scratch / f"{model}_{size}"
    prepared = time.perf_counter() - t0
    row: dict[str, Any] = {"model": model, "size": size, "prepare_s": prepared}
    row["step"] = step_phase(model, size, parts["unet"], args, device, base, left)
    print_step(model, size, row["step"])
    if left() < (60 if model == "sd15" else 120):
        row["engine_skipped"] = f"{left():.0f} s left"
        print(f"  {model} {size}x{size} engine: skipped, {row['engine_skipped']}", flush=True)
        return row
    ckpt = base / "models" / "checkpoints" / f"{model}.safetensors"
    write_checkpoint(model, parts, ckpt)

    executor = Executor(load_registry(), make_environment(base))
    pipe = diffusers_pipeline(model, parts)
    pipe.set_progress_bar_config(disable=True)
    inductor = CompileOptions("inductor")
    compile_engine = args.compile and "inductor_compile_s" in row["step"]

    def engine_once(seed: int, compiled: bool) -> tuple[float, float]:
        set_default_compile(executor.env, inductor if compiled else None)
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
    row["engine_first_s"] = engine_once(0, False)[1]  # loads the checkpoint into the model manager, first kernels
    row["engine_peak_gib"] = peak_gib(device)
    pipeline_once(0)
    if compile_engine:
        from torch._dynamo.utils import counters

        before = dict(counters["inductor"])
        row["engine_first_compiled_s"] = engine_once(0, True)[1]
        row["engine_compile_counters"] = {k: v - before.get(k, 0) for k, v in counters["inductor"].items()
                                          if "fxgraph_cache" in k}
    times: dict[str, list[float]] = {"engine": [], "compiled": [], "pipeline": []}
    for seed in range(1, args.repeats + 1):
        times["engine"].append(engine_once(seed, False)[0])
        if compile_engine:
            times["compiled"].append(engine_once(seed, True)[0])
        peak_reset(device)
        times["pipeline"].append(pipeline_once(seed))
    row["pipe_peak_gib"] = peak_gib(device)
    row["its"] = {k: args.steps / statistics.median(v) for k, v in times.items() if v}
    row["spread"] = {k: (min(v), max(v)) for k, v in times.items() if v}
    executor.free()
    print_engine(model, size, row)
    return row


def vae_decode_phase(args: argparse.Namespace, device: torch.device) -> list[tuple[str, float, str]]:
    """SDXL's VAE decoding a 1024x1024 latent (64x64 in dry-run) in fp16, bf16 and fp32: time and overflow."""
    parts = build_random("sdxl", args.dry_run, device, torch.float32)
    side = 8 if args.dry_run else 128
    latent = torch.randn(1, 4, side, side, generator=torch.Generator("cpu").manual_seed(2)).to(device) * 4
    rows = []
    reference = None
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    with torch.no_grad():
        for dtype in dtypes:
            vae = copy.deepcopy(parts["vae"]).to(dtype)  # each dtype rounded from the fp32 weights
            vae.decode(latent.to(dtype))  # warm-up: cuDNN picks its kernels
            sync(device)
            start = time.perf_counter()
            image = vae.decode(latent.to(dtype)).sample.float()
            sync(device)
            seconds = time.perf_counter() - start
            if reference is None:
                reference = image
            finite = bool(torch.isfinite(image).all())
            note = "finite" if finite else "NON-FINITE (overflow)"
            if finite and dtype != torch.float32:
                note += f", max |x - fp32| {float((image - reference).abs().max()):.3g}"
            rows.append((str(dtype).removeprefix("torch."), seconds, note))
            del vae
    del parts
    gc.collect()
    return rows


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


def options_effect(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[tuple[str, float]]:
    """One CFG-batched UNet step of SD1.5 at 512 (tiny at 64 in dry-run) under each option, same process
    (torch.compile is measured by the step phase, through what `--compile` runs)."""
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
    del unet, parts
    gc.collect()
    return rows


def print_step(model: str, size: int, step: dict[str, Any]) -> None:
    med = step["step_s"]
    parts = [f"{name} {seconds * 1e3:.2f} ms" for name, seconds in med.items()]
    print(f"  {model} {size}x{size} CFG step (batch 2): " + ", ".join(parts), flush=True)
    for backend in ("inductor", "cudagraphs"):
        if backend in med:
            ratio = med[backend] / med["diffusers"]
            print(f"    {backend}: {ratio:.3f}x diffusers, {med[backend] / med['eager']:.3f}x eager; "
                  f"first call (compile) {step[f'{backend}_compile_s']:.1f} s; max |compiled - eager| "
                  f"{step[f'{backend}_max_abs_diff']:.3g} (outputs up to {step['output_abs_max']:.3g})", flush=True)
            report(f"{model} {size} {backend} step / diffusers", ratio, "x",
                   target="<= 0.80", note=f"compile {step[f'{backend}_compile_s']:.0f} s")
        if f"{backend}_skipped" in step:
            print(f"    {backend}: skipped ({step[f'{backend}_skipped']})", flush=True)
    print(f"    eager {med['eager'] / med['diffusers']:.3f}x diffusers; max |eager - diffusers| "
          f"{step['max_abs_eager_diffusers']:.3g}", flush=True)


def print_engine(model: str, size: int, row: dict[str, Any]) -> None:
    its = row["its"]
    spread = ", ".join(f"{k} {lo:.3f}..{hi:.3f} s" for k, (lo, hi) in row["spread"].items())
    print(f"  {model} {size}x{size} txt2img sampler: engine eager {its['engine']:.2f} it/s"
          + (f", engine --compile {its['compiled']:.2f} it/s" if "compiled" in its else "")
          + f", diffusers pipeline {its['pipeline']:.2f} it/s ({spread}); peak VRAM engine "
          f"{row['engine_peak_gib']:.2f} GiB, pipeline {row['pipe_peak_gib']:.2f} GiB; first prompt eager "
          f"{row['engine_first_s']:.1f} s" + (f", first compiled prompt {row['engine_first_compiled_s']:.1f} s "
                                              f"(inductor cache {row['engine_compile_counters']})"
                                              if "engine_first_compiled_s" in row else "")
          + f"; setup {row['prepare_s']:.0f} s", flush=True)
    report(f"{model} {size} engine it/s", its["engine"], "it/s", note=f"diffusers {its['pipeline']:.2f} it/s")
    if "compiled" in its:
        report(f"{model} {size} engine --compile it/s", its["compiled"], "it/s",
               note=f"{its['pipeline'] / its['compiled']:.3f}x diffusers' time")


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, 64x64, 2 steps: logic check only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds; later cases are skipped past it")
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16",
                        help="denoiser dtype on the GPU (the engine keeps its VAE in bf16 either way; fp16, bf16 and "
                             "fp32 VAE decodes are timed separately)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="measure compiled steps (default: on with a GPU, off in --dry-run)")
    parser.add_argument("--backends", nargs="+", choices=["inductor", "cudagraphs"], default=["inductor", "cudagraphs"],
                        help="compile backends of the step phase (cudagraphs: CUDA only; the engine runs inductor)")
    args = parser.parse_args()
    started = time.perf_counter()

    def left() -> float:
        return args.budget - (time.perf_counter() - started)

    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32
        torch.set_num_threads(bench_threads())
        args.steps = args.steps or 2
        args.compile = bool(args.compile)
        cases = [("sd15", 64), ("sdxl", 64)]
        os.environ.setdefault("LATENTGRAPH_DEVICE", "cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run on a machine without a GPU")
        device, dtype = torch.device("cuda"), {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
        if args.dtype == "bf16":
            os.environ["LATENTGRAPH_DTYPE"] = "bf16"  # the engine's weights too (its default on CUDA is fp16)
        args.steps = args.steps or STEPS
        args.compile = args.compile is not False
        cases = CASES
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    print(f"device {name}, torch {torch.__version__}, {str(dtype).removeprefix('torch.')}, {args.steps} steps, "
          f"cfg {CFG}, {args.repeats} repeats, compile {args.compile}, budget {args.budget:.0f} s", flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="lg-gpu-check-"))
    try:
        # most important first: the two headline cases (step phase, then the engine), then the cheap extras, then
        # the other sizes eager vs diffusers only
        for model, size in cases[:2]:
            run_if_time(model, size, 60 if model == "sd15" else 150, args, device, dtype, scratch, left)
        extras(args, device, dtype, left)
        args.compile = False
        for model, size in cases[2:]:
            run_if_time(model, size, 90 if model == "sd15" else 200, args, device, dtype, scratch, left)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"done in {time.perf_counter() - started:.0f} s")


def run_if_time(model: str, size: int, need: float, args: argparse.Namespace, device: torch.device,
                dtype: torch.dtype, scratch: Path, left: Callable[[], float]) -> None:
    if left() < need:
        print(f"  {model} {size}x{size}: skipped, {left():.0f} s left", flush=True)
        return
    run_case(model, size, args, device, dtype, scratch, left)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def extras(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, left: Callable[[], float]) -> None:
    """The VAE decode dtypes and the UNet-level options, when time is left after the headline cases."""
    if left() < 40:
        print(f"  VAE decode and UNet options: skipped, {left():.0f} s left", flush=True)
        return
    for label, seconds, note in vae_decode_phase(args, device):
        print(f"  VAE decode {'64' if args.dry_run else '1024'}px, {label:8s} {seconds * 1e3:9.2f} ms  {note}",
              flush=True)
        report(f"VAE decode {label}", seconds * 1e3, "ms", note=note)
    for label, seconds in options_effect(args, device, dtype):
        print(f"  UNet step, {label:44s} {seconds * 1e3:9.2f} ms", flush=True)
        report(f"UNet step {label.strip()}", seconds * 1e3, "ms")


if __name__ == "__main__":
    main()
