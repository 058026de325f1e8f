"""Training as a node: `TrainLora` fine-tunes a LoRA on the images and captions of a workflow and hands back the
MODEL and CLIP with it applied, so that one workflow can train and then draw with the result.

It lives in the training package (which may use the nodes, not the other way round) and is named in
latentgraph.nodes.BUILTIN_MODULES like any built-in node module.

The LoRA file is named by a hash of everything that decides its content (the checkpoint file, the images' pixels,
the captions and the settings) and is written to models/loras, where LoraLoader lists it at once; when that file
exists already, training is skipped, so a re-run (even after a restart) costs nothing and an edited caption or
image trains anew. Training reports progress per step and stops at an interrupt without writing a file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Clip, Image, Model
from latentgraph.nodes.sd.checkpoint import file_identity
from latentgraph.nodes.sd.families.sd1 import SD1  # SD1.x and SD2.x (its subclass)
from latentgraph.nodes.sd.handles import ClipHandle, ModelHandle
from latentgraph.nodes.sd.lora import LoraPatch
from latentgraph.training.lora import LoraConfig, train_lora
from PIL import Image as PILImage


def _captions(text: str, count: int) -> list[str]:
    """One caption per image (one per line), or a single line for every image."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) == 1:
        return lines * count
    if len(lines) != count:
        raise ValueError(f"TrainLora needs one caption per image ({count} images) or a single caption for all; "
                         f"got {len(lines)} non-empty lines")
    return lines


class TrainLora(Node):
    """Trains a LoRA for the MODEL's checkpoint on images with captions, and applies it to MODEL and CLIP."""

    CATEGORY = "training"
    DISPLAY_NAME = "Train LoRA"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("MODEL", "CLIP", "lora_name")
    DETERMINISTIC = True

    model: Model
    clip: Clip
    images: Image
    captions: str = Input("", multiline=True,
                          tooltip="One caption per image, one per line; a single line is used for every image.")
    lora_name: str = Input("trained", tooltip="Start of the file name in models/loras (a content hash follows).")
    steps: int = Input(400, ge=1, le=100000)
    rank: int = Input(8, ge=1, le=256)
    learning_rate: float = Input(1e-3, ge=1e-6, le=1.0, step=1e-4)
    conv: bool = Input(True, tooltip="Also train the UNet's resnet convs (kohya's LoCon).")
    text_encoder: bool = Input(False, tooltip="Also train the text encoder.")
    seed: int = Input(0, ge=0, le=2**63 - 1)
    strength_model: float = Input(1.0, ge=-100.0, le=100.0, step=0.01)
    strength_clip: float = Input(1.0, ge=-100.0, le=100.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        model, clip = self.model, self.clip
        if not isinstance(model, ModelHandle) or not isinstance(clip, ClipHandle) or not isinstance(model.family, SD1):
            raise ValueError("TrainLora trains LoRAs for SD1.x and SD2.x checkpoints (loaded by Load Checkpoint)")
        if model.patches or clip.patches:
            raise ValueError("TrainLora trains on the checkpoint's own weights: connect it before any Load LoRA")
        pixels = (self.images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        captions = _captions(self.captions, len(pixels))
        config = LoraConfig(rank=self.rank, alpha=float(self.rank), steps=self.steps,
                            learning_rate=self.learning_rate, conv=self.conv, text_encoder=self.text_encoder,
                            seed=self.seed)
        base = model.component.path
        digest = hashlib.sha256()
        for part in (file_identity(base), json.dumps(asdict(config), sort_keys=True), json.dumps(captions),
                     str(pixels.shape)):
            digest.update(part.encode())
        digest.update(np.ascontiguousarray(pixels).tobytes())
        name = f"{self.lora_name}-{digest.hexdigest()[:12]}.safetensors"
        out = ctx.env.folders.folders("loras")[0] / name
        if not out.is_file():
            def step(done: int, total: int, _loss: float) -> None:
                ctx.check_interrupt()
                ctx.progress(done, total)

            with tempfile.TemporaryDirectory() as folder:
                data = Path(folder) / "data"
                data.mkdir()
                for i, (image, caption) in enumerate(zip(pixels, captions)):
                    PILImage.fromarray(image).save(data / f"{i:05d}.png")
                    (data / f"{i:05d}.txt").write_text(caption + "\n", encoding="utf-8")
                # written aside and moved in when complete: an interrupted run leaves no file that looks trained
                result = train_lora(data, base, Path(folder) / name, config, progress=False, on_step=step)
                out.parent.mkdir(parents=True, exist_ok=True)
                if result["vae_sheet"] is not None:
                    shutil.move(result["vae_sheet"], out.with_name(result["vae_sheet"].name))
                shutil.move(Path(folder) / name, out)
        identity = file_identity(out)
        return (model.with_patch(LoraPatch(out, identity, "unet", self.strength_model)),
                clip.with_patch(LoraPatch(out, identity, "text_encoder", self.strength_clip)), name)

    @classmethod
    def check(cls, inputs: dict[str, Any], env: Any) -> list[tuple[str, str]]:
        name = inputs.get("lora_name", "")
        if not isinstance(name, str) or not name or any(c in name for c in "/\\") or name.startswith("."):
            return [("lora_name", "a plain file name start (no folders)")]
        return []
