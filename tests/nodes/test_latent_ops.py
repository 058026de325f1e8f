"""Latent nodes against references written in plain numpy from ComfyUI's definitions (nodes.py, nodes_mask.py,
nodes_latent.py), and SaveLatent/LoadLatent through the executor on real files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from latentgraph.engine.executor import Executor
from latentgraph.nodes import load_registry, make_environment
from latentgraph.nodes.latent_op_nodes import (
    LatentBatch,
    LatentBlend,
    LatentComposite,
    LatentCompositeMasked,
    LatentCrop,
    LatentFlip,
    LatentFromBatch,
    LatentRotate,
    RepeatLatentBatch,
)
from safetensors.torch import load_file, save_file


def latent(batch: int = 1, h: int = 8, w: int = 8, seed: int = 0) -> dict:
    return {"samples": torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(seed))}


def run(node) -> object:
    (out,) = node.execute(None)
    return out


@pytest.mark.parametrize(("x", "y", "feather"),
                         [(0, 0, 0), (16, 24, 0), (16, 24, 16), (0, 8, 24), (48, 40, 8), (8, 32, 16)])
def test_latent_composite_pastes_with_comfyui_feather(x, y, feather):
    to, frm = latent(h=8, w=10, seed=1), latent(h=4, w=5, seed=2)
    out = run(LatentComposite(samples_to=to, samples_from=frm, x=x, y=y, feather=feather))["samples"].numpy()
    ref = to["samples"].numpy().copy()
    src = frm["samples"].numpy()
    lx, ly, f = x // 8, y // 8, feather // 8
    h, w = min(4, 8 - ly), min(5, 10 - lx)
    weight = np.ones((h, w))
    for t in range(f):  # ComfyUI's loop: inner edges only, weight (t+1)/f at t from the edge
        if ly != 0:
            weight[t, :] *= (t + 1) / f
        if ly + h < 8:
            weight[h - 1 - t, :] *= (t + 1) / f
        if lx != 0:
            weight[:, t] *= (t + 1) / f
        if lx + w < 10:
            weight[:, w - 1 - t] *= (t + 1) / f
    ref[:, :, ly:ly + h, lx:lx + w] = src[:, :, :h, :w] * weight + ref[:, :, ly:ly + h, lx:lx + w] * (1 - weight)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(to["samples"], latent(h=8, w=10, seed=1)["samples"])  # input untouched


def test_latent_composite_masked_uses_a_resized_mask_and_clips_at_the_edge():
    dest, src = latent(h=8, w=8, seed=3), latent(h=4, w=4, seed=4)
    mask = torch.zeros(8, 8)
    mask[:4, :] = 1.0  # top half of the source, after resizing 8x8 -> 4x4 (exact for a 2x box)
    out = run(LatentCompositeMasked(destination=dest, source=src, x=48, y=40, resize_source=False, mask=mask))
    ref = dest["samples"].numpy().copy()
    m = np.zeros((4, 4))
    m[:2] = 1.0
    # placed at latent (6, 5): only 2 columns and 3 rows are visible
    ref[:, :, 5:8, 6:8] = m[:3, :2] * src["samples"].numpy()[:, :, :3, :2] + (1 - m[:3, :2]) * ref[:, :, 5:8, 6:8]
    np.testing.assert_allclose(out["samples"].numpy(), ref, atol=1e-6)


def test_latent_composite_masked_resize_source_and_batch_repeat():
    dest, src = latent(batch=3, h=4, w=4, seed=5), latent(batch=1, h=2, w=2, seed=6)
    out = run(LatentCompositeMasked(destination=dest, source=src, x=0, y=0, resize_source=True))["samples"]
    resized = torch.nn.functional.interpolate(src["samples"], size=(4, 4), mode="bilinear")
    for b in range(3):
        torch.testing.assert_close(out[b], resized[0])


def test_latent_blend_mixes_and_resizes():
    a, b = latent(seed=7), latent(seed=8)
    out = run(LatentBlend(samples1=a, samples2=b, blend_factor=0.3))["samples"]
    torch.testing.assert_close(out, a["samples"] * 0.3 + b["samples"] * 0.7)
    small = latent(h=4, w=4, seed=9)
    out = run(LatentBlend(samples1=a, samples2=small, blend_factor=0.5))["samples"]
    assert out.shape == a["samples"].shape


def test_flip_and_rotate_follow_comfyui_axes():
    s = latent(h=3, w=5, seed=10)
    arr = s["samples"].numpy()
    np.testing.assert_array_equal(run(LatentFlip(samples=s, flip_method="x-axis: vertically"))["samples"].numpy(),
                                  arr[:, :, ::-1, :])
    np.testing.assert_array_equal(run(LatentFlip(samples=s, flip_method="y-axis: horizontally"))["samples"].numpy(),
                                  arr[:, :, :, ::-1])
    for k, name in enumerate(["none", "90 degrees", "180 degrees", "270 degrees"]):
        out = run(LatentRotate(samples=s, rotation=name))["samples"].numpy()
        ref = arr
        for _ in range(k):  # one clockwise quarter turn: new[r, c] = old[H-1-c, r]
            ref = np.swapaxes(ref, 2, 3)[:, :, :, ::-1]
        np.testing.assert_array_equal(out, ref)
    assert run(LatentRotate(samples=s, rotation="90 degrees"))["samples"].shape == (1, 4, 5, 3)


def test_latent_crop_clamps_the_corner_inside():
    s = latent(h=16, w=16, seed=11)
    out = run(LatentCrop(samples=s, width=64, height=96, x=16, y=8))["samples"]
    torch.testing.assert_close(out, s["samples"][:, :, 1:13, 2:10])
    out = run(LatentCrop(samples=s, width=512, height=512, x=4096, y=4096))["samples"]
    torch.testing.assert_close(out, s["samples"][:, :, 8:, 8:])  # corner kept 8 latent pixels inside


def test_latent_from_batch_keeps_noise_indices_and_masks():
    s = latent(batch=5, seed=12)
    s["noise_mask"] = torch.arange(2, dtype=torch.float32).reshape(2, 1, 1, 1).expand(2, 1, 8, 8)
    out = run(LatentFromBatch(samples=s, batch_index=3, length=4))
    torch.testing.assert_close(out["samples"], s["samples"][3:5])
    assert out["batch_index"] == [3, 4]
    # masks are tiled to the batch first: [0, 1, 0, 1, 0] -> entries 3 and 4
    assert out["noise_mask"][:, 0, 0, 0].tolist() == [1.0, 0.0]
    again = run(LatentFromBatch(samples=out, batch_index=1, length=1))
    assert again["batch_index"] == [4]


def test_repeat_latent_batch_offsets_indices():
    s = latent(batch=2, seed=13)
    out = run(RepeatLatentBatch(samples=s, amount=3))
    assert out["samples"].shape[0] == 6
    torch.testing.assert_close(out["samples"][4:], s["samples"])
    assert "batch_index" not in out
    s["batch_index"] = [3, 4]
    assert run(RepeatLatentBatch(samples=s, amount=3))["batch_index"] == [3, 4, 5, 6, 7, 8]


def test_latent_batch_joins_and_resizes():
    a, b = latent(batch=2, seed=14), latent(batch=1, h=4, w=4, seed=15)
    out = run(LatentBatch(samples1=a, samples2=b))
    assert out["samples"].shape == (3, 4, 8, 8)
    torch.testing.assert_close(out["samples"][:2], a["samples"])
    assert out["batch_index"] == [0, 1, 0]


def test_save_then_load_latent_round_trips_through_the_executor(tmp_path):
    executor = Executor(load_registry(plugins=False), make_environment(tmp_path))
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 32, "batch_size": 2}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "latents/test"}},
    }
    result = executor.run(prompt)
    assert result.status == "success"
    (entry,) = result.outputs["2"]["latents"]
    assert entry == {"filename": "test_00001_.latent", "subfolder": "latents", "type": "output"}
    saved = executor.env.folders.output_dir / "latents" / "test_00001_.latent"
    data = load_file(saved)
    assert data["latent_tensor"].shape == (2, 4, 4, 8) and "latent_format_version_0" in data

    values = torch.randn(1, 4, 2, 3, generator=torch.Generator().manual_seed(0))
    save_file({"latent_tensor": values, "latent_format_version_0": torch.tensor([])},
              str(executor.env.folders.input_dir / "new.latent"))
    save_file({"latent_tensor": values}, str(executor.env.folders.input_dir / "old.latent"))
    load = {"1": {"class_type": "LoadLatent", "inputs": {"latent": "new.latent"}},
            "2": {"class_type": "LatentFlip", "inputs": {"samples": ["1", 0], "flip_method": "x-axis: vertically"}},
            "3": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 0], "filename_prefix": "back"}}}
    assert executor.run(load).status == "success"
    back = load_file(executor.env.folders.output_dir / "back_00001_.latent")["latent_tensor"]
    torch.testing.assert_close(back, values.flip(2))
    load["1"]["inputs"]["latent"] = "old.latent"  # unversioned files were saved scaled by 0.18215
    assert executor.run(load).status == "success"
    old = load_file(executor.env.folders.output_dir / "back_00002_.latent")["latent_tensor"]
    torch.testing.assert_close(old, values.flip(2) / 0.18215)


def test_latent_arithmetic_interpolate_and_seed_behavior():
    from latentgraph.nodes.latent_op_nodes import (
        LatentAdd,
        LatentBatchSeedBehavior,
        LatentInterpolate,
        LatentMultiply,
        LatentSubtract,
    )

    a, b = latent(seed=16), latent(seed=17)
    torch.testing.assert_close(run(LatentAdd(samples1=a, samples2=b))["samples"], a["samples"] + b["samples"])
    torch.testing.assert_close(run(LatentSubtract(samples1=a, samples2=b))["samples"], a["samples"] - b["samples"])
    torch.testing.assert_close(run(LatentMultiply(samples=a, multiplier=-2.5))["samples"], a["samples"] * -2.5)
    small = latent(h=4, w=4, seed=18)  # resized bilinearly to samples1's size first
    resized = torch.nn.functional.interpolate(small["samples"], size=(8, 8), mode="bilinear")
    torch.testing.assert_close(run(LatentAdd(samples1=a, samples2=small))["samples"], a["samples"] + resized)
    out = run(LatentInterpolate(samples1=a, samples2=b, ratio=0.3))["samples"].numpy()
    x, y = a["samples"].numpy(), b["samples"].numpy()
    for r in range(8):  # per latent pixel: mix unit vectors, renormalise, scale by the mixed lengths
        for c in range(8):
            u, v = x[0, :, r, c], y[0, :, r, c]
            mixed = u / np.linalg.norm(u) * 0.3 + v / np.linalg.norm(v) * 0.7
            expected = mixed / np.linalg.norm(mixed) * (np.linalg.norm(u) * 0.3 + np.linalg.norm(v) * 0.7)
            np.testing.assert_allclose(out[0, :, r, c], expected, rtol=1e-5, atol=1e-6)
    batch = latent(batch=3, seed=19)
    assert run(LatentBatchSeedBehavior(samples=batch, seed_behavior="fixed"))["batch_index"] == [0, 0, 0]
    batch["batch_index"] = [5, 6, 7]
    assert run(LatentBatchSeedBehavior(samples=batch, seed_behavior="fixed"))["batch_index"] == [5, 5, 5]
    assert "batch_index" not in run(LatentBatchSeedBehavior(samples=batch, seed_behavior="random"))
