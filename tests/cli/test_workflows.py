"""The workflow library from the command line, in process: `run NAME --input`, `run NAME --help`, `workflows`,
and pinning. Pixels are compared with runs of the same workflow file edited by node id (`--set`), each in its own
base directory (own executor, own cache), so equality means the same computation, not a shared cached file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from latentgraph.cli.main import main
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TXT2IMG = ROOT / "workflows" / "txt2img.json"
PROMPT = "a small blue square on the right, on a white background"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def pixels_of(out: str) -> np.ndarray:
    [path] = out.split()
    return np.asarray(Image.open(path).convert("RGB"))


def test_run_by_name_with_inputs_gives_the_pixels_of_set_on_the_file(capsys, tmp_path: Path) -> None:
    code, out, err = run(capsys, "run", "txt2img", "--input", "seed=7", "--input", "steps=3", "--input",
                         f"prompt={PROMPT}", "--quiet", "--base-dir", str(tmp_path / "a"))
    assert code == 0, err
    by_name = pixels_of(out)
    code, out, err = run(capsys, "run", str(TXT2IMG), "--set", "3.seed=7", "--set", "3.steps=3", "--set",
                         f"6.text={PROMPT}", "--quiet", "--base-dir", str(tmp_path / "b"))
    assert code == 0, err
    assert np.array_equal(by_name, pixels_of(out))
    code, out, err = run(capsys, "run", "txt2img", "--input", "seed=8", "--input", "steps=3", "--input",
                         f"prompt={PROMPT}", "--quiet", "--base-dir", str(tmp_path / "b"))
    assert code == 0, err
    assert not np.array_equal(by_name, pixels_of(out))


def test_bad_inputs_are_refused_by_name_and_nothing_runs(capsys, tmp_path: Path) -> None:
    code, out, err = run(capsys, "run", "txt2img", "--input", "seed=-1", "--input", "steps=lots", "--input",
                         "colour=red", "--base-dir", str(tmp_path))
    assert code == 2 and out == ""
    assert "input 'seed': Value -1 smaller than min of 0" in err
    assert "input 'steps': Failed to convert" in err
    assert "input 'colour': Unknown input" in err and "inputs: prompt, negative, seed" in err
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").iterdir())
    code, _, err = run(capsys, "run", "no_such_workflow", "--base-dir", str(tmp_path))
    assert code == 2 and "no workflow named 'no_such_workflow'" in err and "txt2img" in err


def test_help_of_a_named_workflow_lists_its_inputs(capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "txt2img", "--base-dir", str(tmp_path), "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "usage: latentgraph run" in out and "workflow txt2img@" in out and "(version 1.0)" in out
    seed = next(line for line in out.splitlines() if "--input seed=INT" in line)
    assert "--input seed=INT" in seed and "[0..18446744073709551615]" in seed and "(default: 42)" in seed
    checkpoint = next(line for line in out.splitlines() if "--input checkpoint=CHOICE" in line)
    assert "CHOICE" in checkpoint and "latentgraph-demo.safetensors" in checkpoint
    assert "image (IMAGE)" in out


def test_workflows_lists_the_library(capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "workflows", "--base-dir", str(tmp_path), "--json")
    assert code == 0
    names = {entry["name"] for entry in json.loads(out)}
    assert names >= {p.stem for p in (ROOT / "workflows").glob("*.json")}
    code, out, _ = run(capsys, "workflows", "--base-dir", str(tmp_path))
    assert code == 0 and any(line.startswith("txt2img@") and "(version 1.0)" in line for line in out.splitlines())


def test_a_pinned_version_still_runs_with_its_old_pixels(capsys, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    workflow = json.loads(TXT2IMG.read_text())
    workflow["3"]["inputs"]["steps"] = 3
    (folder / "shapes.json").write_text(json.dumps(workflow))
    common = ["--quiet", "--base-dir", str(tmp_path / "base"), "--workflows-dir", str(folder)]

    code, out, err = run(capsys, "run", "shapes", *common)
    assert code == 0, err
    old = pixels_of(out)
    code, out, _ = run(capsys, "workflows", "shapes", "--json", "--base-dir", str(tmp_path / "base"),
                       "--workflows-dir", str(folder))
    old_version = json.loads(out)[0]["version"]

    workflow["6"]["inputs"]["text"] = PROMPT  # the saved workflow changes
    (folder / "shapes.json").write_text(json.dumps(workflow))
    code, out, err = run(capsys, "run", "shapes", *common)
    assert code == 0, err
    new = pixels_of(out)
    assert not np.array_equal(old, new)

    code, out, err = run(capsys, "run", f"shapes@{old_version}", *common)
    assert code == 0, err
    assert np.array_equal(old, pixels_of(out))
    code, out, _ = run(capsys, "workflows", "shapes", "--base-dir", str(tmp_path / "base"), "--workflows-dir",
                       str(folder))
    assert f"recorded version {old_version}" in out

    # Old versions live in the store, not in the file: they stay runnable with the file gone.
    shutil.rmtree(folder)
    folder.mkdir()
    code, out, err = run(capsys, "run", f"shapes@{old_version}", *common)
    assert code == 0, err
    assert np.array_equal(old, pixels_of(out))
