"""Issue 17's sheet: six prompts from the hand-written paraphrase set (bench/paraphrase_prompts.jsonl, each asking
for a colour/shape/background combination held out of training), drawn by the demo model through
workflows/txt2img.json at the shipped settings (64x64, 20 euler steps, cfg 7, seed 0), shown at 3x with the prompt
above each image and what the pixel classifier reads below it (green: colour, shape and background as asked).

One row per --checkpoint (a name in models/checkpoints or a path), so an old and a new model can be put side by side.

    python bench/paraphrase_sheet.py [--checkpoint NAME_OR_PATH ...] [--out bench/paraphrase_sheet.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentgraph.training.evaluate import ATTRIBUTES, Settings, generate, load_workflow, make_executor, score  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from bench.eval_paraphrase import PROMPTS, label_scene, load_paraphrases  # noqa: E402

# Three phrasings the caption generator also produces and three it never does (`"novel": true` in the set); every
# shape, six object colours and five backgrounds.
SHEET_PROMPTS = (
    "black circle on orange",
    "a green background with a large black triangle",
    "large green star in the middle of a red background",
    "an orange square in the center of a green background",
    "small purple triangle at the top, red background",
    "a yellow circle in front of a blue background",
)
TILE = 192
CAPTION = 40
READING = 30
GAP = 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", nargs="+", default=["latentgraph-demo.safetensors"],
                        help="names or paths of the models, one row each")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "paraphrase_sheet.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    rows = {row["prompt"]: row for row in load_paraphrases(PROMPTS)}
    missing = [p for p in SHEET_PROMPTS if p not in rows]
    if missing:
        raise SystemExit(f"not in {PROMPTS}: {missing}")
    scenes = [label_scene(rows[p]) for p in SHEET_PROMPTS]
    workflow = load_workflow(ROOT / "workflows" / "txt2img.json")
    label_width = 150
    width = label_width + len(SHEET_PROMPTS) * (TILE + GAP)
    height = len(args.checkpoint) * (CAPTION + TILE + READING + GAP)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    pen = ImageDraw.Draw(sheet)
    for r, name in enumerate(args.checkpoint):
        path = Path(name)
        extra = path.resolve().parent if path.exists() else None
        settings = Settings(checkpoint=path.name if extra else name, seed=args.seed)
        with tempfile.TemporaryDirectory() as base:
            executor = make_executor(Path(base), extra_checkpoints=extra)
            # every prompt gets the same seed, so a row differs from another only by the model
            images = [generate(executor, workflow, [text], settings)[0] for text in SHEET_PROMPTS]
        _, readings = score(images, scenes)
        y = r * (CAPTION + TILE + READING + GAP)
        pen.text((4, y + CAPTION + TILE // 2), "\n".join(textwrap.wrap(settings.checkpoint, 22)), fill=(0, 0, 0))
        for c, (text, image, scene, reading) in enumerate(zip(SHEET_PROMPTS, images, scenes, readings)):
            x = label_width + c * (TILE + GAP)
            pen.text((x, y + 2), "\n".join(textwrap.wrap(f'"{text}"', 30)), fill=(0, 0, 0))
            sheet.paste(Image.fromarray(image).resize((TILE, TILE), Image.Resampling.NEAREST), (x, y + CAPTION))
            right = all(getattr(reading, a) == getattr(scene, a) for a in ATTRIBUTES)
            pen.text((x, y + CAPTION + TILE + 4), f"read: {reading.colour} {reading.shape}\non {reading.background}",
                     fill=(0, 140, 0) if right else (200, 0, 0))
            print(f"{settings.checkpoint}: {text!r} -> {reading.colour} {reading.shape} on {reading.background}"
                  f"{'' if right else '  (asked ' + ' '.join(getattr(scene, a) for a in ATTRIBUTES) + ')'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
