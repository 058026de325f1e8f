"""A seconds-long demo training run at tiny sizes: its loss falls, and the checkpoint it writes loads through
CheckpointLoaderSimple and runs the shipped txt2img workflow."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from latentgraph.nodes.sd.detect import METADATA_KEY
from latentgraph.training.demo import PRESETS, TrainState, loss_history, train_demo
from latentgraph.training.evaluate import load_workflow, make_executor
from latentgraph.training.export import write_diffusers_folder, write_single_file
from latentgraph.training.models import VAE_NORM_GROUPS
from safetensors import safe_open

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "txt2img.json"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainState]:
    folder = tmp_path_factory.mktemp("tiny-run")
    return folder, train_demo(folder, copy.deepcopy(PRESETS["tiny"]), progress=False)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_losses_fall(run: tuple[Path, TrainState]) -> None:
    folder, state = run
    assert state.stage == "done"
    vae, unet = loss_history(folder, "vae"), loss_history(folder, "unet")
    assert len(unet) == PRESETS["tiny"].unet_steps
    assert len(loss_history(folder, "decoder")) == PRESETS["tiny"].decoder_steps
    assert vae and all(0 < loss < 2 for loss in vae)  # 30 steps from the hand-set start: no trend to test
    assert _mean(unet[-15:]) < _mean(unet[:15])


def test_finished_run_resumes_to_the_same_state(run: tuple[Path, TrainState]) -> None:
    folder, state = run
    again = train_demo(folder, progress=False)
    assert again.step == state.step and again.stage == "done"
    for key, value in state.ema_unet.items():
        assert torch.equal(value, again.ema_unet[key])


def test_more_decoder_steps_leave_encoder_and_unet_alone(run: tuple[Path, TrainState], tmp_path: Path) -> None:
    """A finished run can sharpen its decoder later: its latents, and the UNet trained on them, stay valid."""
    folder, state = run
    shutil.copytree(folder, tmp_path / "run")
    config = copy.deepcopy(state.config)
    config.decoder_steps += 5
    refined = train_demo(tmp_path / "run", config, progress=False)
    assert refined.decoder_step == config.decoder_steps
    changed = {k for k, v in state.vae.items() if not torch.equal(v, refined.vae[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    assert all(torch.equal(v, refined.ema_unet[k]) for k, v in state.ema_unet.items())


def test_checkpoint_runs_the_txt2img_workflow(run: tuple[Path, TrainState], tmp_path: Path) -> None:
    _, state = run
    models = tmp_path / "models"
    write_single_file(state, models / "tiny-demo.safetensors")
    write_diffusers_folder(state, models / "tiny-demo")
    with safe_open(str(models / "tiny-demo.safetensors"), framework="pt") as f:
        hints = json.loads(f.metadata()[METADATA_KEY])
    assert hints["vae"]["norm_num_groups"] == VAE_NORM_GROUPS  # the loader builds the VAE from this hint
    executor = make_executor(tmp_path / "base", extra_checkpoints=models)
    for name in ("tiny-demo.safetensors", "tiny-demo"):
        prompt = load_workflow(WORKFLOW)
        loader = next(i for i, n in prompt.items() if n["class_type"] == "CheckpointLoaderSimple")
        prompt[loader]["inputs"]["ckpt_name"] = name
        for node in prompt.values():
            if node["class_type"] == "KSampler":
                node["inputs"]["steps"] = 4
        result = executor.run(prompt)
        assert result.status == "success", result.error
        images = [img for out in result.outputs.values() for img in out.get("images", [])]
        assert len(images) == 1


def test_a_model_named_like_a_bundled_one_is_refused_not_silently_replaced(run: tuple[Path, TrainState],
                                                                          tmp_path: Path) -> None:
    """The bundled folder is searched first, so a trained file named latentgraph-demo.safetensors would be evaluated
    as the shipped model: the evaluation refuses it and says to rename it; under its own name it is the one found."""
    _, state = run
    models = tmp_path / "models"
    shadowed = write_single_file(state, models / "latentgraph-demo.safetensors")
    with pytest.raises(ValueError, match="copy it under another name"):
        make_executor(tmp_path / "base", extra_checkpoints=models)
    renamed = shadowed.rename(models / "tiny-demo.safetensors")
    executor = make_executor(tmp_path / "base", extra_checkpoints=models)
    assert executor.env.folders.find("checkpoints", renamed.name) == renamed.resolve()
