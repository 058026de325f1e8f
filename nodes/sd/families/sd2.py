"""SD2.x: SD1.x's layout with an OpenCLIP text encoder (`cond_stage_model.model.`), 64-channel attention heads,
eps or v prediction (read from a `v_pred` key, a metadata hint, or the spread of a late norm bias), and the
tokenizer padding with "!"."""

from __future__ import annotations

from latentgraph.nodes.sd.detect import CONFIG_DIR, family_config
from latentgraph.nodes.sd.families.sd1 import SD1


class SD2(SD1):
    name = "sd2"
    label = "SD2.x"
    priority = 80
    config_dir = CONFIG_DIR / "sd2"
    text_layout = "open_clip"
    head_channels = 64
    v_from_norm_spread = True
    eps_sample_size = family_config("sd1", "unet")["sample_size"]  # the 512 eps base model keeps SD1.x's size
    folder_text_act = "gelu"
    pad_token = "!"
    default_sampling = {**SD1.default_sampling, "width": 768, "height": 768}

    def clip_layer(self, layer: int) -> int:
        """SD2.x's encoder is loaded without OpenCLIP's last block, which SD2.x never uses, so ComfyUI's -2 (its
        default for SD2.x) is our last layer; -1, that unused block, falls back to the last layer we have."""
        return min(-1, layer + 1)


FAMILY = SD2()
