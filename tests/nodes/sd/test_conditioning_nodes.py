"""Conditioning nodes: their arithmetic against ComfyUI's definitions, and their effect on real sampling with the
tiny SD1 checkpoint (strength weighting is a normalised average, as in ComfyUI's calc_cond_batch)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from latentgraph.nodes.sd.conditioning_nodes import (
    ConditioningAverage,
    ConditioningConcat,
    ConditioningSetAreaStrength,
    ConditioningZeroOut,
)
from safetensors.torch import load_file

from tests.nodes.sd.conftest import TINY
from tests.nodes.sd.sd_helpers import output_pixels, txt2img

pytestmark = pytest.mark.usefixtures("one_thread")


def cond(tokens: int, seed: int, pooled: bool = True) -> list:
    g = torch.Generator().manual_seed(seed)
    options = {"pooled_output": torch.randn(1, 6, generator=g) if pooled else None, "extra": "kept"}
    return [[torch.randn(1, tokens, 8, generator=g), options]]


def run(node) -> list:
    (out,) = node.execute(None)
    return out


def test_zero_out_keeps_shapes_and_options():
    source = cond(77, 0) + cond(154, 1, pooled=False)
    out = run(ConditioningZeroOut(conditioning=source))
    assert [e[0].shape for e in out] == [(1, 77, 8), (1, 154, 8)]
    assert all(float(e[0].abs().sum()) == 0 for e in out)
    assert float(out[0][1]["pooled_output"].abs().sum()) == 0 and out[1][1]["pooled_output"] is None
    assert out[0][1]["extra"] == "kept" and float(source[0][1]["pooled_output"].abs().sum()) > 0  # input untouched


def test_concat_appends_the_first_entry_of_from():
    to, frm = cond(77, 2) + cond(77, 3), cond(154, 4) + cond(77, 5)
    out = run(ConditioningConcat(conditioning_to=to, conditioning_from=frm))
    for (emb, opts), (orig, orig_opts) in zip(out, to):
        assert emb.shape == (1, 231, 8)
        torch.testing.assert_close(emb[:, :77], orig)
        torch.testing.assert_close(emb[:, 77:], frm[0][0])
        assert opts is not orig_opts and opts["pooled_output"] is orig_opts["pooled_output"]


@pytest.mark.parametrize(("to_tokens", "from_tokens"), [(77, 77), (154, 77), (77, 154)])
def test_average_mixes_tokens_and_pooled(to_tokens, from_tokens):
    to, frm = cond(to_tokens, 6), cond(from_tokens, 7)
    (emb, opts), = run(ConditioningAverage(conditioning_to=to, conditioning_from=frm, conditioning_to_strength=0.3))
    t, f = to[0][0].numpy(), frm[0][0].numpy()
    padded = np.zeros_like(t)
    n = min(t.shape[1], f.shape[1])
    padded[:, :n] = f[:, :n]  # from is cut or zero-padded to to's length
    np.testing.assert_allclose(emb.numpy(), t * 0.3 + padded * 0.7, atol=1e-6)
    np.testing.assert_allclose(opts["pooled_output"].numpy(),
                               to[0][1]["pooled_output"].numpy() * 0.3 + frm[0][1]["pooled_output"].numpy() * 0.7,
                               atol=1e-6)
    no_pooled = cond(77, 8, pooled=False)
    (_, opts), = run(ConditioningAverage(conditioning_to=no_pooled, conditioning_from=frm,
                                         conditioning_to_strength=0.5))
    assert opts["pooled_output"] is frm[0][1]["pooled_output"]  # to has none: from's is taken as it is


def workflow_with(extra: dict, positive: list) -> dict:
    workflow = txt2img(TINY, steps=3, size=32)
    workflow.update(copy.deepcopy(extra))
    workflow["3"]["inputs"]["positive"] = positive
    return workflow


def test_strength_weights_are_a_normalised_average_in_the_sampler(shared_executor):
    """Combine(A @ 1, B @ 0) samples as A alone; Combine(A @ 2, B @ 2) as Combine(A @ 1, B @ 1)."""
    env = shared_executor.env
    nodes = {
        "20": {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue lake", "clip": ["4", 1]}},
        "21": {"class_type": "ConditioningSetAreaStrength", "inputs": {"conditioning": ["6", 0], "strength": 1.0}},
        "22": {"class_type": "ConditioningSetAreaStrength", "inputs": {"conditioning": ["20", 0], "strength": 0.0}},
        "23": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["21", 0],
                                                               "conditioning_2": ["22", 0]}},
    }

    def pixels(workflow: dict) -> np.ndarray:
        result = shared_executor.run(workflow)
        assert result.status == "success", result
        return output_pixels(env, result)[0].astype(np.int16)

    alone = pixels(workflow_with({}, ["6", 0]))
    weighted = pixels(workflow_with(nodes, ["23", 0]))
    assert np.abs(weighted - alone).max() <= 1
    nodes["22"]["inputs"]["strength"] = 1.0
    equal = pixels(workflow_with(nodes, ["23", 0]))
    assert np.abs(equal - alone).max() > 1  # B now counts
    nodes["21"]["inputs"]["strength"] = nodes["22"]["inputs"]["strength"] = 2.0
    assert np.abs(pixels(workflow_with(nodes, ["23", 0])) - equal).max() <= 1


def test_zero_out_concat_and_average_run_through_the_sampler(shared_executor):
    nodes = {
        "20": {"class_type": "CLIPTextEncode", "inputs": {"text": "a very long prompt " * 30, "clip": ["4", 1]}},
        "21": {"class_type": "ConditioningConcat", "inputs": {"conditioning_to": ["6", 0],
                                                              "conditioning_from": ["20", 0]}},
        "22": {"class_type": "ConditioningAverage", "inputs": {"conditioning_to": ["21", 0],
                                                               "conditioning_from": ["6", 0],
                                                               "conditioning_to_strength": 0.5}},
        "23": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["7", 0]}},
    }
    workflow = workflow_with(nodes, ["22", 0])
    workflow["3"]["inputs"]["negative"] = ["23", 0]
    result = shared_executor.run(workflow)
    assert result.status == "success", result
    assert output_pixels(shared_executor.env, result)[0].shape == (32, 32, 3)


def test_set_area_strength_sets_only_strength():
    out = run(ConditioningSetAreaStrength(conditioning=cond(77, 9), strength=2.5))
    assert out[0][1]["strength"] == 2.5 and out[0][1]["extra"] == "kept"


def test_inpaint_model_conditioning_encodes_image_and_greyed_image(shared_executor):
    """Reference (ComfyUI's InpaintModelConditioning): mask resized bilinearly to the image and cropped with it to
    multiples of 8; latent = encode(image), noise_mask = that mask; concat_latent_image = encode(image with the
    pixels where round(mask) == 1 set to 0.5), in both conditionings."""
    from latentgraph.nodes.sd.conditioning_nodes import InpaintModelConditioning
    from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
    from latentgraph.nodes.sd.vae_nodes import encode

    from tests.nodes.sd.sd_helpers import run_context

    ctx = run_context(shared_executor.env)
    vae = CheckpointLoaderSimple(ckpt_name=TINY).execute(ctx)[2]
    pixels = torch.rand(1, 36, 42, 3, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, 18, 21)
    mask[:, 4:12, 5:15] = 1.0
    positive, negative = cond(77, 10), cond(77, 11)
    pos, neg, latent = InpaintModelConditioning(positive=positive, negative=negative, vae=vae, pixels=pixels,
                                                mask=mask, noise_mask=True).execute(ctx)
    big = torch.nn.functional.interpolate(mask[:, None], size=(36, 42), mode="bilinear")[:, :, 2:34, 1:41]
    image = pixels[:, 2:34, 1:41]
    greyed = torch.where(big.round()[:, 0, :, :, None] == 1, torch.full_like(image, 0.5), image)
    torch.testing.assert_close(latent["noise_mask"], big)
    torch.testing.assert_close(latent["samples"], encode(vae, image))
    for entries in (pos, neg):
        torch.testing.assert_close(entries[0][1]["concat_latent_image"], encode(vae, greyed))
        torch.testing.assert_close(entries[0][1]["concat_mask"], big)
    assert pos[0][0] is positive[0][0] and "concat_mask" not in positive[0][1]
    (_, _, no_mask) = InpaintModelConditioning(positive=positive, negative=negative, vae=vae, pixels=pixels,
                                               mask=mask, noise_mask=False).execute(ctx)
    assert "noise_mask" not in no_mask


def test_inpaint_model_conditioning_workflow_samples_only_the_masked_area(shared_executor):
    workflow = txt2img(TINY, steps=2, size=32)
    workflow.update({
        "30": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0x808080}},
        "31": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 16, "height": 32}},
        "32": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 32, "height": 32}},
        "33": {"class_type": "MaskComposite", "inputs": {"destination": ["32", 0], "source": ["31", 0], "x": 16,
                                                         "y": 0, "operation": "add"}},
        "34": {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "vae": ["4", 2], "pixels": ["30", 0], "mask": ["33", 0],
            "noise_mask": True}},
    })
    workflow["3"]["inputs"].update({"positive": ["34", 0], "negative": ["34", 1], "latent_image": ["34", 2]})
    workflow["40"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["30", 0], "vae": ["4", 2]}}
    workflow["41"] = {"class_type": "SaveLatent", "inputs": {"samples": ["40", 0], "filename_prefix": "plain"}}
    workflow["42"] = {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "inpainted"}}
    result = shared_executor.run(workflow)
    assert result.status == "success", result.error
    out = shared_executor.env.folders.output_dir
    plain = load_file(out / result.outputs["41"]["latents"][0]["filename"])["latent_tensor"]
    inpainted = load_file(out / result.outputs["42"]["latents"][0]["filename"])["latent_tensor"]
    # the mask is 0 on the left 16 pixels: those 2 latent columns keep the encoded image, the rest is sampled
    torch.testing.assert_close(inpainted[..., :2], plain[..., :2], atol=1e-4, rtol=1e-4)
    assert float((inpainted[..., 2:] - plain[..., 2:]).abs().max()) > 0.1
