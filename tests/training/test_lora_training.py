"""LoRA fine-tuning: bad folders are refused before training; a short run on a new concept (a colour the demo
model never saw, under a new word) moves the generated colour toward it at strength 1 and not at strength 0; the
file is in kohya's key layout and loads through LoraLoader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from latentgraph.nodes.sd.loader_nodes import ASSETS, DEFAULT_CHECKPOINT
from latentgraph.training.classifier import shape_rgb
from latentgraph.training.dataset import COLOURS, POSITIONS, SHAPES, SIZES, Scene, write_folder
from latentgraph.training.evaluate import Settings, generate, load_workflow, make_executor
from latentgraph.training.lora import DatasetError, LoraConfig, scan_dataset, train_lora
from safetensors import safe_open

WORKFLOW = Path(__file__).resolve().parents[4] / "workflows" / "lora.json"
CYAN = np.array([0, 200, 210], dtype=np.float32)
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


def _cyan_distance(images: list[np.ndarray]) -> float:
    colours = [shape_rgb(image) for image in images]
    return float(np.mean([np.linalg.norm(c - CYAN) if c is not None else 255.0 for c in colours]))


def test_lora_moves_colour_toward_the_new_concept(tmp_path: Path) -> None:
    data, loras = tmp_path / "data", tmp_path / "loras"
    write_folder(_cyan_scenes(16), data, palette=PALETTE)
    base = ASSETS / "checkpoints" / DEFAULT_CHECKPOINT
    result = train_lora(data, base, loras / "cyan.safetensors",
                        LoraConfig(rank=4, alpha=4.0, steps=150, batch_size=4, learning_rate=5e-3), progress=False)
    assert result["last_loss"] < result["first_loss"]
    with safe_open(str(loras / "cyan.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert any(k.endswith("attn2_to_k.lora_down.weight") for k in keys)
    assert any(k.endswith(".alpha") for k in keys)

    executor = make_executor(tmp_path / "base", extra_loras=loras)
    workflow = load_workflow(WORKFLOW)
    texts = [Scene("cyan", s, "large", "in the center", b).caption()
             for s, b in [("circle", "white"), ("square", "black"), ("triangle", "yellow")]]
    settings = Settings(steps=12, seed=3)
    off = generate(executor, workflow, texts, settings, lora=("cyan.safetensors", 0.0))
    on = generate(executor, workflow, texts, settings, lora=("cyan.safetensors", 1.0))
    assert _cyan_distance(on) < 0.75 * _cyan_distance(off)
    assert _cyan_distance(off) > min(np.linalg.norm(CYAN - np.array(c)) for c in COLOURS.values())


def test_cli_reports_bad_data_without_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from latentgraph.cli.main import main

    write_folder(_cyan_scenes(2), tmp_path / "data", palette=PALETTE)
    (tmp_path / "data" / "00001.txt").unlink()
    code = main(["train", "lora", "--data", str(tmp_path / "data"), "--base", DEFAULT_CHECKPOINT,
                 "--base-dir", str(tmp_path)])
    assert code == 2
    assert "no caption file 00001.txt" in capsys.readouterr().err
