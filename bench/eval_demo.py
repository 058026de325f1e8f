"""Evaluates the demo model on held-out prompts, through the engine and workflows/txt2img.json.

Every (colour, shape, background) combination held out of training is asked for twice (seeded sizes and
positions); each image is read back by the deterministic pixel classifier. Prints the accuracy per attribute
against the targets (colour >= 90%, background >= 95%, shape >= 70%), and writes the results as JSON and a
contact sheet PNG (green frame: all three attributes read right).

    python bench/eval_demo.py [--checkpoint NAME_OR_PATH] [--count 56] [--cfg 7] [--steps 20]
        [--sampler euler] [--scheduler normal]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentgraph.training.dataset import held_out_scenes  # noqa: E402
from latentgraph.training.evaluate import Settings, contact_sheet, generate, load_workflow, make_executor, score  # noqa: E402

TARGETS = {"colour": 0.90, "background": 0.95, "shape": 0.70}
CARD_DIR = ROOT / "nodes" / "sd" / "assets" / "checkpoints"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="latentgraph-demo.safetensors", help="name or path of the model")
    parser.add_argument("--count", type=int, default=56, help="held-out prompts to generate")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--sampler", default="euler", help="sampler_name (ComfyUI's names)")
    parser.add_argument("--scheduler", default="normal", help="noise schedule (ComfyUI's names)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=CARD_DIR / "latentgraph-demo-eval.json")
    parser.add_argument("--sheet", type=Path, default=CARD_DIR / "latentgraph-demo-samples.png")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    checkpoint = Path(args.checkpoint)
    extra = checkpoint.resolve().parent if checkpoint.exists() else None
    settings = Settings(checkpoint=checkpoint.name if extra else args.checkpoint, steps=args.steps, cfg=args.cfg,
                        sampler=args.sampler, scheduler=args.scheduler, seed=args.seed)
    scenes = held_out_scenes(args.count)
    with tempfile.TemporaryDirectory() as base:
        executor = make_executor(Path(base), extra_checkpoints=extra)
        start = time.perf_counter()
        images = generate(executor, load_workflow(ROOT / "workflows" / "txt2img.json"),
                          [s.caption() for s in scenes], settings)
        seconds = time.perf_counter() - start
    accuracy, readings = score(images, scenes)
    contact_sheet(images, scenes, readings, args.sheet)
    print(f"{len(scenes)} held-out prompts, {settings.steps} {settings.sampler} ({settings.scheduler}) steps, "
          f"cfg {settings.cfg}, {settings.size}x{settings.size}, {seconds:.1f} s")
    print(f"{'attribute':<12}{'accuracy':>10}{'target':>10}  met")
    met = True
    for name in ("colour", "background", "shape"):
        ok = accuracy[name] >= TARGETS[name]
        met &= ok
        print(f"{name:<12}{accuracy[name]:>10.1%}{TARGETS[name]:>10.0%}  {'yes' if ok else 'NO'}")
    results = {
        "checkpoint": settings.checkpoint,
        "settings": settings.__dict__,
        "count": len(scenes),
        "accuracy": accuracy,
        "targets": TARGETS,
        "samples": [{"prompt": s.caption(), "read": r.__dict__} for s, r in zip(scenes, readings)],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json} and {args.sheet}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
