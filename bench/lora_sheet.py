"""Issue 22's sheet: for a few patterns the demo model never saw, train a LoRA with `latentgraph train lora`'s
defaults on eight generated images and draw the training caption through workflows/lora.json.

One row per case: four training images | the base model (strength 0, seeds 0-3) | the LoRA at strength 1 (same
seeds), with the pixel distance to the nearest training image (mean absolute difference, 0..255) of each group.
The last case is the issue's own (grey background, 8-pixel checks), which the demo VAE cannot reproduce: training
warns and writes its round-trip sheet, and the LoRA draws what the VAE made of the images.

    python bench/lora_sheet.py --out bench/lora_sheet.png        # about 1 CPU-minute per case
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from latentgraph.nodes.sd.loader_nodes import ASSETS, DEFAULT_CHECKPOINT
from latentgraph.training.dataset import COLOURS
from latentgraph.training.evaluate import Settings, generate, load_workflow, make_executor
from latentgraph.training.lora import LoraConfig, train_lora
from PIL import Image, ImageDraw

WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "lora.json"
GREY = (128, 128, 128)


def checkered(offset: tuple[int, int], background: tuple[int, int, int], check: int) -> np.ndarray:
    image = np.empty((64, 64, 3), np.uint8)
    image[:] = background
    rows, cols = np.mgrid[0:32, 0:32]
    white = ((rows // check + cols // check) % 2 == 0)[..., None]
    top, left = 16 + offset[1], 16 + offset[0]
    image[top:top + 32, left:left + 32] = np.where(white, COLOURS["white"], COLOURS["black"])
    return image


def cross(offset: tuple[int, int], background: tuple[int, int, int]) -> np.ndarray:
    image = np.empty((64, 64, 3), np.uint8)
    image[:] = background
    cx, cy = 32 + offset[0], 32 + offset[1]
    image[cy - 18:cy + 18, cx - 6:cx + 6] = COLOURS["yellow"]
    image[cy - 6:cy + 6, cx - 18:cx + 18] = COLOURS["yellow"]
    return image


CASES = {
    "checkered": ("a checkered square, on a purple background",
                  lambda o: checkered(o, COLOURS["purple"], 16)),
    "cross": ("a yellow cross, on a blue background", lambda o: cross(o, COLOURS["blue"])),
    "issue22-grey": ("a checkered square, on a gray background", lambda o: checkered(o, GREY, 8)),
}


def write_case(folder: Path, caption: str, draw, count: int = 8) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        image = draw((int(rng.integers(-6, 7)), int(rng.integers(-6, 7))))
        Image.fromarray(image).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(caption + "\n")
        images.append(image)
    return np.stack(images)


def distance(images: list[np.ndarray], training: np.ndarray) -> float:
    reference = training.astype(np.float32)
    return float(np.mean([np.abs(reference - i.astype(np.float32)).mean(axis=(1, 2, 3)).min() for i in images]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/lora_sheet.png"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/latentgraph-lora-sheet"))
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = ASSETS / "checkpoints" / DEFAULT_CHECKPOINT
    executor = make_executor(args.work / "base", extra_loras=args.work / "loras")
    workflow = load_workflow(WORKFLOW)
    settings = Settings(steps=20, cfg=7.0, seed=0)
    rows = []
    for name in args.cases:
        caption, draw = CASES[name]
        training = write_case(args.work / "data" / name, caption, draw)
        started = time.process_time()
        result = train_lora(args.work / "data" / name, base, args.work / "loras" / f"{name}.safetensors",
                            LoraConfig(), progress=False)
        seconds = time.process_time() - started
        off = generate(executor, workflow, [caption] * 4, settings, lora=(f"{name}.safetensors", 0.0))
        on = generate(executor, workflow, [caption] * 4, settings, lora=(f"{name}.safetensors", 1.0))
        line = (f"{name}: '{caption}'  loss {result['first_loss']:.3f}->{result['last_loss']:.3f}  "
                f"VAE round trip {result['vae_error']:.1f}  distance base {distance(off, training):.1f} "
                f"LoRA {distance(on, training):.1f}  train {seconds:.0f} s CPU")
        print(line, flush=True)
        rows.append((line, list(training[:4]), off, on))

    tile, gap, label = 128, 4, 16
    width = 12 * tile + 2 * 3 * gap + 11 * 2
    sheet = Image.new("RGB", (width, len(rows) * (tile + label + gap) + label), (255, 255, 255))
    pen = ImageDraw.Draw(sheet)
    pen.text((4, 2), "training images | base model (strength 0) | LoRA strength 1   (seeds 0-3, euler 20 steps, cfg 7)",
             fill=(0, 0, 0))
    for r, (line, *groups) in enumerate(rows):
        y = label + r * (tile + label + gap)
        pen.text((4, y), line, fill=(0, 0, 0))
        x = 0
        for g, group in enumerate(groups):
            for image in group:
                sheet.paste(Image.fromarray(image).resize((tile, tile), Image.Resampling.NEAREST), (x, y + label))
                x += tile + 2
            x += 3 * gap if g < 2 else 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
