"""SDXL prompt nodes with ComfyUI's names and inputs: the base's two prompts with size and crop conditioning, and
the refiner's prompt with its aesthetic score."""

from __future__ import annotations

from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Clip
from latentgraph.nodes.sd.families import sdxl, sdxl_refiner
from latentgraph.nodes.sd.family import Family
from latentgraph.nodes.sd.parts import MultiClipHandle

MAX_RESOLUTION = 16384


def _xl_clip(clip: object, family: Family, node: str) -> MultiClipHandle:
    if not isinstance(clip, MultiClipHandle) or clip.family is not family:
        found = getattr(getattr(clip, "family", None), "name", type(clip).__name__)
        raise ValueError(f"{node} needs the CLIP of an {family.name} checkpoint, got a {found} CLIP")
    return clip


class CLIPTextEncodeSDXL(Node):
    """Encodes SDXL prompts: text_g for OpenCLIP bigG, text_l for CLIP-L, with the original size, crop and target
    size the base model was trained to take."""

    CATEGORY = "advanced/conditioning"
    DISPLAY_NAME = "CLIP Text Encode (SDXL)"
    RETURN_TYPES = ("CONDITIONING",)

    clip: Clip
    width: int = Input(1024, ge=0, le=MAX_RESOLUTION)
    height: int = Input(1024, ge=0, le=MAX_RESOLUTION)
    crop_w: int = Input(0, ge=0, le=MAX_RESOLUTION)
    crop_h: int = Input(0, ge=0, le=MAX_RESOLUTION)
    target_width: int = Input(1024, ge=0, le=MAX_RESOLUTION)
    target_height: int = Input(1024, ge=0, le=MAX_RESOLUTION)
    text_g: str = Input("", multiline=True, dynamic_prompts=True)
    text_l: str = Input("", multiline=True, dynamic_prompts=True)

    def execute(self, ctx: RunContext) -> tuple:
        clip = _xl_clip(self.clip, sdxl.FAMILY, "CLIPTextEncodeSDXL")
        context, pooled = clip.encode(self.text_g, ctx.env.folders, text_l=self.text_l)
        options = {"pooled_output": pooled, "width": self.width, "height": self.height, "crop_w": self.crop_w,
                   "crop_h": self.crop_h, "target_width": self.target_width, "target_height": self.target_height}
        return ([[context, options]],)


class CLIPTextEncodeSDXLRefiner(Node):
    """Encodes a prompt for the SDXL refiner, with its aesthetic score (about 6 for positive, 2.5 for negative)."""

    CATEGORY = "advanced/conditioning"
    DISPLAY_NAME = "CLIP Text Encode (SDXL Refiner)"
    RETURN_TYPES = ("CONDITIONING",)

    ascore: float = Input(6.0, ge=0.0, le=1000.0, step=0.01)
    width: int = Input(1024, ge=0, le=MAX_RESOLUTION)
    height: int = Input(1024, ge=0, le=MAX_RESOLUTION)
    text: str = Input("", multiline=True, dynamic_prompts=True)
    clip: Clip

    def execute(self, ctx: RunContext) -> tuple:
        clip = _xl_clip(self.clip, sdxl_refiner.FAMILY, "CLIPTextEncodeSDXLRefiner")
        context, pooled = clip.encode(self.text, ctx.env.folders)
        options = {"pooled_output": pooled, "aesthetic_score": self.ascore, "width": self.width,
                   "height": self.height}
        return ([[context, options]],)
