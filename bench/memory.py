"""Memory: peak RSS of a txt2img run, and RSS over 100 prompts alternating two workflows (no growth past the cache).

Each measurement runs in its own fresh process so that one does not inherit another's heap:
1. peak RSS of `latentgraph run` of the tiny-model txt2img, against the peak of the hand-written diffusers loop over
   the same checkpoint (bench/engine_overhead.py's HandWritten) in a process of its own: the ratio is what the
   engine, its imports and its cache cost in memory;
2. one Executor with a small cache budget runs 100 prompts alternating two workflows, each with a new seed so that
   every prompt adds entries and the cache must evict; RSS is read after every prompt. Target: RSS after prompt 100
   minus RSS after prompt 20 (the heap warmed up) stays within the cache budget.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cold_start import child_env, latentgraph_command
from common import (
    REPO,
    TINY_CKPT,
    make_base_dir,
    median,
    peak_rss_mb,
    quiet_threads,
    report,
    rss_mb,
    sd_nodes_available,
    txt2img,
)

CACHE_BUDGET = 4 * 1024**2
STEPS = 20
SIZE = 64


def peak_of(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Peak RSS in MiB of one child process (from wait4's rusage, so only that child counts) and its stdout."""
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(cmd, env=child_env(), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return usage.ru_maxrss / 1024, text


def child_handwritten(base: Path) -> None:
    """The hand-written diffusers txt2img once, in this fresh process (the memory baseline)."""
    from collections import defaultdict

    import torch
    from engine_overhead import HandWritten

    quiet_threads()
    hand = HandWritten(base / "models" / "checkpoints" / TINY_CKPT, torch.device("cpu"))
    hand(1, STEPS, 7.0, SIZE, SIZE, base / "hand.png", defaultdict(list))


def child_alternate(base: Path, prompts: int) -> None:
    """100 prompts alternating two workflows through one Executor; prints RSS after each as JSON."""
    from latentgraph.engine.executor import Executor
    from latentgraph.nodes import load_registry, make_environment

    quiet_threads()
    executor = Executor(load_registry(), make_environment(base), cache_bytes=CACHE_BUDGET)
    readings = []
    for i in range(prompts):
        if i % 2 == 0:
            prompt = txt2img(positive="a red cat on a sofa", seed=i, steps=4, width=SIZE, height=SIZE, prefix="mem_a")
        else:
            prompt = txt2img(positive="a blue dog in the snow", seed=i, steps=4, width=SIZE, height=SIZE + 32,
                             sampler="dpmpp_2m", scheduler="karras", prefix="mem_b")
        result = executor.run(prompt)
        assert result.status == "success", result.error
        readings.append(rss_mb())
    print(json.dumps({"rss": readings, "peak": peak_rss_mb(), "cache": executor.cache.stats()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per peak measurement")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--child", choices=["handwritten", "alternate"], help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "handwritten":
        child_handwritten(args.base)
        return
    if args.child == "alternate":
        child_alternate(args.base, args.prompts)
        return
    if not sd_nodes_available():
        print("skipped: the SD nodes (KSampler) have not landed yet")
        return

    base = make_base_dir("lg-bench-memory-")
    try:
        workflow = base / "txt2img.json"
        workflow.write_text(json.dumps(txt2img(steps=STEPS, width=SIZE, height=SIZE, prefix="mem")))
        script = str(Path(__file__).resolve())
        engine_peaks, hand_peaks = [], []
        for _ in range(args.repeats):
            engine_peaks.append(peak_of(latentgraph_command() + ["run", str(workflow), "--quiet", "--base-dir",
                                                                 str(base)], base)[0])
            hand_peaks.append(peak_of([sys.executable, script, "--child", "handwritten", "--base", str(base)],
                                      REPO)[0])
        start = time.perf_counter()
        _, text = peak_of([sys.executable, script, "--child", "alternate", "--base", str(base), "--prompts",
                           str(args.prompts)], REPO)
        alternate_seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(base, ignore_errors=True)

    data = json.loads(text.strip().splitlines()[-1])
    rss = data["rss"]
    warm = min(20, len(rss)) - 1
    growth = rss[-1] - rss[warm]
    budget_mb = CACHE_BUDGET / 1024**2
    ratio = median(engine_peaks) / median(hand_peaks)
    print(f"peak RSS, tiny-model txt2img {SIZE}x{SIZE} {STEPS} steps, {args.repeats} fresh processes each, medians")
    print(f"  latentgraph run               {median(engine_peaks):8.1f} MiB  "
          f"(min {min(engine_peaks):.1f}, max {max(engine_peaks):.1f})")
    print(f"  hand-written diffusers loop   {median(hand_peaks):8.1f} MiB  "
          f"(min {min(hand_peaks):.1f}, max {max(hand_peaks):.1f})")
    print(f"  ratio                         {ratio:8.3f}x")
    print(f"{len(rss)} prompts alternating two workflows (new seed each), cache budget {budget_mb:.0f} MiB, "
          f"{alternate_seconds:.0f} s:")
    marks = [i for i in (0, 9, 19, 49, 99) if i < len(rss)]
    print("  RSS after prompt " + ", ".join(f"{i + 1}: {rss[i]:.1f}" for i in marks) + " MiB")
    print(f"  growth from prompt {warm + 1} to {len(rss)}     {growth:8.1f} MiB   (cache now "
          f"{data['cache']['bytes'] / 1024**2:.2f} MiB in {data['cache']['entries']} entries)   target <= "
          f"{budget_mb:.0f} MiB: {'met' if growth <= budget_mb else 'MISSED'}")
    report("peak RSS latentgraph run txt2img", median(engine_peaks), "MiB",
           note=f"{ratio:.2f}x hand-written diffusers ({median(hand_peaks):.0f} MiB)")
    report(f"RSS growth prompts {warm + 1}..{len(rss)} (A/B)", growth, "MiB", f"<= {budget_mb:.0f} MiB (cache budget)",
           note=f"RSS {rss[-1]:.0f} MiB after {len(rss)}")


if __name__ == "__main__":
    main()
