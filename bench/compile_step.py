"""Compiled vs eager denoiser steps on the full-size SD1.5 UNet architecture (random weights), CPU by default.

Four phases, each in a fresh subprocess so that "first prompt" and "restart" mean what they say:
  cold:    an empty compile cache under a fresh base directory. Times the first compiled step (the compile: on CPU
           the export and the AOTInductor library, nodes/sd/compiled.py), then interleaves per-step timings of the
           compiled UNet, latentgraph's eager step (the same `guided` call the sampling loop makes) and diffusers'
           eager UNet call with the same CFG batch; reports the largest absolute difference of the compiled output
           from eager. Then a resolution change 256 -> 320 and 320 -> 384 with the default `CompileOptions` (on CPU
           a library per size; on CUDA torch's automatic dynamic shapes, one recompile with symbolic sizes, reused
           at 384), the time to the first step of each.
  warm:    a new process on the same base directory: a first prompt (`--steps` Euler steps, timed apart from the
           model build) compiled: on CPU it loads the library the cold phase made (a warm restart compiles nothing).
  eager:   a new process, the same first prompt eager.
  static:  a new process with `dynamic=False` (CUDA: every size compiled on its own, no symbolic shapes; on CPU the
           same as the default): the first step at `--size` (from the cache the cold phase filled), then the first
           step at the first `--resize` size.
Run: OMP_NUM_THREADS=1 python bench/compile_step.py [--size 256] [--steps 8] [--tiny] [--phases ...] [--base DIR]
(--tiny: the test UNet at 64x64, to check the logic; --phases cold, then --phases eager warm static with the same
--base, splits a long run in two). The warm phase times the interleaved steps again, from the restored cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
PHASES = ("cold", "eager", "warm", "static")


def build_unet(tiny: bool) -> torch.nn.Module:
    """The SD1.5 UNet from the shipped full-size config (or the test's tiny one), random weights, fp32, eval."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if tiny:
        from latentgraph.nodes.sd.tiny import build_tiny_pipeline_components

        return build_tiny_pipeline_components(seed=0).unet
    from latentgraph.nodes.sd.detect import family_config

    config = {k: v for k, v in family_config("sd1", "unet").items() if not k.startswith("_")}
    return UNet2DConditionModel.from_config(config).eval().requires_grad_(False)


def inputs(unet: torch.nn.Module, size: int) -> tuple[torch.Tensor, list, list]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, size // 8, size // 8, generator=generator)
    width = unet.config.cross_attention_dim
    positive = [[torch.randn(1, 77, width, generator=generator), {}]]
    negative = [[torch.randn(1, 77, width, generator=generator), {}]]
    return x, positive, negative


def latentgraph_step(net: Any, x: torch.Tensor, t: torch.Tensor, positive: list, negative: list) -> torch.Tensor:
    """One CFG step as the sampling loop makes it (nodes/sd/sampling.py `guided`, SD1's denoiser call)."""
    from latentgraph.nodes.sd.families.sd1 import FAMILY
    from latentgraph.nodes.sd.sampling import guided

    return guided(net, x, t, positive, negative, 7.0, FAMILY.denoise)


def diffusers_step(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, positive: list,
                   negative: list) -> torch.Tensor:
    """The same step as a diffusers user writes it: one batched UNet call, then CFG."""
    context = torch.cat([negative[0][0], positive[0][0]])
    uncond, cond = unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample.chunk(2)
    return uncond + 7.0 * (cond - uncond)


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def counters() -> dict[str, int]:
    from torch._dynamo.utils import counters as torch_counters

    picked = {**{f"inductor.{k}": v for k, v in torch_counters["inductor"].items() if "cache" in k},
              **{f"aot.{k}": v for k, v in torch_counters["aot_autograd"].items() if "cache" in k}}
    return dict(picked)


def first_prompt(unet: torch.nn.Module, net: Any, size: int, steps: int) -> float:
    """Seconds for `steps` Euler steps from noise, the first call included (what a first prompt waits for)."""
    from diffusers import EulerDiscreteScheduler
    from latentgraph.nodes.sd.detect import family_config

    scheduler = EulerDiscreteScheduler.from_config(dict(family_config("sd1", "scheduler"),
                                                        timestep_spacing="linspace"))
    scheduler.set_timesteps(steps)
    x, positive, negative = inputs(unet, size)
    x = x * scheduler.init_noise_sigma
    start = time.perf_counter()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = latentgraph_step(net, scheduler.scale_model_input(x, t), t, positive, negative)
            x = scheduler.step(out, t, x).prev_sample
    return time.perf_counter() - start


def resized(unet: torch.nn.Module, net: Any, size: int, t: torch.Tensor) -> tuple[float, float, float]:
    """(first compiled step, next compiled step, eager step) at a new size."""
    x, positive, negative = inputs(unet, size)
    first, _ = timed(lambda: latentgraph_step(net, x, t, positive, negative))
    second, _ = timed(lambda: latentgraph_step(net, x, t, positive, negative))
    eager, _ = timed(lambda: latentgraph_step(unet, x, t, positive, negative))
    return first, second, eager


def phase(args: argparse.Namespace) -> dict[str, Any]:
    from latentgraph.nodes.sd.compiled import CompileOptions, compiled

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    started = time.perf_counter()
    unet = build_unet(args.tiny)
    built = time.perf_counter() - started
    options = CompileOptions("inductor", dynamic=False if args.phase == "static" else None)
    compiled_net = compiled(unet, options, args.base)
    # the weights are a function of the seed (build_unet), so every phase's process names them alike
    net = compiled_net.bound(f"{'tiny' if args.tiny else 'full-size'} SD1.5 UNet, random, seed 0")
    result: dict[str, Any] = {"build_s": built}
    if args.phase == "static":
        x, positive, negative = inputs(unet, args.size)
        t = torch.tensor(500.0)
        with torch.no_grad():
            result["first_step_s"] = timed(lambda: latentgraph_step(net, x, t, positive, negative))[0]
            result["counters_first_step"] = counters()
            first, second, eager = resized(unet, net, args.resize[0], t)
        result[f"resize_{args.resize[0]}"] = {"first_step_s": first, "next_step_s": second, "eager_step_s": eager}
        result["counters"] = counters()
        result["fell_back"] = compiled_net.failed
        return result
    if args.phase == "eager":
        result["first_prompt_s"] = first_prompt(unet, unet, args.size, args.steps)
        return result
    if args.phase == "warm":
        result["first_prompt_s"] = first_prompt(unet, net, args.size, args.steps)
        result["counters"] = counters()
        result.update(step_rounds(unet, net, args))  # the per-step figures again, on a machine that may be quieter
        result["fell_back"] = compiled_net.failed
        return result
    with torch.no_grad():
        x, positive, negative = inputs(unet, args.size)
        t = torch.tensor(500.0)
        result["compile_s"], _ = timed(lambda: latentgraph_step(net, x, t, positive, negative))
        result["counters_after_compile"] = counters()
        result.update(step_rounds(unet, net, args))
        for size in args.resize:
            first, second, eager = resized(unet, net, size, t)
            result[f"resize_{size}"] = {"first_step_s": first, "next_step_s": second, "eager_step_s": eager}
    result["fell_back"] = compiled_net.failed
    return result


def step_rounds(unet: torch.nn.Module, net: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved per-step timings (compiled, latentgraph eager, diffusers eager) and the outputs' differences."""
    x, positive, negative = inputs(unet, args.size)
    t = torch.tensor(500.0)
    result: dict[str, Any] = {}
    with torch.no_grad():
        out_c = latentgraph_step(net, x, t, positive, negative)
        out_e = latentgraph_step(unet, x, t, positive, negative)
        out_d = diffusers_step(unet, x, t, positive, negative)
        result["max_abs_diff_compiled_eager"] = float((out_c - out_e).abs().max())
        result["max_abs_diff_eager_diffusers"] = float((out_e - out_d).abs().max())
        result["output_abs_max"] = float(out_e.abs().max())
        runs: dict[str, list[float]] = {"compiled": [], "eager": [], "diffusers": []}
        for _ in range(args.rounds):
            runs["compiled"].append(timed(lambda: latentgraph_step(net, x, t, positive, negative))[0])
            runs["eager"].append(timed(lambda: latentgraph_step(unet, x, t, positive, negative))[0])
            runs["diffusers"].append(timed(lambda: diffusers_step(unet, x, t, positive, negative))[0])
    result["steps"] = runs
    return result


def run_phase(name: str, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--base", str(base),
               "--size", str(args.size), "--steps", str(args.steps), "--rounds", str(args.rounds),
               "--resize", *map(str, args.resize)] + (["--tiny"] if args.tiny else [])
    out = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH":
                         os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])})
    line = [x for x in out.stdout.splitlines() if x.startswith("PHASE ")][-1]
    return json.loads(line[len("PHASE "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="Euler steps of the first-prompt phases")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed steps of each kind")
    parser.add_argument("--resize", type=int, nargs="*", default=[320, 384])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny UNet: a logic check")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                        help="phases to run, in this order (later ones need the cache cold filled: same --base)")
    parser.add_argument("--phase", choices=PHASES, default=None, help="(internal) run one phase in this process")
    parser.add_argument("--base", type=Path, default=None,
                        help="base directory of the compile cache, kept afterwards (default: a temporary one)")
    args = parser.parse_args()
    if args.tiny and args.size == 256:
        args.size, args.resize = 64, [80, 96]
    if args.phase is not None:
        print("PHASE " + json.dumps(phase(args)), flush=True)
        return
    base = args.base or Path(tempfile.mkdtemp(prefix="lg-bench-compile-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in args.phases:
            if name == "static" and not args.resize:
                continue
            results[name] = run_phase(name, args, base)
            print(json.dumps({name: results[name]}, indent=1), flush=True)
    finally:
        if args.base is None:
            shutil.rmtree(base, ignore_errors=True)
    summary(args, results)


def summary(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    label = "tiny UNet" if args.tiny else "full-size SD1.5 UNet"
    print(f"\n{label}, {args.size}x{args.size}, CFG batch 2, fp32, {os.environ.get('BENCH_THREADS', '1')} thread(s), "
          f"{args.rounds} interleaved rounds")
    for name in ("cold", "warm"):
        if name not in results:
            continue
        run = results[name]
        med = {k: statistics.median(v) for k, v in run["steps"].items()}
        print(f"  per step ({name} phase): compiled {med['compiled'] * 1e3:.0f} ms, latentgraph eager "
              f"{med['eager'] * 1e3:.0f} ms, diffusers eager {med['diffusers'] * 1e3:.0f} ms; compiled / diffusers "
              f"{med['compiled'] / med['diffusers']:.3f}x (goal <= 0.80), compiled / latentgraph eager "
              f"{med['compiled'] / med['eager']:.3f}x")
        print(f"    max |compiled - eager| {run['max_abs_diff_compiled_eager']:.2e} (outputs up to "
              f"{run['output_abs_max']:.2f}); max |eager - diffusers| {run['max_abs_diff_eager_diffusers']:.2e}")
    if "cold" in results:
        cold = results["cold"]
        print(f"  first compile: {cold['compile_s']:.1f} s (first compiled step; counters "
              f"{cold['counters_after_compile']})")
        for size in args.resize:
            r = cold[f"resize_{size}"]
            print(f"  resolution change to {size} (default options: on CPU a library per size): first step "
                  f"{r['first_step_s']:.1f} s, next {r['next_step_s']:.2f} s, eager step {r['eager_step_s']:.2f} s")
    if "warm" in results and "eager" in results:
        warm, eager = results["warm"], results["eager"]
        ratio = warm["first_prompt_s"] / eager["first_prompt_s"]
        print(f"  first prompt ({args.steps} steps) in a fresh process: warm compile cache "
              f"{warm['first_prompt_s']:.1f} s, eager {eager['first_prompt_s']:.1f} s, ratio {ratio:.2f}x "
              f"(goal <= 1.2); with the model build ({warm['build_s']:.1f} s, {eager['build_s']:.1f} s) "
              f"{(warm['first_prompt_s'] + warm['build_s']) / (eager['first_prompt_s'] + eager['build_s']):.2f}x; "
              f"warm process cache counters {warm['counters']}")
    if "static" in results:
        static = results["static"]
        r = static[f"resize_{args.resize[0]}"]
        print(f"  resolution change {args.size} -> {args.resize[0]} with dynamic=False (static graphs): first step "
              f"{r['first_step_s']:.1f} s, next {r['next_step_s']:.2f} s, eager step {r['eager_step_s']:.2f} s "
              f"(first step at {args.size} in that process {static['first_step_s']:.1f} s; counters "
              f"{static['counters']})")


if __name__ == "__main__":
    main()
