"""Mask nodes against references from ComfyUI's definitions: plain numpy loops, scipy's grey morphology (what
ComfyUI's GrowMask calls) and PIL for LoadImageMask."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from latentgraph.engine.context import RunContext
from latentgraph.engine.interrupt import InterruptToken
from latentgraph.nodes import make_environment
from latentgraph.nodes.mask_nodes import (
    CropMask,
    FeatherMask,
    GrowMask,
    ImageToMask,
    InvertMask,
    LoadImageMask,
    MaskComposite,
    MaskPreview,
    MaskToImage,
    SolidMask,
    ThresholdMask,
)
from PIL import Image


def run(node):
    (out,) = node.execute(None)
    return out


def rand_mask(h: int = 9, w: int = 11, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, h, w, generator=torch.Generator().manual_seed(seed))


def test_load_image_mask_reads_a_channel_and_inverts_alpha(tmp_path):
    env = make_environment(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(env.folders.input_dir / "m.png")
    Image.fromarray(pixels[..., :3], "RGB").save(env.folders.input_dir / "rgb.png")
    ctx = RunContext(env=env, node_id="1", prompt_id="p", prompt={}, extra_data={}, interrupt=InterruptToken(),
                     sink=lambda event, data: None)
    for channel, index in (("red", 0), ("green", 1), ("blue", 2)):
        (mask,) = LoadImageMask(image="m.png", channel=channel).execute(ctx)
        assert mask.shape == (1, 5, 7)
        np.testing.assert_allclose(mask[0].numpy(), pixels[..., index] / 255.0, atol=1e-7)
    (alpha,) = LoadImageMask(image="m.png", channel="alpha").execute(ctx)
    np.testing.assert_allclose(alpha[0].numpy(), 1.0 - pixels[..., 3] / 255.0, atol=1e-7)
    (opaque,) = LoadImageMask(image="rgb.png", channel="alpha").execute(ctx)  # no alpha: fully opaque, mask 0
    assert float(opaque.abs().max()) == 0.0


def test_mask_image_conversions():
    mask = rand_mask(batch=2)
    image = run(MaskToImage(mask=mask))
    assert image.shape == (2, 9, 11, 3)
    for c in range(3):
        torch.testing.assert_close(image[..., c], mask)
    rgb = torch.rand(2, 4, 5, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(run(ImageToMask(image=rgb, channel="green")), rgb[..., 1])
    with pytest.raises(ValueError, match="alpha"):
        run(ImageToMask(image=rgb, channel="alpha"))


def test_solid_invert_crop_threshold():
    solid = run(SolidMask(value=0.25, width=6, height=3))
    assert solid.shape == (1, 3, 6) and float(solid.min()) == float(solid.max()) == 0.25
    mask = rand_mask(seed=2)
    torch.testing.assert_close(run(InvertMask(mask=mask)), 1.0 - mask)
    torch.testing.assert_close(run(CropMask(mask=mask[0], x=2, y=3, width=4, height=50)), mask[:, 3:, 2:6])
    torch.testing.assert_close(run(ThresholdMask(mask=mask, value=0.5)), (mask > 0.5).float())


@pytest.mark.parametrize("operation", ["multiply", "add", "subtract", "and", "or", "xor"])
@pytest.mark.parametrize(("x", "y"), [(0, 0), (3, 2), (10, 8), (20, 20)])
def test_mask_composite(operation, x, y):
    dest, src = rand_mask(seed=3).numpy()[0], rand_mask(h=4, w=5, seed=4).numpy()[0]
    out = run(MaskComposite(destination=torch.from_numpy(dest), source=torch.from_numpy(src), x=x, y=y,
                            operation=operation)).numpy()[0]
    ref = dest.copy()
    for i in range(y, min(y + 4, 9)):
        for j in range(x, min(x + 5, 11)):
            a, b = dest[i, j], src[i - y, j - x]
            ref[i, j] = {"multiply": a * b, "add": a + b, "subtract": a - b,
                         "and": float(round(a) and round(b)), "or": float(round(a) or round(b)),
                         "xor": float(bool(round(a)) != bool(round(b)))}[operation]
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-6)


@pytest.mark.parametrize(("left", "top", "right", "bottom"), [(0, 0, 0, 0), (3, 0, 0, 0), (0, 2, 4, 3),
                                                              (2, 1, 1, 20)])
def test_feather_mask_matches_comfyui_loop(left, top, right, bottom):
    mask = torch.ones(1, 6, 8)
    out = run(FeatherMask(mask=mask, left=left, top=top, right=right, bottom=bottom)).numpy()[0]
    ref = np.ones((6, 8))
    left, right, top, bottom = min(left, 8), min(right, 8), min(top, 6), min(bottom, 6)
    for i in range(left):  # ComfyUI's loops, with its `-i` indexing for right and bottom
        ref[:, i] *= (i + 1.0) / left
    for i in range(right):
        ref[:, -i] *= (i + 1) / right
    for i in range(top):
        ref[i, :] *= (i + 1) / top
    for i in range(bottom):
        ref[-i, :] *= (i + 1) / bottom
    np.testing.assert_allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("expand", [-2, -1, 0, 1, 3])
@pytest.mark.parametrize("tapered", [True, False])
def test_grow_mask_equals_scipy_grey_morphology(expand, tapered):
    masks = (rand_mask(h=12, w=13, seed=5, batch=2) > 0.8).float() * rand_mask(h=12, w=13, seed=6, batch=2)
    out = run(GrowMask(mask=masks, expand=expand, tapered_corners=tapered)).numpy()
    c = 0 if tapered else 1
    kernel = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
    for b in range(2):
        ref = masks[b].numpy()
        for _ in range(abs(expand)):
            op = scipy.ndimage.grey_erosion if expand < 0 else scipy.ndimage.grey_dilation
            ref = op(ref, footprint=kernel)
        np.testing.assert_allclose(out[b], ref, atol=1e-7)


def test_image_color_to_mask_marks_the_exact_colour_with_255():
    from latentgraph.nodes.mask_nodes import ImageColorToMask

    pixels = np.zeros((1, 2, 3, 3), dtype=np.float32)
    pixels[0, 0, 1] = [255 / 255, 128 / 255, 1 / 255]
    pixels[0, 1, 2] = [255 / 255, 128 / 255, 2 / 255]
    (mask,) = ImageColorToMask(image=torch.from_numpy(pixels), color=0xFF8001).execute(None)
    expected = np.zeros((1, 2, 3), dtype=np.float32)
    expected[0, 0, 1] = 255.0
    np.testing.assert_array_equal(mask.numpy(), expected)


def test_mask_preview_writes_each_mask_as_a_grey_temp_png(tmp_path):
    """ComfyUI's MaskPreview saves mask[b] as an RGB image with the mask in all three channels, quantised as
    SaveImage does (clip(255 * x) truncated), in the temp folder; a [H,W] mask is a batch of one."""
    env = make_environment(tmp_path)
    ctx = RunContext(env=env, node_id="1", prompt_id="p", prompt={}, extra_data={}, interrupt=InterruptToken(),
                     sink=lambda event, data: None)
    masks = rand_mask(h=6, w=5, seed=3, batch=2)
    result = MaskPreview(mask=masks).execute(ctx)
    saved = result.ui["images"]
    assert [entry["type"] for entry in saved] == ["temp", "temp"]
    for entry, mask in zip(saved, masks):
        with Image.open(env.folders.temp_dir / entry["subfolder"] / entry["filename"]) as png:
            assert png.mode == "RGB"
            pixels = np.asarray(png)
        expected = np.clip(255.0 * mask.numpy(), 0, 255).astype(np.uint8)
        for channel in range(3):
            np.testing.assert_array_equal(pixels[..., channel], expected)
    (single,) = MaskPreview(mask=masks[0]).execute(ctx).ui["images"]
    with Image.open(env.folders.temp_dir / single["subfolder"] / single["filename"]) as png:
        assert png.size == (5, 6)
    assert not list(env.folders.output_dir.glob("*.png"))  # previews are not kept with the outputs
