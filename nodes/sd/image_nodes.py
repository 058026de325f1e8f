"""Image resizing to a pixel budget, for feeding a model images near its native size."""

from __future__ import annotations

import math

from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Image
from latentgraph.nodes.imageops import UpscaleMethod, upscale_images


class ImageScaleToTotalPixels(Node):
    """Resizes images to about the given number of megapixels, keeping the aspect ratio."""

    CATEGORY = "image/upscaling"
    DISPLAY_NAME = "Scale Image to Total Pixels"
    RETURN_TYPES = ("IMAGE",)

    image: Image
    upscale_method: UpscaleMethod = Input("nearest-exact")
    megapixels: float = Input(1.0, ge=0.01, le=16.0, step=0.01)

    def execute(self, ctx: RunContext) -> tuple:
        height, width = self.image.shape[1], self.image.shape[2]
        scale = math.sqrt(self.megapixels * 1024 * 1024 / (width * height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return (upscale_images(self.image, size[0], size[1], self.upscale_method),)
