"""Image nodes against references written from ComfyUI's definitions: explicit loops for padding, compositing and
filtering, PIL for the outpainting run through the executor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from latentgraph.engine.executor import Executor
from latentgraph.nodes import load_registry, make_environment
from latentgraph.nodes.image_edit_nodes import (
    EmptyImage,
    ImageBlend,
    ImageBlur,
    ImageCompositeMasked,
    ImageCrop,
    ImagePadForOutpaint,
    ImageScaleBy,
    ImageSharpen,
)
from PIL import Image


def run(node):
    return node.execute(None)


def rand_image(b: int = 1, h: int = 6, w: int = 7, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


def test_scale_by_and_crop():
    image = rand_image(h=10, w=20)
    (out,) = run(ImageScaleBy(image=image, upscale_method="nearest-exact", scale_by=0.5))
    assert out.shape == (1, 5, 10, 3)
    torch.testing.assert_close(out, image[:, 1::2, 1::2])  # nearest-exact: source floor((i + 0.5) * 2) = 2i + 1
    (crop,) = run(ImageCrop(image=image, width=4, height=3, x=2, y=1))
    torch.testing.assert_close(crop, image[:, 1:4, 2:6])
    (edge,) = run(ImageCrop(image=image, width=4, height=3, x=100, y=100))  # corner moves onto the last pixel
    torch.testing.assert_close(edge, image[:, 9:, 19:])


@pytest.mark.parametrize(("left", "top", "right", "bottom", "feathering"),
                         [(8, 0, 0, 0, 3), (0, 8, 16, 8, 4), (8, 8, 8, 8, 0), (8, 0, 8, 0, 10)])
def test_pad_for_outpaint_matches_comfyui_loop(left, top, right, bottom, feathering):
    image = rand_image(b=2, h=12, w=14, seed=1)
    padded, mask = run(ImagePadForOutpaint(image=image, left=left, top=top, right=right, bottom=bottom,
                                           feathering=feathering))
    d2, d3 = 12, 14
    ref_img = np.full((2, d2 + top + bottom, d3 + left + right, 3), 0.5, dtype=np.float32)
    ref_img[:, top:top + d2, left:left + d3] = image.numpy()
    ref_mask = np.ones((d2 + top + bottom, d3 + left + right), dtype=np.float32)
    inner = np.zeros((d2, d3), dtype=np.float32)
    if feathering > 0 and feathering * 2 < d2 and feathering * 2 < d3:
        for i in range(d2):
            for j in range(d3):
                d = min(i if top != 0 else d2, d2 - i if bottom != 0 else d2,
                        j if left != 0 else d3, d3 - j if right != 0 else d3)
                if d < feathering:
                    inner[i, j] = ((feathering - d) / feathering) ** 2
    ref_mask[top:top + d2, left:left + d3] = inner
    np.testing.assert_array_equal(padded.numpy(), ref_img)
    np.testing.assert_allclose(mask.numpy(), ref_mask, atol=1e-6)


def test_image_composite_masked_with_alpha_fix_and_offset():
    dest, src = rand_image(h=6, w=7, c=3, seed=2), rand_image(h=3, w=4, c=4, seed=3)  # RGBA source: alpha dropped
    mask = torch.zeros(3, 4)
    mask[:, :2] = 1.0
    (out,) = run(ImageCompositeMasked(destination=dest, source=src, x=5, y=4, resize_source=False, mask=mask))
    ref = dest.numpy().copy()
    for i in range(4, 6):
        for j in range(5, 7):
            m = mask[i - 4, j - 5].item()
            ref[0, i, j] = m * src[0, i - 4, j - 5, :3].numpy() + (1 - m) * ref[0, i, j]
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)
    (whole,) = run(ImageCompositeMasked(destination=dest, source=src[..., :3], x=0, y=0, resize_source=True))
    assert whole.shape == dest.shape


@pytest.mark.parametrize("mode", ["normal", "multiply", "screen", "overlay", "soft_light", "difference"])
def test_image_blend_modes(mode):
    a, b = rand_image(seed=4).numpy(), rand_image(seed=5).numpy()
    (out,) = run(ImageBlend(image1=torch.from_numpy(a), image2=torch.from_numpy(b), blend_factor=0.7, blend_mode=mode))
    g = np.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, np.sqrt(a))
    blended = {"normal": b, "multiply": a * b, "screen": 1 - (1 - a) * (1 - b),
               "overlay": np.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b)),
               "soft_light": np.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (g - a)),
               "difference": a - b}[mode]
    np.testing.assert_allclose(out.numpy(), np.clip(a * 0.3 + blended * 0.7, 0, 1), atol=1e-6)


def reference_filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Direct correlation of each channel with the kernel over numpy's reflect padding."""
    r = kernel.shape[0] // 2
    padded = np.pad(image, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    out = np.zeros_like(image)
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            out += kernel[dy, dx] * padded[:, dy:dy + image.shape[1], dx:dx + image.shape[2], :]
    return out


def comfy_gaussian(size: int, sigma: float) -> np.ndarray:
    axis = np.linspace(-1, 1, size)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    g = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return g / g.sum()


@pytest.mark.parametrize(("radius", "sigma"), [(1, 1.0), (2, 0.5), (3, 3.0)])
def test_blur_and_sharpen_match_direct_convolution(radius, sigma):
    image = rand_image(b=2, h=9, w=10, seed=6)
    (blurred,) = run(ImageBlur(image=image, blur_radius=radius, sigma=sigma))
    np.testing.assert_allclose(blurred.numpy(), reference_filter(image.numpy(), comfy_gaussian(2 * radius + 1, sigma)),
                               atol=1e-5)
    kernel = comfy_gaussian(2 * radius + 1, sigma) * -(0.5 * 10)
    kernel[radius, radius] = kernel[radius, radius] - kernel.sum() + 1.0
    (sharp,) = run(ImageSharpen(image=image, sharpen_radius=radius, sigma=sigma, alpha=0.5))
    np.testing.assert_allclose(sharp.numpy(), np.clip(reference_filter(image.numpy(), kernel), 0, 1), atol=1e-5)


def test_empty_image_colour():
    (image,) = run(EmptyImage(width=3, height=2, batch_size=2, color=0xFF8001))
    assert image.shape == (2, 2, 3, 3)
    np.testing.assert_allclose(image[1, 1, 2].numpy(), [1.0, 128 / 255, 1 / 255], atol=1e-7)


def test_outpaint_workflow_runs_through_the_executor(tmp_path):
    """Pad, composite a blurred copy back through the pad mask, save: the chain an outpainting workflow builds."""
    executor = Executor(load_registry(plugins=False), make_environment(tmp_path))
    Image.new("RGB", (16, 16), (200, 40, 0)).save(executor.env.folders.input_dir / "in.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "ImagePadForOutpaint", "inputs": {"image": ["1", 0], "left": 8, "top": 0, "right": 0,
                                                              "bottom": 0, "feathering": 0}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 24, "height": 16, "batch_size": 1, "color": 0x0000FF}},
        "4": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["2", 0], "source": ["3", 0],
                                                               "x": 0, "y": 0, "resize_source": False,
                                                               "mask": ["2", 1]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "outpaint"}},
    }
    result = executor.run(prompt)
    assert result.status == "success", result
    with Image.open(executor.env.folders.output_dir / "outpaint_00001_.png") as png:
        pixels = np.asarray(png)
    assert pixels.shape == (16, 24, 3)
    assert pixels[5, 3].tolist() == [0, 0, 255]  # the new border took the source
    assert pixels[5, 12].tolist() == [200, 40, 0]  # the old image stayed


def test_repeat_and_from_batch():
    from latentgraph.nodes.image_edit_nodes import ImageFromBatch, RepeatImageBatch

    image = rand_image(b=3, seed=7)
    (repeated,) = run(RepeatImageBatch(image=image, amount=2))
    torch.testing.assert_close(repeated, torch.cat([image, image]))
    (taken,) = run(ImageFromBatch(image=image, batch_index=1, length=5))
    torch.testing.assert_close(taken, image[1:])
    (last,) = run(ImageFromBatch(image=image, batch_index=99, length=1))
    torch.testing.assert_close(last, image[2:])
