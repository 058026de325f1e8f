"""Evaluates the demo model on prompts phrased the way people type them, beside the in-template held-out prompts.

The paraphrase set, `bench/paraphrase_prompts.jsonl`, was written by hand (not by the training code's caption
generator): 96 prompts, each asking for one of the 28 (colour, shape, background) combinations held out of
training, 20 of them (`"novel": true`) in words or sentence forms the generator never produces ("draw ...",
"backdrop", "over", "X and Y", "bg", ...). Every prompt runs through the engine with workflows/txt2img.json at
the shipped settings (64x64, 20 euler steps, cfg 7, seed = --seed + index) and its image is read back by the pixel
classifier. The in-template column is bench/eval_demo.py's set: the 56 held-out prompts in the training caption's
original form. Prints both side by side, writes the results as JSON and contact sheets (green frame: colour, shape
and background all read right).

    python bench/eval_paraphrase.py [--checkpoint NAME_OR_PATH] [--json PATH] [--no-template] [--steps 20] [--cfg 7]
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

from latentgraph.training.dataset import Scene, held_out_scenes  # noqa: E402
from latentgraph.training.evaluate import (  # noqa: E402
    ATTRIBUTES,
    Settings,
    contact_sheet,
    generate,
    load_workflow,
    make_executor,
    score,
)

PROMPTS = ROOT / "bench" / "paraphrase_prompts.jsonl"
TARGETS = {"colour": 0.95, "background": 0.95, "shape": 0.90}
TEMPLATE_COUNT = 56


def load_paraphrases(path: Path = PROMPTS) -> list[dict]:
    """The hand-written prompts with their intended colour, shape and background (and the `novel` flag)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        missing = {"prompt", *ATTRIBUTES} - row.keys()
        if missing:
            raise ValueError(f"{path}: {row!r} lacks {sorted(missing)}")
    return rows


def label_scene(row: dict) -> Scene:
    """A Scene carrying a prompt's labels (size and position are not scored, so any valid ones do)."""
    return Scene(row["colour"], row["shape"], "large", "in the center", row["background"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="latentgraph-demo.safetensors", help="name or path of the model")
    parser.add_argument("--prompts", type=Path, default=PROMPTS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--sampler", default="euler", help="sampler_name (ComfyUI's names)")
    parser.add_argument("--scheduler", default="normal", help="noise schedule (ComfyUI's names)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-template", action="store_true", help="skip the in-template held-out prompts")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "paraphrase_eval.json")
    parser.add_argument("--sheet", type=Path, default=None, help="contact sheet of the paraphrased prompts")
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    checkpoint = Path(args.checkpoint)
    extra = checkpoint.resolve().parent if checkpoint.exists() else None
    settings = Settings(checkpoint=checkpoint.name if extra else args.checkpoint, steps=args.steps, cfg=args.cfg,
                        sampler=args.sampler, scheduler=args.scheduler, seed=args.seed)
    rows = load_paraphrases(args.prompts)
    sets: dict[str, tuple[list[str], list[Scene]]] = {
        "paraphrased": ([r["prompt"] for r in rows], [label_scene(r) for r in rows]),
    }
    if not args.no_template:
        scenes = held_out_scenes(TEMPLATE_COUNT)
        sets["in-template"] = ([s.caption() for s in scenes], scenes)
    results: dict[str, dict] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as base:
        executor = make_executor(Path(base), extra_checkpoints=extra)
        workflow = load_workflow(ROOT / "workflows" / "txt2img.json")
        for name, (texts, scenes) in sets.items():
            images = generate(executor, workflow, texts, settings)
            accuracy, readings = score(images, scenes)
            right = [all(getattr(r, a) == getattr(s, a) for a in ATTRIBUTES) for r, s in zip(readings, scenes)]
            results[name] = {"count": len(texts), "accuracy": accuracy,
                             "samples": [{"prompt": t, "read": r.__dict__, "right": ok}
                                         for t, r, ok in zip(texts, readings, right)]}
            if name == "paraphrased":
                novel = [i for i, r in enumerate(rows) if r.get("novel")]
                results["paraphrased, novel forms"] = {
                    "count": len(novel),
                    "accuracy": {a: float(np.mean([getattr(readings[i], a) == getattr(scenes[i], a) for i in novel]))
                                 for a in ATTRIBUTES},
                }
                if args.sheet is not None:
                    contact_sheet(images, scenes, readings, args.sheet, columns=12)
    seconds = time.perf_counter() - start
    print(f"{settings.checkpoint}: {settings.steps} {settings.sampler} ({settings.scheduler}) steps, "
          f"cfg {settings.cfg}, {settings.size}x{settings.size}, seed {settings.seed}+index, {seconds:.0f} s")
    columns = list(results)
    headers = [f"{c} ({results[c]['count']})" for c in columns]
    print(f"{'attribute':<12}" + "".join(f"{h:>30}" for h in headers) + f"{'target (paraphrased)':>22}")
    for attribute in ("colour", "background", "shape"):
        cells = "".join(f"{results[c]['accuracy'][attribute]:>30.1%}" for c in columns)
        print(f"{attribute:<12}{cells}{TARGETS[attribute]:>22.0%}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"checkpoint": settings.checkpoint, "settings": settings.__dict__,
                                     "targets": TARGETS, "results": results}, indent=2) + "\n")
    print(f"wrote {args.json}" + (f" and {args.sheet}" if args.sheet else ""))
    met = all(results["paraphrased"]["accuracy"][a] >= t for a, t in TARGETS.items())
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
