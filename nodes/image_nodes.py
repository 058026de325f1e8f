"""Image nodes that need no model: loading, saving, previewing and simple pixel operations.

Names and inputs are ComfyUI's, so saved workflows and the editor match. SaveImage writes the workflow into the
PNG (`prompt` and `workflow` text chunks), so that an image can reproduce its own run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Hidden, Input, Node, NodeOutput
from latentgraph.engine.types import Image
from latentgraph.nodes import provenance
from latentgraph.nodes.imageops import CropMethod, UpscaleMethod, pil_to_tensor, tensor_to_pil, upscale_images
from latentgraph.nodes.pixel_budget import over_budget
from PIL import Image as PILImage
from PIL import ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_RESOLUTION = 16384


def list_input_images(env: Environment) -> list[str]:
    root = env.folders.input_dir
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _input_path(env: Environment, name: str) -> Path:
    root = env.folders.input_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise FileNotFoundError(f"input image {name!r} not found in {root}")
    return path


class LoadImage(Node):
    """Loads an image from the input folder; the mask is 1 - alpha, so painted-out areas are the ones to change."""

    CATEGORY = "image"
    DISPLAY_NAME = "Load Image"
    RETURN_TYPES = ("IMAGE", "MASK")

    image: str = Input(choices=list_input_images, image_upload=True)

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> str | None:
        return hashlib.sha256(_input_path(env, inputs["image"]).read_bytes()).hexdigest()

    @classmethod
    def check(cls, inputs: dict[str, Any], env: Environment) -> list[tuple[str, str]]:
        """The pixel budget, from the file's header: a small file can decode to gigabytes."""
        try:
            problem = decoded_size_problem(_input_path(env, inputs["image"]))
        except (OSError, ValueError):
            return []  # a missing or unreadable file is reported when it is loaded
        return [("image", problem)] if problem else []

    def execute(self, ctx: RunContext) -> tuple:
        path = _input_path(ctx.env, self.image)
        problem = decoded_size_problem(path)
        if problem:
            raise ValueError(problem)
        source = PILImage.open(path)
        images, masks = [], []
        for frame in ImageSequence.Iterator(source):
            frame = ImageOps.exif_transpose(frame)
            if images and frame.size != (images[0].shape[1], images[0].shape[0]):
                break
            images.append(pil_to_tensor(frame))
            if "A" in frame.getbands():
                alpha = np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0
                masks.append(1.0 - torch.from_numpy(alpha))
            else:
                masks.append(torch.zeros(frame.size[1], frame.size[0]))
        return torch.stack(images), torch.stack(masks)


def decoded_size_problem(path: Path) -> str | None:
    """Whether decoding the image (all its frames) would exceed the pixel budget, read from its header only."""
    with PILImage.open(path) as image:
        return over_budget(image.width, image.height, getattr(image, "n_frames", 1), f"{path.name} decoded")


def _next_counter(folder: Path, prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)_\.png$")
    counters = [int(m.group(1)) for p in folder.glob(f"{prefix}_*_.png") if (m := pattern.match(p.name))]
    return max(counters, default=0) + 1


def save_images(images: torch.Tensor, root: Path, filename_prefix: str, kind: str, prompt: dict | None,
                extra_pnginfo: dict | None, reproduction: dict | None = None) -> list[dict[str, str]]:
    """Writes PNGs named `{prefix}_{counter:05}_.png` with the workflow in text chunks; returns their UI entries.

    `reproduction` (model hashes, environment, seeds: nodes/provenance.py) goes into a `latentgraph` chunk.
    """
    root = root.resolve()
    target = (root / filename_prefix).resolve()
    if not target.is_relative_to(root) or target == root:
        raise ValueError(f"filename_prefix {filename_prefix!r} would save outside the {kind} folder")
    folder, prefix = target.parent, target.name
    folder.mkdir(parents=True, exist_ok=True)
    metadata = PngInfo()
    if prompt is not None:
        metadata.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        metadata.add_text(key, json.dumps(value))
    if reproduction is not None:
        metadata.add_text(provenance.PNG_KEY, json.dumps(reproduction))
    counter = _next_counter(folder, prefix)
    results = []
    for offset, image in enumerate(images):
        name = f"{prefix}_{counter + offset:05}_.png"
        # A temporary name, then a rename: a full disk must not leave a truncated PNG under the real name.
        temporary = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            tensor_to_pil(image).save(temporary, format="PNG", pnginfo=metadata, compress_level=4)
            os.replace(temporary, folder / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        results.append({"filename": name, "subfolder": folder.relative_to(root).as_posix().strip("."),
                        "type": kind})
    return results


class SaveImage(Node):
    """Saves images as PNGs in the output folder, carrying the workflow, the model hashes and the environment, so
    that the image can reproduce its run and say when it cannot."""

    CATEGORY = "image"
    DISPLAY_NAME = "Save Image"
    OUTPUT_NODE = True

    images: Image
    filename_prefix: str = Input("latentgraph", tooltip="File name prefix; may include a subfolder, e.g. 'day1/cat'.")
    prompt: dict | None = Hidden("PROMPT")
    extra_pnginfo: dict | None = Hidden("EXTRA_PNGINFO")

    def execute(self, ctx: RunContext) -> NodeOutput:
        reproduction = provenance.record(ctx.env, self.prompt) if self.prompt is not None else None
        saved = save_images(self.images, ctx.env.folders.output_dir, self.filename_prefix, "output",
                            self.prompt, self.extra_pnginfo, reproduction)
        return NodeOutput(ui={"images": saved})


class PreviewImage(Node):
    """Shows images without keeping them: they go to the temp folder."""

    CATEGORY = "image"
    DISPLAY_NAME = "Preview Image"
    OUTPUT_NODE = True

    images: Image
    prompt: dict | None = Hidden("PROMPT")
    extra_pnginfo: dict | None = Hidden("EXTRA_PNGINFO")

    def execute(self, ctx: RunContext) -> NodeOutput:
        prefix = f"preview_{uuid.uuid4().hex[:8]}"
        saved = save_images(self.images, ctx.env.folders.temp_dir, prefix, "temp", self.prompt, self.extra_pnginfo)
        return NodeOutput(ui={"images": saved})


class SaveImageWebsocket(Node):
    """Sends each image as a full-size PNG over the WebSocket of the client that queued the prompt, instead of
    writing a file: the binary frame of ComfyUI's websocket_image_save node (type 1, format 2, then the PNG), which
    API scripts read while the node is executing. Runs every time, as ComfyUI's does, so a re-queued prompt sends
    its images again."""

    CATEGORY = "api node/image"
    DISPLAY_NAME = "Save Image (Websocket)"
    OUTPUT_NODE = True
    DETERMINISTIC = False

    images: Image

    def execute(self, ctx: RunContext) -> NodeOutput:
        total = len(self.images)
        for index, image in enumerate(self.images):
            ctx.progress(index, total)
            ctx.send_image(tensor_to_pil(image))
        return NodeOutput(ui={})


class ImageScale(Node):
    """Resizes images; a width or height of 0 keeps the aspect ratio."""

    CATEGORY = "image/upscaling"
    DISPLAY_NAME = "Upscale Image"
    RETURN_TYPES = ("IMAGE",)

    image: Image
    upscale_method: UpscaleMethod = Input("nearest-exact")
    width: int = Input(512, ge=0, le=MAX_RESOLUTION, step=1)
    height: int = Input(512, ge=0, le=MAX_RESOLUTION, step=1)
    crop: CropMethod = Input("disabled")

    def execute(self, ctx: RunContext) -> tuple:
        return (upscale_images(self.image, self.width, self.height, self.upscale_method, self.crop),)


class ImageInvert(Node):
    """Inverts colours (1 - value)."""

    CATEGORY = "image"
    DISPLAY_NAME = "Invert Image Colors"
    RETURN_TYPES = ("IMAGE",)

    image: Image

    def execute(self, ctx: RunContext) -> tuple:
        return (1.0 - self.image,)


class ImageBatch(Node):
    """Joins two image batches; the second is resized to the first's size when they differ."""

    CATEGORY = "image"
    DISPLAY_NAME = "Batch Images (DEPRECATED)"
    RETURN_TYPES = ("IMAGE",)

    image1: Image
    image2: Image

    def execute(self, ctx: RunContext) -> tuple:
        first, second = self.image1, self.image2
        if first.shape[1:3] != second.shape[1:3]:
            second = upscale_images(second, first.shape[2], first.shape[1], "bilinear", "center")
        return (torch.cat((first, second), dim=0),)
