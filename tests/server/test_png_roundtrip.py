"""A saved PNG carries its workflow (`prompt` and `workflow` chunks) and `latentgraph run image.png` re-runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from latentgraph.cli.main import main
from latentgraph.engine.executor import Executor
from latentgraph.engine.workflow_format import api_to_ui
from latentgraph.nodes import load_registry, make_environment
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.server.helpers import write_input_image

PROMPT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "again"}},
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(base dir, PNG written by SaveImage with the editor graph in extra_pnginfo, that graph)."""
    base = tmp_path_factory.mktemp("png")
    write_input_image(base)
    executor = Executor(load_registry(plugins=False), make_environment(base))
    ui = api_to_ui(PROMPT, executor.registry.object_info(executor.env))
    result = executor.run(PROMPT, extra_data={"extra_pnginfo": {"workflow": ui}})
    assert result.status == "success"
    image = result.outputs["3"]["images"][0]
    return base, base / "output" / image["subfolder"] / image["filename"], ui


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_save_image_writes_prompt_and_workflow_chunks(saved: tuple[Path, Path, dict]) -> None:
    _, png, ui = saved
    with Image.open(png) as image:
        chunks = dict(image.text)
    assert json.loads(chunks["prompt"]) == PROMPT
    assert json.loads(chunks["workflow"]) == ui


def test_run_png_reruns_its_workflow(saved: tuple[Path, Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    base, png, _ = saved
    assert main(["run", str(png), "--base-dir", str(base), "--quiet"]) == 0
    written = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert written != png and written.name.startswith("again_")
    assert np.array_equal(pixels(written), pixels(png))


def test_run_png_with_only_the_editor_graph(saved: tuple[Path, Path, dict], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A PNG whose `prompt` chunk is missing (as from tools that keep only the graph) runs from `workflow`."""
    base, png, ui = saved
    info = PngInfo()
    info.add_text("workflow", json.dumps(ui))
    graph_only = tmp_path / "graph-only.png"
    Image.open(png).save(graph_only, pnginfo=info)
    assert main(["run", str(graph_only), "--base-dir", str(base), "--quiet"]) == 0
    written = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.array_equal(pixels(written), pixels(png))


def test_run_accepts_an_editor_json(saved: tuple[Path, Path, dict], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    base, png, ui = saved
    (tmp_path / "ui.json").write_text(json.dumps(ui))
    assert main(["run", str(tmp_path / "ui.json"), "--base-dir", str(base), "--quiet"]) == 0
    assert np.array_equal(pixels(Path(capsys.readouterr().out.strip().splitlines()[-1])), pixels(png))
