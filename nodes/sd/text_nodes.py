"""Text conditioning nodes: prompt encoding, CLIP layer choice, combining conditionings."""

from __future__ import annotations

from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Clip, Conditioning


class CLIPTextEncode(Node):
    """Encodes a prompt with the CLIP text encoder into conditioning for the sampler.

    Supports (emphasis), (weight:1.2), [de-emphasis], prompts longer than 77 tokens and embedding:name.
    """

    CATEGORY = "conditioning"
    DISPLAY_NAME = "CLIP Text Encode (Prompt)"
    RETURN_TYPES = ("CONDITIONING",)

    text: str = Input("", multiline=True, dynamic_prompts=True, tooltip="The text to be encoded.")
    clip: Clip

    def execute(self, ctx: RunContext) -> tuple:
        context, pooled = self.clip.encode(self.text, ctx.env.folders)  # the CLIP's family decides how
        return ([[context, {"pooled_output": pooled}]],)


class CLIPSetLastLayer(Node):
    """Makes the text encoder stop at an earlier layer (-1: last, -2: penultimate, "CLIP skip" 2)."""

    CATEGORY = "conditioning"
    DISPLAY_NAME = "CLIP Set Last Layer"
    RETURN_TYPES = ("CLIP",)

    clip: Clip
    stop_at_clip_layer: int = Input(-1, ge=-24, le=-1, step=1)

    def execute(self, ctx: RunContext) -> tuple:
        chosen = self.clip.with_layer(self.stop_at_clip_layer)
        with self.clip.use() as encoder:
            layers = encoder.config.num_hidden_layers
        if -getattr(chosen, "encoder_layer", self.stop_at_clip_layer) > layers:
            raise ValueError(f"stop_at_clip_layer {self.stop_at_clip_layer}: this text encoder has {layers} layers")
        return (chosen,)


class ConditioningCombine(Node):
    """Combines two conditionings; the sampler averages the model's predictions for each."""

    CATEGORY = "conditioning"
    DISPLAY_NAME = "Conditioning (Combine)"
    RETURN_TYPES = ("CONDITIONING",)

    conditioning_1: Conditioning
    conditioning_2: Conditioning

    def execute(self, ctx: RunContext) -> tuple:
        return (list(self.conditioning_1) + list(self.conditioning_2),)
