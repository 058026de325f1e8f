"""How far `POST /prompt/estimate` is from the run it predicts, on the shipped workflows with the bundled demo model.

For each workflow: `--warmups` runs with different seeds record timings (the first loads the model), then each change
below is estimated (the cache is consulted, nothing executes) and run, and the estimate is compared with the run:
the nodes it said would run against those that ran, and its total against the summed wall time of the executed
nodes (and against the run's own wall clock, which adds the engine's overhead). Changes:

- seed: the sampler and everything after it re-run; timings of the same shapes exist ("exact");
- steps x2: no timing at that step count, so the sampler's time is scaled from the recorded one ("scaled");
- size x1.5: a larger image, scaled by pixels where no timing of that size exists.

The machines these run on are shared and noisy, so the same work is also run twice more (the seed change with two
other seeds) and their difference is printed as the noise floor: an estimate cannot be read closer than that.

Usage: `python bench/estimate_error.py [--workflows txt2img img2img ...] [--threads 1] [--warmups 2]`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from latentgraph.engine.executor import Executor  # noqa: E402
from latentgraph.nodes import load_registry, make_environment  # noqa: E402
from latentgraph.nodes.memory_probe import install_memory_probe  # noqa: E402
from latentgraph.server.timings import TimingStore  # noqa: E402

WORKFLOWS = REPO / "workflows"


def set_inputs(prompt: dict[str, Any], class_type: str, **values: Any) -> None:
    """Sets inputs on every node of a class that has them as constants."""
    for node in prompt.values():
        if node["class_type"] == class_type:
            for name, value in values.items():
                if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                    node["inputs"][name] = value(node["inputs"][name]) if callable(value) else value


def changes(prompt: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    seed = copy.deepcopy(prompt)
    set_inputs(seed, "KSampler", seed=lambda s: s + 1000)
    steps = copy.deepcopy(seed)
    set_inputs(steps, "KSampler", steps=lambda s: s * 2)
    size = copy.deepcopy(steps)
    set_inputs(size, "EmptyLatentImage", width=lambda w: w * 3 // 2 // 8 * 8, height=lambda h: h * 3 // 2 // 8 * 8)
    return [("seed", seed), ("steps x2", steps), ("size x1.5", size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", nargs="+", default=["txt2img", "img2img", "lora", "hires_fix"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmups", type=int, default=2, help="recorded runs before the estimates (min 1)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    base = Path(tempfile.mkdtemp(prefix="lg-estimate-"))
    env = make_environment(base)
    install_memory_probe(env)
    executor = Executor(load_registry(), env)
    store = TimingStore(base / "timings.sqlite3")
    executor.listeners.append(lambda result, prompt_id: store.record(result.device, result.nodes, prompt_id))

    rows = []
    noise = []
    for name in args.workflows:
        prompt = json.loads((WORKFLOWS / f"{name}.json").read_text())
        executor.run(prompt)  # loads the model: recorded too, as a user's first run is
        for extra in range(1, args.warmups):
            warm = copy.deepcopy(prompt)
            set_inputs(warm, "KSampler", seed=lambda s, extra=extra: s + extra)
            executor.run(warm)
        for label, changed in changes(prompt):
            estimate = executor.estimate(changed, None, store.history)
            started = time.perf_counter()
            result = executor.run(changed)
            clock_ms = (time.perf_counter() - started) * 1000
            ran_ms = sum(r["wall_ms"] for r in result.nodes.values() if r["status"] == "ran")
            same_nodes = estimate["run"] == result.executed
            bases = sorted({n["basis"] for n in estimate["nodes"]})
            error = (estimate["total_ms"] - ran_ms) / ran_ms * 100 if ran_ms else 0.0
            rows.append((name, label, len(estimate["run"]), same_nodes, ",".join(bases), estimate["total_ms"],
                         ran_ms, clock_ms, error))
            print(f"RESULT {name:<10} {label:<10} nodes {len(estimate['run']):>2} same={same_nodes!s:<5} "
                  f"basis {','.join(bases):<22} estimate {estimate['total_ms']:8.0f} ms  ran {ran_ms:8.0f} ms  "
                  f"run wall clock {clock_ms:8.0f} ms  error {error:+6.1f}%", flush=True)
        again = []
        for extra in (5000, 6000):  # the seed change's work twice more: how much the same work varies here
            repeat = copy.deepcopy(prompt)
            set_inputs(repeat, "KSampler", seed=lambda s, extra=extra: s + extra)
            result = executor.run(repeat)
            again.append(sum(r["wall_ms"] for r in result.nodes.values() if r["status"] == "ran"))
        noise.append(abs(again[0] - again[1]) / min(again) * 100)
        print(f"RESULT {name:<10} noise floor: the same work twice took {again[0]:.0f} and {again[1]:.0f} ms "
              f"({noise[-1]:.1f}% apart)", flush=True)
    errors = [abs(r[-1]) for r in rows if r[6] > 0]  # a change that runs nothing has no time to be wrong about
    print(f"mean |error| {sum(errors) / len(errors):.1f}%, max {max(errors):.1f}% over {len(errors)} estimates "
          f"that ran something; node lists matched in {sum(r[3] for r in rows)}/{len(rows)}; the same work run "
          f"twice differed by {sum(noise) / len(noise):.1f}% on average (max {max(noise):.1f}%)")


if __name__ == "__main__":
    main()
