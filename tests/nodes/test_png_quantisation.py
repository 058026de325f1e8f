"""SaveImage writes 8-bit pixels the way ComfyUI does, so a PNG can be compared with ComfyUI's byte for byte.

ComfyUI's SaveImage computes `np.clip(255. * i.cpu().numpy(), 0, 255).astype(np.uint8)`: it truncates. The
expected bytes below are worked out by hand from that rule (255 * x, clip to 0..255, drop the fraction); rounding
would give 128, 26, 179, 255 and 1 for the first five.
"""

from __future__ import annotations

import numpy as np
import torch
from latentgraph.engine.context import RunContext
from latentgraph.engine.interrupt import InterruptToken
from latentgraph.nodes import make_environment
from latentgraph.nodes.image_nodes import SaveImage
from latentgraph.nodes.imageops import pil_to_tensor, tensor_to_pil
from PIL import Image

# (value in the IMAGE tensor, byte ComfyUI writes): 255 * value, clipped, fraction dropped.
HAND_COMPUTED = [
    (0.5, 127),         # 127.5 -> 127
    (0.1, 25),          # 25.5 -> 25
    (0.7, 178),         # 178.5 -> 178
    (0.999, 254),       # 254.745 -> 254
    (0.0039, 0),        # 0.9945 -> 0
    (0.2, 51),          # 51.0 -> 51
    (0.0, 0),
    (1.0, 255),
    (1.5, 255),         # over-range is clipped, not wrapped
    (-0.25, 0),         # under-range is clipped, not wrapped
    (0.99999, 254),     # 254.997 -> 254: only exactly 1.0 gives 255
]


def test_save_image_truncates_like_comfyui(tmp_path) -> None:
    values = torch.tensor([v for v, _ in HAND_COMPUTED], dtype=torch.float32)
    image = values.reshape(1, 1, -1, 1).expand(1, 2, -1, 3).contiguous()  # [B=1, H=2, W=11, C=3]
    env = make_environment(tmp_path)
    ctx = RunContext(env=env, node_id="1", prompt_id="p", prompt={}, extra_data={}, interrupt=InterruptToken(),
                     sink=lambda event, data: None)
    out = SaveImage(images=image, filename_prefix="q").execute(ctx)
    (entry,) = out.ui["images"]
    with Image.open(env.folders.output_dir / entry["subfolder"] / entry["filename"]) as png:
        pixels = np.asarray(png)
    assert pixels.dtype == np.uint8 and pixels.shape == (2, len(HAND_COMPUTED), 3)
    assert pixels[0, :, 0].tolist() == [b for _, b in HAND_COMPUTED]
    assert (pixels == pixels[:1, :, :1]).all()  # every row and channel quantised alike


def test_every_8_bit_value_survives_load_and_save() -> None:
    """Truncation must not lose a step on images that came from 8 bits: v / 255 * 255 lands on v in float32."""
    row = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(1, 256).repeat(3, 0)).convert("RGB")
    back = np.asarray(tensor_to_pil(pil_to_tensor(row)))
    assert np.array_equal(back, np.asarray(row))


def test_single_channel_images_are_saved_as_greyscale() -> None:
    pil = tensor_to_pil(torch.full((2, 3, 1), 0.5))
    assert pil.mode == "L" and np.asarray(pil).tolist() == [[127] * 3] * 2
