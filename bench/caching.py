"""The content-addressed cache at work, on the tiny-model txt2img through one Executor (as a server holds it).

(a) re-queue an unchanged workflow: how many nodes execute (must be 0) and the latency, against the first run;
(b) change only the seed: which nodes run, and the run's time against the time of those nodes' own work
    (sampler, decode and save, timed from the executor's events in the same run);
(c) alternate two different workflows that share a checkpoint, A,B,A,B,...: checkpoint loads (target: 1 in all) and
    text encodes (target: each distinct prompt text once), and the time per prompt after the first round against
    the first round. ComfyUI keeps one result per node, so there every switch recomputes text encoding, sampling
    and decoding; here a key names a result by what it was computed from, so going back is a cache hit.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import make_base_dir, median, ms, quiet_threads, report, sd_nodes_available, txt2img
from engine_overhead import NodeClock

NEGATIVE = "blurry, low quality"


def workflow_a(seed: int = 1) -> dict[str, Any]:
    return txt2img(positive="a red cat on a sofa", negative=NEGATIVE, seed=seed, steps=20, width=64, height=64,
                   prefix="cache_a")


def workflow_b() -> dict[str, Any]:
    return txt2img(positive="a blue dog in the snow", negative=NEGATIVE, seed=7, steps=12, width=64, height=96,
                   sampler="dpmpp_2m", scheduler="karras", prefix="cache_b")


def add_model_files(base: Path, count: int) -> None:
    """Empty stand-ins for a large model collection (never loaded: only listed), 100 per subfolder."""
    for i in range(count):
        folder = base / "models" / "checkpoints" / f"collection{i // 100:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"model{i:05d}.safetensors").touch()


def remove_model_files(base: Path) -> None:
    for folder in (base / "models" / "checkpoints").glob("collection*"):
        shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="re-queues in (a)")
    parser.add_argument("--seeds", type=int, default=5, help="seed changes in (b)")
    parser.add_argument("--rounds", type=int, default=5, help="A,B rounds in (c)")
    parser.add_argument("--model-files", type=int, default=2000,
                        help="files added to models/checkpoints to time (a) again with a large collection (0: skip)")
    args = parser.parse_args()
    if not sd_nodes_available():
        print("skipped: the SD nodes (KSampler) have not landed yet")
        return
    quiet_threads()

    from latentgraph.engine.executor import Executor
    from latentgraph.nodes import load_registry, make_environment
    from latentgraph.nodes.sd.handles import model_manager

    base = make_base_dir("lg-bench-cache-")
    try:
        # (a) unchanged re-queue
        executor = Executor(load_registry(), make_environment(base))
        first = time.perf_counter()
        result = executor.run(workflow_a())
        first = time.perf_counter() - first
        assert result.status == "success", result.error
        requeue, executed = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            again = executor.run(workflow_a())
            requeue.append(time.perf_counter() - start)
            executed.append(len(again.executed))
        print("(a) unchanged re-queue of txt2img (7 nodes):")
        print(f"    first run                   {first * 1e3:9.2f} ms")
        print(f"    re-queue                    {ms(requeue)}   {median(requeue) / first:.4f}x the first run"
              f"   (ComfyUI: 6 ms)")
        verdict = "met" if max(executed) == 0 else "MISSED"
        print(f"    nodes executed on re-queue  {max(executed)}   (must be 0: {verdict})")
        report("(a) re-queue latency", median(requeue) * 1e3, "ms", "6 ms (ComfyUI)",
               note=f"nodes executed {max(executed)}")
        if args.model_files:
            add_model_files(base, args.model_files)
            crowded = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                again = executor.run(workflow_a())
                crowded.append(time.perf_counter() - start)
                assert not again.executed
            print(f"    re-queue with {args.model_files} more files under models/checkpoints "
                  f"{ms(crowded)}   {median(crowded) / median(requeue):.1f}x")
            report(f"(a) re-queue latency, {args.model_files} model files", median(crowded) * 1e3, "ms",
                   note=f"{median(crowded) / median(requeue):.1f}x the bare folder")
            remove_model_files(base)

        # (b) only the seed changes
        totals, own, ran = [], [], Counter()
        for seed in range(100, 100 + args.seeds):
            clock = NodeClock()
            start = time.perf_counter()
            result = executor.run(workflow_a(seed), sink=clock)
            totals.append(time.perf_counter() - start)
            stages = clock.stages()
            own.append(stages.get("sample", 0.0) + stages.get("decode+save", 0.0))
            ran[tuple(result.executed)] += 1
            assert result.status == "success", result.error
        classes = {node: spec["class_type"] for node, spec in workflow_a().items()}
        ran_names = [", ".join(classes[n] for n in executed_ids) for executed_ids in ran]
        ratios = [t / o for t, o in zip(totals, own)]
        print(f"(b) seed changed, {args.seeds} times:")
        print(f"    nodes that ran              {' | '.join(ran_names)}")
        print(f"    run                         {ms(totals)}")
        print(f"    sampler + decode + save     {ms(own)}")
        print(f"    ratio run / their own work  {median(ratios):9.4f}x   "
              f"(min {min(ratios):.4f}, max {max(ratios):.4f})")
        report("(b) seed change: run / (sampler+decode+save)", median(ratios), "x",
               note="ran: " + " | ".join(ran_names))

        # (c) alternate two workflows on a fresh executor and model manager
        executor = Executor(load_registry(), make_environment(base))
        manager = model_manager(executor.env)
        encodes: Counter[str] = Counter()
        loader_runs = 0
        round_times: list[list[float]] = []
        for _ in range(args.rounds):
            times = []
            for make in (workflow_a, workflow_b):
                prompt = make()
                start = time.perf_counter()
                result = executor.run(prompt)
                times.append(time.perf_counter() - start)
                assert result.status == "success", result.error
                for node in result.executed:
                    if prompt[node]["class_type"] == "CLIPTextEncode":
                        encodes[prompt[node]["inputs"]["text"]] += 1
                    elif prompt[node]["class_type"] == "CheckpointLoaderSimple":
                        loader_runs += 1
            round_times.append(times)
        distinct = {spec["inputs"]["text"] for make in (workflow_a, workflow_b) for spec in make().values()
                    if spec["class_type"] == "CLIPTextEncode"}
        first_round = sum(round_times[0])
        later = [sum(t) for t in round_times[1:]]
        per_prompt_later = [t for times in round_times[1:] for t in times]
        loads_ok = loader_runs == 1 and manager.loads <= 3
        encodes_ok = set(encodes) == distinct and max(encodes.values()) == 1
        print(f"(c) A,B alternated for {args.rounds} rounds (A: txt2img 64x64 euler 20 steps; "
              f"B: 64x96 dpmpp_2m karras 12 steps; same checkpoint, same negative prompt):")
        print(f"    checkpoint loader runs      {loader_runs}   (component loads in the model manager: "
              f"{manager.loads}, the UNet, VAE and text encoder once each)   target 1: "
              f"{'met' if loads_ok else 'MISSED'}")
        print(f"    text encodes                {sum(encodes.values())} for {len(distinct)} distinct prompts "
              f"({dict(encodes)})   target each once: {'met' if encodes_ok else 'MISSED'}")
        print(f"    first round (A+B)           {first_round * 1e3:9.2f} ms")
        print(f"    each later round (A+B)      {ms(later)}   {median(later) / first_round:.4f}x the first round")
        print(f"    per prompt after round 1    {ms(per_prompt_later)}   (ComfyUI: 45 s per switch at full size, "
              f"every switch a full recompute, about 1x)")
        report("(c) checkpoint loads over A,B rounds", loader_runs, "loads", "1")
        report("(c) text encodes over A,B rounds", sum(encodes.values()), "encodes", f"{len(distinct)} (one each)")
        report("(c) later round / first round", median(later) / first_round, "x",
               note=f"per prompt after round 1: {median(per_prompt_later) * 1e3:.1f} ms")
        executor.free()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
