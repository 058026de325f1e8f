"""ModelSamplingDiscrete: sample a UNet model as another prediction type than its file declares.

Used by shared workflows for v-prediction fine-tunes saved without the marker (`v_prediction`) and for models whose
file says v but which are eps (`eps`). The MODEL handle keeps its weights; only the prediction type its noise space
is chosen by changes. ComfyUI's `lcm`, `img_to_img` and zero-terminal-SNR (`zsnr`) samplings need noise spaces the
sampling loop does not have: workflows asking for them are refused at validation, never sampled wrongly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Model

# ComfyUI's sampling names -> diffusers' prediction types (the noise spaces of the sampling loop)
PREDICTION_TYPES = {"eps": "epsilon", "v_prediction": "v_prediction", "x0": "sample"}


class ModelSamplingDiscrete(Node):
    """Makes the sampler treat the model's output as noise (eps), velocity (v_prediction) or the clean image (x0)."""

    CATEGORY = "advanced/model"
    RETURN_TYPES = ("MODEL",)

    model: Model
    sampling: Literal["eps", "v_prediction", "lcm", "x0", "img_to_img"] = Input("eps")
    zsnr: bool = Input(False)

    @classmethod
    def check(cls, inputs: dict[str, Any], env: Environment) -> list[tuple[str, str]]:
        errors = []
        sampling = inputs.get("sampling", "eps")
        if isinstance(sampling, str) and sampling not in PREDICTION_TYPES:
            errors.append(("sampling", f"'{sampling}' sampling is not supported here; supported: "
                                       f"{', '.join(PREDICTION_TYPES)}"))
        if inputs.get("zsnr") is True:
            errors.append(("zsnr", "zero terminal SNR (zsnr) is not supported here"))
        return errors

    def execute(self, ctx: RunContext) -> tuple:
        if hasattr(self.model, "with_shift"):  # flow-matching models have no discrete prediction type
            raise ValueError("ModelSamplingDiscrete applies to UNet models (SD1.x, SD2.x, SDXL); this model is "
                             "flow-matching (use ModelSamplingSD3)")
        config = {**self.model.scheduler_config, "prediction_type": PREDICTION_TYPES[self.sampling]}
        return (replace(self.model, scheduler_config=config),)
