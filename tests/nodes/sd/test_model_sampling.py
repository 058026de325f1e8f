"""ModelSamplingDiscrete on the tiny SD1 weights. Reference: the same weights saved as a v-prediction checkpoint
(the file's marker) sample to the same pixels as the eps checkpoint told to sample as v_prediction, and back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from latentgraph.engine.executor import Executor
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd.checkpoint_save import save_single_file

from tests.nodes.sd.conftest import TINY
from tests.nodes.sd.sd_helpers import output_pixels, txt2img

pytestmark = pytest.mark.usefixtures("one_thread")

V_TINY = "tiny-v.safetensors"


@pytest.fixture(scope="module")
def executor(registry, tiny_file: Path, tiny_parts, tmp_path_factory: pytest.TempPathFactory) -> Executor:
    base = tmp_path_factory.mktemp("base")
    folder = base / "models" / "checkpoints"
    folder.mkdir(parents=True)
    os.link(tiny_file, folder / TINY)
    save_single_file(tiny_parts.unet, tiny_parts.vae, tiny_parts.text_encoder, folder / V_TINY,
                     prediction_type="v_prediction")
    return Executor(registry, make_environment(base))


def pixels(executor: Executor, ckpt: str, sampling: str | None) -> np.ndarray:
    workflow = txt2img(ckpt, steps=3, size=32, prefix=f"ms_{ckpt}_{sampling}")
    if sampling is not None:
        workflow["20"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["4", 0], "sampling": sampling,
                                                                            "zsnr": False}}
        workflow["3"]["inputs"]["model"] = ["20", 0]
    result = executor.run(workflow)
    assert result.status == "success", result.error
    return output_pixels(executor.env, result)[0]


def test_sampling_as_v_prediction_equals_the_v_checkpoint(executor: Executor) -> None:
    v_file = pixels(executor, V_TINY, None)
    eps_file = pixels(executor, TINY, None)
    assert not np.array_equal(v_file, eps_file)  # the prediction type matters for these weights
    np.testing.assert_array_equal(pixels(executor, TINY, "v_prediction"), v_file)
    np.testing.assert_array_equal(pixels(executor, V_TINY, "eps"), eps_file)
    np.testing.assert_array_equal(pixels(executor, TINY, "eps"), eps_file)


@pytest.mark.parametrize(("sampling", "zsnr", "field"), [("lcm", False, "sampling"), ("img_to_img", False, "sampling"),
                                                         ("eps", True, "zsnr")])
def test_unsupported_samplings_are_refused_at_validation(executor: Executor, sampling, zsnr, field) -> None:
    workflow = txt2img(TINY, steps=1, size=32)
    workflow["20"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["4", 0], "sampling": sampling,
                                                                        "zsnr": zsnr}}
    workflow["3"]["inputs"]["model"] = ["20", 0]
    validation = executor.validate(workflow)
    assert not validation.ok
    errors = validation.node_errors["20"]["errors"]
    assert any(e["extra_info"].get("input_name") == field for e in errors), errors
