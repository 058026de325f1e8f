"""Where the demo model's shape misses come from: the pixel classifier, the VAE, or the UNet (issue 17).

The shipped demo model reads small squares and stars back as circles. This script separates the three suspects
on the held-out (colour, shape, background) triples at 64x64, with the classifier's shape accuracy per size x
shape on:

  (0) the full model's images (UNet + VAE), read from a stored eval JSON (`--eval-json`, default
      bench/paraphrase_eval.json, its in-template samples: size and shape are in the prompt);
  (1) ground-truth renders: what the classifier alone gets right;
  (2) the shipped checkpoint's VAE reconstructions (encode with latent_dist.mode(), as the engine's VAEEncode,
      then decode): the ceiling any UNet can reach through this decoder;
  (3) with --refine N: reconstructions after N more decoder-only steps (encoder frozen, the trainer's stage-2
      logic, cosine lr), i.e. whether more decoder training alone would lift the ceiling.

A miss in (1) is the classifier's, a miss in (2) but not (1) the VAE's, a miss in (0) but not (2) the UNet's.
Each of (1)-(3) runs on three scene sets: a grid (28 held triples x 2 sizes x 5 positions), the same with three
random +-3 px jitters each, and bench/eval_demo.py's 112 scenes. Results go to --out as JSON.

    OMP_NUM_THREADS=1 python bench/shape_ceiling.py               # (0)-(2), about a minute on one thread
    OMP_NUM_THREADS=1 python bench/shape_ceiling.py --refine 1000 # also (3), about 10 minutes on one thread
    python bench/shape_ceiling.py --sheet                         # also small_shapes.png: GT / recon rows

Options: --out DIR (default: a new temporary directory), --lr, --seed (for --refine), --checkpoint, --eval-json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from latentgraph.nodes.sd.families import inspect_checkpoint, load_component  # noqa: E402
from latentgraph.training import classifier  # noqa: E402
from latentgraph.training.dataset import (  # noqa: E402
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    held_out_scenes,
    held_out_triples,
    render,
)
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "nodes" / "sd" / "assets" / "checkpoints" / "latentgraph-demo.safetensors"
EVAL_JSON = ROOT / "bench" / "paraphrase_eval.json"
RESOLUTION = 64
BATCH = 32


def scene_sets() -> dict[str, list[Scene]]:
    """The three scene sets (1)-(3) are measured on, keyed by a printable name."""
    held = held_out_triples()
    grid = [Scene(c, s, z, p, b) for (c, s, b) in held for z in SIZES for p in POSITIONS]
    rng = random.Random(17)
    jittered = [Scene(c, s, z, p, b, (rng.randint(-3, 3), rng.randint(-3, 3)))
                for (c, s, b) in held for z in SIZES for p in POSITIONS for _ in range(3)]
    return {"grid (28 held triples x 2 sizes x 5 positions, no jitter)": grid,
            "jittered (same x 3 random +-3px jitters)": jittered,
            "eval_demo scenes (held_out_scenes(112))": held_out_scenes(112)}


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """As the engine: decoder output in -1..1 -> 0..1, clamped -> uint8 with SaveImage's rounding, NHWC."""
    return ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def reconstruct(vae: torch.nn.Module, images: list[np.ndarray]) -> list[np.ndarray]:
    """Encode (posterior mode, as the engine's VAEEncode) and decode each image."""
    out: list[np.ndarray] = []
    for i in range(0, len(images), BATCH):
        x = torch.from_numpy(np.stack(images[i:i + BATCH]).astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
        out.extend(to_uint8(vae.decode(vae.encode(x).latent_dist.mode()).sample))
    return out


def table(title: str, scenes: list[Scene], images: list[np.ndarray]) -> dict[str, Any]:
    """Prints and returns the classifier's shape accuracy per size x shape, with what misses were read as."""
    hits: dict[tuple[str, str], int] = defaultdict(int)
    total: dict[tuple[str, str], int] = defaultdict(int)
    misreads: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for scene, image in zip(scenes, images, strict=True):
        shape = classifier.classify(image).shape
        total[(scene.size, scene.shape)] += 1
        hits[(scene.size, scene.shape)] += shape == scene.shape
        if shape != scene.shape:
            misreads[f"{scene.size} {scene.shape}"][shape] += 1
    print(f"  {title}")
    print("    " + f"{'size':<7}" + "".join(f"{sh:>10}" for sh in SHAPES) + f"{'all':>10}")
    result: dict[str, Any] = {}
    for size in SIZES:
        cells = [hits[(size, sh)] / total[(size, sh)] if total[(size, sh)] else float("nan") for sh in SHAPES]
        n = sum(total[(size, sh)] for sh in SHAPES)
        accuracy = sum(hits[(size, sh)] for sh in SHAPES) / n
        print("    " + f"{size:<7}" + "".join(f"{c:>10.1%}" for c in cells) + f"{accuracy:>10.1%}  (n={n})")
        result[size] = dict(zip(SHAPES, cells, strict=True), all=accuracy, n=n)
    overall = sum(hits.values()) / sum(total.values())
    print(f"    overall {overall:.1%} of {sum(total.values())}")
    wrong = {key: dict(value) for key, value in misreads.items()}
    if wrong:
        print(f"    misreads: {wrong}")
    result["overall"], result["misreads"] = overall, wrong
    return result


def feature_summary(scenes: list[Scene], images: list[np.ndarray], label: str) -> None:
    """Median fill ratio / centroid offset of small squares and stars beside the classifier's prototypes."""
    prototypes = classifier._prototypes(RESOLUTION)
    circle = prototypes[("circle", "small")]
    for shape in ("square", "star"):
        features = []
        for scene, image in zip(scenes, images, strict=True):
            if scene.size == "small" and scene.shape == shape:
                pixels = classifier._to_array(image)
                mask = classifier._shape_mask(pixels, np.median(classifier._border(pixels), axis=0))
                if mask.sum() >= classifier.MIN_AREA:
                    features.append(classifier._features(mask)[:3])
        fill, offset, side = np.median(np.array(features), axis=0)
        own = prototypes[(shape, "small")]
        print(f"    {label:<10} small {shape:<7} median fill {fill:.3f} offset {offset:+.3f} sqrt(area) {side:.1f}"
              f"   (prototype small {shape}: {own[0]:.3f} {own[1]:+.3f};"
              f" small circle {circle[0]:.3f} {circle[1]:+.3f})")


def full_model_rows(path: Path) -> dict[str, dict[str, list[int]]]:
    """(0) What the shipped UNet + VAE drew: shape hits / n per size x shape from a stored eval JSON.

    Takes bench/eval_paraphrase.py's in-template samples, or bench/eval_demo.py's top-level ones; the size and
    shape are read from the training-caption prompt ("a large black circle on the right, ...").
    """
    data = json.loads(path.read_text())
    samples = data["results"]["in-template"]["samples"] if "results" in data else data["samples"]
    hits: dict[tuple[str, str], int] = defaultdict(int)
    total: dict[tuple[str, str], int] = defaultdict(int)
    for sample in samples:
        words = sample["prompt"].replace(",", " ").split()
        size = next(w for w in words if w in SIZES)
        shape = next(w for w in words if w in SHAPES)
        total[(size, shape)] += 1
        hits[(size, shape)] += sample["read"]["shape"] == shape
    print(f"  (0) full model, {path.name} ({len(samples)} in-template prompts): shape hits/n")
    print("    " + f"{'size':<7}" + "".join(f"{sh:>10}" for sh in SHAPES))
    rows: dict[str, dict[str, list[int]]] = {}
    for size in SIZES:
        print("    " + f"{size:<7}" + "".join(f"{hits[(size, sh)]:>6}/{total[(size, sh)]:<3}" for sh in SHAPES))
        rows[size] = {sh: [hits[(size, sh)], total[(size, sh)]] for sh in SHAPES}
    return rows


def refine(vae: torch.nn.Module, steps: int, lr: float, seed: int, out: Path) -> torch.nn.Module:
    """(3) A copy of the VAE with its decoder trained `steps` more steps, encoder frozen (the trainer's stage 2)."""
    from latentgraph.training.demo import DemoConfig, TrainState, _refine_decoder
    from latentgraph.training.models import build_vae

    folder = out / f"refine_{steps}_lr{lr:g}_seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*"):
        stale.unlink()
    config = DemoConfig(seed=seed, decoder_steps=steps, decoder_lr=lr, checkpoint_seconds=1e9)
    state = TrainState(config=config, stage="done", vae=vae.state_dict(), decoder_step=0)
    start = time.time()
    _refine_decoder(state, folder, progress=False)
    print(f"  refine: {steps} steps lr {lr:g} (cosine) seed {seed} -> {time.time() - start:.0f} s, state in {folder}")
    refined = build_vae(config.arch)
    refined.load_state_dict(state.vae)
    return refined.eval()


def sheet(vaes: list[torch.nn.Module], path: Path) -> None:
    """Up to 12 small stars and squares, 3x: a row of ground truth, then a row of reconstructions per VAE."""
    scenes = [Scene(c, s, "small", "in the center", b) for (c, s, b) in held_out_triples()
              if s in ("star", "square")][:12]
    truth = [np.asarray(render(s, RESOLUTION)) for s in scenes]
    rows = [truth] + [reconstruct(vae, truth) for vae in vaes]
    cell = RESOLUTION + 4
    big = Image.new("RGB", (len(scenes) * cell, len(rows) * cell), (128, 128, 128))
    for r, images in enumerate(rows):
        for i, image in enumerate(images):
            big.paste(Image.fromarray(image), (i * cell + 2, r * cell + 2))
    big.resize((big.width * 3, big.height * 3), Image.Resampling.NEAREST).save(path)
    print(f"wrote {path}: rows ground truth, shipped recon" + (", refined recon" if len(vaes) > 1 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refine", type=int, default=0, help="more decoder steps for (3); 0 = skip (3)")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak decoder lr for (3), cosine to 0")
    parser.add_argument("--seed", type=int, default=17, help="run seed for (3): image stream seed+2, unseen by stage 2")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--eval-json", type=Path, default=EVAL_JSON, help="stored eval JSON for the (0) row")
    parser.add_argument("--sheet", action="store_true", help="also write small_shapes.png to --out")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a new temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = args.out or Path(tempfile.mkdtemp(prefix="shape_ceiling_"))
    out.mkdir(parents=True, exist_ok=True)

    vae = load_component(inspect_checkpoint(args.checkpoint), "vae").eval()  # float32 on the CPU, as the engine
    print(f"VAE: {type(vae).__name__} norm groups {vae.config.norm_num_groups} scaling {vae.config.scaling_factor}")
    results: dict[str, Any] = {"(0) full model": full_model_rows(args.eval_json)}
    sets = scene_sets()
    truths = {name: [np.asarray(render(s, RESOLUTION)) for s in scenes] for name, scenes in sets.items()}
    for name, scenes in sets.items():
        print(f"\n== {name}: {len(scenes)} images")
        start = time.time()
        recon = reconstruct(vae, truths[name])
        results[name] = {
            "(1) ground truth": table("(1) classifier on ground-truth renders", scenes, truths[name]),
            "(2) shipped VAE": table(f"(2) classifier on shipped VAE recon ({time.time() - start:.1f} s)",
                                     scenes, recon),
        }
        if name.startswith("grid"):
            feature_summary(scenes, truths[name], "GT")
            feature_summary(scenes, recon, "VAE recon")
    vaes = [vae]
    if args.refine:
        refined = refine(vae, args.refine, args.lr, args.seed, out)
        vaes.append(refined)
        print()
        for name, scenes in sets.items():
            recon = reconstruct(refined, truths[name])
            results[name][f"(3) refined {args.refine}"] = table(f"(3) {name}: refined decoder recon", scenes, recon)
            if name.startswith("grid"):
                feature_summary(scenes, recon, "refined")
    if args.sheet:
        sheet(vaes, out / "small_shapes.png")
    path = out / f"results_refine{args.refine}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
