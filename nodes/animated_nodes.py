"""Saving an image batch as one animation: SaveAnimatedWEBP and SaveAnimatedPNG (ComfyUI's nodes_images.py).

The workflow travels in the file as ComfyUI writes it, so that ComfyUI's editor (and ours) can read it back: in a
WebP's EXIF, `prompt:<json>` at tag 0x0110 and `<key>:<json>` for each extra_pnginfo entry counting down from
0x010F; in an APNG, `comf` chunks holding `<key>\\0<json>` after the image data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Hidden, Input, Node, NodeOutput
from latentgraph.engine.types import Image
from latentgraph.nodes.imageops import tensor_to_pil
from PIL.PngImagePlugin import PngInfo

WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}
EXIF_PROMPT_TAG = 0x0110
EXIF_FIRST_EXTRA_TAG = 0x010F


def _target(root: Path, filename_prefix: str, suffix: str) -> tuple[Path, str, str]:
    """The folder, file name (`{prefix}_{counter:05}_{suffix}`) and subfolder for the next file of this prefix."""
    root = root.resolve()
    target = (root / filename_prefix).resolve()
    if not target.is_relative_to(root) or target == root:
        raise ValueError(f"filename_prefix {filename_prefix!r} would save outside the output folder")
    folder, prefix = target.parent, target.name
    folder.mkdir(parents=True, exist_ok=True)
    counters = []
    for path in folder.glob(f"{prefix}_*_{suffix}"):
        middle = path.name[len(prefix) + 1:-len(suffix) - 1]
        if middle.isdigit():
            counters.append(int(middle))
    name = f"{prefix}_{max(counters, default=0) + 1:05}_{suffix}"
    return folder, name, folder.relative_to(root).as_posix().strip(".")


class SaveAnimatedWEBP(Node):
    """Saves the images as one animated WebP in the output folder."""

    CATEGORY = "image/animation"
    DISPLAY_NAME = "Save Animated WEBP"
    OUTPUT_NODE = True

    images: Image
    filename_prefix: str = Input("ComfyUI")
    fps: float = Input(6.0, ge=0.01, le=1000.0, step=0.01)
    lossless: bool = Input(True)
    quality: int = Input(80, ge=0, le=100)
    method: Literal["default", "fastest", "slowest"] = Input("default")
    prompt: dict | None = Hidden("PROMPT")
    extra_pnginfo: dict | None = Hidden("EXTRA_PNGINFO")

    def execute(self, ctx: RunContext) -> NodeOutput:
        frames = [tensor_to_pil(image) for image in self.images]
        exif = frames[0].getexif()
        if self.prompt is not None:
            exif[EXIF_PROMPT_TAG] = f"prompt:{json.dumps(self.prompt)}"
        for offset, (key, value) in enumerate((self.extra_pnginfo or {}).items()):
            exif[EXIF_FIRST_EXTRA_TAG - offset] = f"{key}:{json.dumps(value)}"
        folder, name, subfolder = _target(ctx.env.folders.output_dir, self.filename_prefix, ".webp")
        frames[0].save(folder / name, save_all=True, duration=int(1000.0 / self.fps), append_images=frames[1:],
                       exif=exif, lossless=self.lossless, quality=self.quality, method=WEBP_METHODS[self.method])
        entry: dict[str, Any] = {"filename": name, "subfolder": subfolder, "type": "output"}
        return NodeOutput(ui={"images": [entry], "animated": (len(frames) != 1,)})


class SaveAnimatedPNG(Node):
    """Saves the images as one animated PNG in the output folder."""

    CATEGORY = "image/animation"
    DISPLAY_NAME = "Save Animated PNG"
    OUTPUT_NODE = True

    images: Image
    filename_prefix: str = Input("ComfyUI")
    fps: float = Input(6.0, ge=0.01, le=1000.0, step=0.01)
    compress_level: int = Input(4, ge=0, le=9)
    prompt: dict | None = Hidden("PROMPT")
    extra_pnginfo: dict | None = Hidden("EXTRA_PNGINFO")

    def execute(self, ctx: RunContext) -> NodeOutput:
        frames = [tensor_to_pil(image) for image in self.images]
        metadata = PngInfo()
        if self.prompt is not None:
            metadata.add(b"comf", b"prompt\0" + json.dumps(self.prompt).encode("latin-1", "strict"), after_idat=True)
        for key, value in (self.extra_pnginfo or {}).items():
            chunk = key.encode("latin-1", "strict") + b"\0" + json.dumps(value).encode("latin-1", "strict")
            metadata.add(b"comf", chunk, after_idat=True)
        folder, name, subfolder = _target(ctx.env.folders.output_dir, self.filename_prefix, ".png")
        frames[0].save(folder / name, pnginfo=metadata, compress_level=self.compress_level, save_all=True,
                       duration=int(1000.0 / self.fps), append_images=frames[1:])
        return NodeOutput(ui={"images": [{"filename": name, "subfolder": subfolder, "type": "output"}],
                              "animated": (True,)})
