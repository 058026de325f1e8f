"""LoRA fine-tuning from the command line: bad folders are refused before training; a run writes a kohya-layout
file where LoraLoader lists it at once, with a preview sheet beside it; the CLI's defaults are the trainer's.

What a LoRA learns is tested in test_lora_learning.py, and train == LoraLoader == diffusers in
test_lora_equivalence.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from latentgraph.nodes.sd.loader_nodes import DEFAULT_CHECKPOINT
from latentgraph.training.dataset import POSITIONS, SHAPES, SIZES, Scene, write_folder
from latentgraph.training.evaluate import Settings, generate, load_workflow, make_executor
from latentgraph.training.lora import DatasetError, LoraConfig, scan_dataset
from PIL import Image
from safetensors import safe_open

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "lora.json"
PALETTE = {"cyan": (0, 200, 210)}


def _cyan_scenes(count: int) -> list[Scene]:
    backgrounds = ["white", "black", "purple", "yellow"]
    return [
        Scene("cyan", SHAPES[i % len(SHAPES)], list(SIZES)[i % 2], list(POSITIONS)[i % len(POSITIONS)],
              backgrounds[i % len(backgrounds)])
        for i in range(count)
    ]


def test_bad_folders_are_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        scan_dataset(tmp_path / "empty")
    folder = tmp_path / "data"
    paths = write_folder(_cyan_scenes(3), folder, palette=PALETTE)
    paths[0].with_suffix(".txt").unlink()
    paths[1].write_bytes(b"not a png")
    with pytest.raises(DatasetError) as error:
        scan_dataset(folder)
    message = str(error.value)
    assert "2 problem(s)" in message and "no caption file 00000.txt" in message and "00001.png" in message
    paths[2].with_suffix(".txt").write_text("  \n")
    with pytest.raises(DatasetError, match="empty"):
        scan_dataset(folder)


def test_kohya_repeat_folders_repeat_their_images(tmp_path: Path) -> None:
    write_folder(_cyan_scenes(2), tmp_path / "3_cyan", palette=PALETTE)
    examples = scan_dataset(tmp_path)
    assert [e.repeats for e in examples] == [3, 3]


def test_cli_reports_bad_data_without_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from latentgraph.cli.main import main

    write_folder(_cyan_scenes(2), tmp_path / "data", palette=PALETTE)
    (tmp_path / "data" / "00001.txt").unlink()
    code = main(["train", "lora", "--data", str(tmp_path / "data"), "--base", DEFAULT_CHECKPOINT,
                 "--base-dir", str(tmp_path)])
    assert code == 2
    assert "no caption file 00001.txt" in capsys.readouterr().err


def test_cli_trains_into_the_loras_folder_with_previews(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from latentgraph.cli.main import main
    from latentgraph.nodes import load_registry, make_environment

    write_folder(_cyan_scenes(2), tmp_path / "cyan", palette=PALETTE)
    code = main(["train", "lora", "--data", str(tmp_path / "cyan"), "--base", DEFAULT_CHECKPOINT, "--base-dir",
                 str(tmp_path / "base"), "--steps", "4", "--batch-size", "1", "--preview-every", "2",
                 "--threads", "1", "--quiet"])
    assert code == 0
    out = tmp_path / "base" / "models" / "loras" / "cyan.safetensors"
    with safe_open(str(out), framework="pt") as f:
        keys = list(f.keys())
        metadata = f.metadata()
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert any(k.endswith("attn2_to_k.lora_down.weight") for k in keys)
    assert any(k.endswith("resnets_0_conv1.lora_down.weight") for k in keys)  # LoCon: 3x3 convs too
    assert metadata["ss_network_module"] == "networks.lora"
    with Image.open(out.with_name("cyan-preview.png")) as sheet:
        tile = 64 * 2 + 2  # 64-pixel images shown twice as large, 2-pixel gaps
        # columns: the two captions; rows: the training images, then samples after steps 2 and 4
        assert ((sheet.size[0] - 2) // tile, (sheet.size[1] - 2) // tile) == (2, 3)
        last = np.asarray(sheet.convert("RGB"))[2 + 2 * tile:2 + 2 * tile + 128:2, 2:2 + 128:2]
    # the last preview row is what the LoRA workflow draws with the saved file (same loop, seed and settings)
    caption = scan_dataset(tmp_path / "cyan")[0].caption
    executor = make_executor(tmp_path / "base")
    [drawn] = generate(executor, load_workflow(WORKFLOW), [caption], Settings(steps=20, cfg=7.0, seed=0),
                       lora=("cyan.safetensors", 1.0))
    assert np.abs(drawn.astype(int) - last.astype(int)).max() <= 2
    assert "cyan-preview.png" in capsys.readouterr().out
    env = make_environment(tmp_path / "base")
    info = load_registry(plugins=False).object_info(env)
    assert "cyan.safetensors" in info["LoraLoader"]["input"]["required"]["lora_name"][0]


def test_cli_defaults_are_the_trainers() -> None:
    from latentgraph.cli.train import LORA_DEFAULTS

    config = LoraConfig()
    for name, value in vars(LORA_DEFAULTS).items():
        assert getattr(config, name) == value, name
