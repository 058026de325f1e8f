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
