"""Output PNGs record what reproduces them (model hashes, software, device, seeds), and re-running one says when
the setting differs: a swapped checkpoint under the same name warns, `--strict` refuses, a renamed file is found by
its hash. The same workflow and seed give byte-identical PNGs in separate processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import diffusers
import pytest
import torch
from latentgraph.cli.main import main
from latentgraph.nodes.provenance import PNG_KEY, ModelHashes
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "nodes" / "sd" / "assets" / "checkpoints" / "latentgraph-demo.safetensors"
FAST = ["--set", "3.steps=3", "--quiet", "--threads", "1"]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    # The demo weights under another name and with their own metadata: a file no other folder holds.
    resave(DEMO, folder / "mine.safetensors", "test")
    return tmp_path


def resave(source: Path, target: Path, tag: str) -> None:
    """The same weights and metadata in a file with other bytes (one metadata key added)."""
    with safe_open(source, "pt") as handle:
        metadata = handle.metadata() or {}
    save_file(load_file(source), target, metadata={**metadata, "copy": tag})


def run(base: Path, workflow: str | Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["run", str(workflow), "--base-dir", str(base), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def record_of(png: Path) -> dict:
    with Image.open(png) as image:
        return json.loads(image.text[PNG_KEY])


def first_image(base: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, out, err = run(base, ROOT / "workflows" / "txt2img.json", "--set", "4.ckpt_name=mine.safetensors",
                         "--set", "3.seed=5", *FAST, capsys=capsys)
    assert code == 0, err
    return Path(out.strip())


def test_png_records_model_hashes_environment_and_seeds(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = record_of(first_image(base, capsys))
    expected = hashlib.sha256((base / "models" / "checkpoints" / "mine.safetensors").read_bytes()).hexdigest()
    assert record["models"] == {"checkpoints/mine.safetensors": expected}
    environment = record["environment"]
    assert environment["torch"] == torch.__version__
    assert environment["diffusers"] == diffusers.__version__
    assert environment["device"].startswith("cpu") and environment["dtype"] == "float32"
    assert record["seeds"] == {"3.seed": 5}


def test_rerunning_the_png_in_the_same_setting_warns_of_nothing(base: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    png = first_image(base, capsys)
    code, _, err = run(base, png, "--strict", "--quiet", capsys=capsys)
    assert code == 0, err
    assert "warning" not in err and "error" not in err


def test_a_swapped_checkpoint_warns_and_strict_refuses(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = first_image(base, capsys)
    path = base / "models" / "checkpoints" / "mine.safetensors"
    resave(path, path, "swapped")
    code, out, err = run(base, png, "--quiet", capsys=capsys)
    assert code == 0, err
    assert "warning: model checkpoints/mine.safetensors: the image was made with sha256" in err
    written = sorted((base / "output").glob("*.png"))
    code, out, err = run(base, png, "--strict", "--quiet", capsys=capsys)
    assert code == 2
    assert "error: model checkpoints/mine.safetensors" in err and "nothing was run" in err
    assert sorted((base / "output").glob("*.png")) == written


def test_a_renamed_checkpoint_is_found_by_its_hash(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = first_image(base, capsys)
    folder = base / "models" / "checkpoints"
    (folder / "mine.safetensors").rename(folder / "renamed.safetensors")
    code, out, err = run(base, png, "--strict", "--quiet", capsys=capsys)
    assert code == 0, err
    assert "mine.safetensors -> renamed.safetensors (same sha256)" in err
    assert record_of(Path(out.strip()))["models"] == {"checkpoints/renamed.safetensors": record_of(png)["models"][
        "checkpoints/mine.safetensors"]}


def test_a_comfyui_png_without_a_record_runs_without_warnings(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = first_image(base, capsys)
    with Image.open(png) as image:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key in ("prompt", "workflow"):
            info.add_text(key, image.text[key])
        image.save(base / "comfy.png", pnginfo=info)
    code, _, err = run(base, base / "comfy.png", "--strict", "--quiet", capsys=capsys)
    assert code == 0, err
    assert "warning" not in err


def test_hashes_are_remembered_by_path_size_and_mtime(tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    store = tmp_path / "hashes.json"
    assert ModelHashes(store).sha256(model) == hashlib.sha256(b"weights").hexdigest()
    # A restart reads the remembered value instead of the file: prove it by planting a different one.
    known = json.loads(store.read_text())
    store.write_text(json.dumps({key: "remembered" for key in known}))
    assert ModelHashes(store).sha256(model) == "remembered"
    os.utime(model, ns=(0, 0))  # a changed mtime is a new identity: hashed again
    assert ModelHashes(store).sha256(model) == hashlib.sha256(b"weights").hexdigest()


def test_same_workflow_and_seed_give_byte_identical_pngs_across_processes(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    outputs = []
    for run_index in range(2):
        base = tmp_path / f"run{run_index}"
        command = ["run", str(ROOT / "workflows" / "txt2img.json"), "--base-dir", str(base), *FAST]
        result = subprocess.run([sys.executable, "-m", "latentgraph.cli", *command], env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        outputs.append(Path(result.stdout.strip()).read_bytes())
    assert outputs[0] == outputs[1]


def test_the_same_prompt_gives_the_same_png_bytes_after_a_server_restart(tmp_path: Path) -> None:
    from tests.server.test_persistence import ServerProcess
    from tests.waiting import wait_until

    prompt = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    prompt = {node_id: node for node_id, node in prompt.items() if not node["class_type"].startswith("Workflow")}
    prompt["3"]["inputs"]["steps"] = 3
    pngs = []
    for _ in range(2):
        server = ServerProcess(tmp_path, "-m", "latentgraph.cli", "serve", "--base-dir", str(tmp_path), "--port", "0",
                               "--threads", "1")
        try:
            # Queued at once after start-up: the prompt must also survive arriving during the warm-up.
            prompt_id = server.post("/prompt", {"prompt": prompt})["prompt_id"]
            wait_until(lambda s=server, p=prompt_id: s.get(f"/history/{p}").get(p, {}).get("status", {})
                       .get("completed"), 240, f"prompt {prompt_id} to complete on the server process")
            entry = server.get(f"/history/{prompt_id}")[prompt_id]
            image = entry["outputs"]["9"]["images"][0]
            pngs.append((tmp_path / "output" / image["subfolder"] / image["filename"]).read_bytes())
        finally:
            server.stop()
    assert len(pngs) == 2 and pngs[0] == pngs[1]


def test_a_different_environment_is_named_in_warnings_and_strict_refuses(base: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A record from another machine (other torch, a GPU) is told apart field by field."""
    png = first_image(base, capsys)
    assert record_of(png)["environment"]["latentgraph"] == version("latentgraph")
    with Image.open(png) as image:
        text = dict(image.text)
        other = json.loads(text[PNG_KEY])
        other["environment"].update(torch="1.13.1", device="cuda: NVIDIA A100-SXM4-80GB", dtype="float16")
        text[PNG_KEY] = json.dumps(other)
        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        image.save(base / "elsewhere.png", pnginfo=info)
    code, _, err = run(base, base / "elsewhere.png", "--quiet", *FAST[-2:], capsys=capsys)
    assert code == 0, err
    here = record_of(png)["environment"]
    assert f"warning: torch: the image was made with 1.13.1, this run has {torch.__version__}" in err
    assert f"warning: device: the image was made with cuda: NVIDIA A100-SXM4-80GB, this run has {here['device']}" in err
    assert "warning: dtype: the image was made with float16, this run has float32" in err
    assert "diffusers" not in err and "latentgraph:" not in err
    code, _, err = run(base, base / "elsewhere.png", "--strict", "--quiet", capsys=capsys)
    assert code == 2 and "error: torch" in err and "nothing was run" in err


def test_a_lora_is_recorded_by_its_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(tmp_path, ROOT / "workflows" / "lora.json", *FAST, capsys=capsys)
    assert code == 0, err
    lora = ROOT / "nodes" / "sd" / "assets" / "loras" / "latentgraph-demo-style.safetensors"
    assert record_of(Path(out.strip()))["models"] == {
        "checkpoints/latentgraph-demo.safetensors": hashlib.sha256(DEMO.read_bytes()).hexdigest(),
        "loras/latentgraph-demo-style.safetensors": hashlib.sha256(lora.read_bytes()).hexdigest(),
    }
