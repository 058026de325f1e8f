"""Workflow files in every shape a user has them: API JSON, editor JSON, PNGs with text chunks; and `convert`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from latentgraph.cli.main import main
from latentgraph.engine.workflow_format import WorkflowFileError, load_workflow
from PIL import Image
from PIL.PngImagePlugin import PngInfo

DATA = Path(__file__).parent / "data"
OBJECT_INFO = json.loads((DATA / "object_info.json").read_text())
UI = json.loads((DATA / "ui_mute_bypass.json").read_text())
API = {"1": {"class_type": "LoadImage", "inputs": {"image": "dog.png"}}}


def png(path: Path, **chunks: object) -> Path:
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


def test_api_json_is_taken_as_is(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(API))
    assert load_workflow(tmp_path / "a.json", OBJECT_INFO) == (API, None)


def test_ui_json_is_converted_and_returned(tmp_path: Path) -> None:
    (tmp_path / "ui.json").write_text(json.dumps(UI))
    prompt, ui = load_workflow(tmp_path / "ui.json", OBJECT_INFO)
    assert ui == UI and prompt["3"]["inputs"] == {"filename_prefix": "bypass", "images": ["1", 0]}


def test_object_info_is_only_built_for_ui_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(API))

    def never() -> dict:
        raise AssertionError("object_info was built for an API workflow")

    assert load_workflow(tmp_path / "a.json", never)[0] == API


def test_png_prompt_chunk_is_preferred(tmp_path: Path) -> None:
    path = png(tmp_path / "both.png", prompt=API, workflow=UI)
    assert load_workflow(path, OBJECT_INFO) == (API, UI)


def test_png_with_only_the_workflow_chunk_is_converted(tmp_path: Path) -> None:
    path = png(tmp_path / "ui.png", workflow=UI)
    prompt, ui = load_workflow(path, OBJECT_INFO)
    assert ui == UI and prompt["1"]["inputs"] == {"image": "cat.png"}


def test_png_without_a_workflow_says_so(tmp_path: Path) -> None:
    with pytest.raises(WorkflowFileError, match="carries no workflow"):
        load_workflow(png(tmp_path / "plain.png", parameters="a1111 text"), OBJECT_INFO)


def test_bad_json_and_bad_graph_errors_are_readable(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(WorkflowFileError, match=r"not valid JSON \(line 1"):
        load_workflow(tmp_path / "bad.json", OBJECT_INFO)
    broken = json.loads(json.dumps(UI))
    broken["nodes"][2]["type"] = "NoSuchNode"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(WorkflowFileError, match=r"node 3 \(NoSuchNode\): unknown node type"):
        load_workflow(tmp_path / "broken.json", OBJECT_INFO)


def test_convert_command_writes_api_format(tmp_path: Path) -> None:
    out = tmp_path / "api.json"
    assert main(["convert", str(DATA / "ui_mute_bypass.json"), "-o", str(out)]) == 0
    prompt = json.loads(out.read_text())
    assert set(prompt) == {"1", "3", "5"} and prompt["3"]["inputs"]["images"] == ["1", 0]


def test_convert_command_to_ui_and_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "api.json").write_text(json.dumps({
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
    }))
    assert main(["convert", str(tmp_path / "api.json"), "--to", "ui", "-o", str(tmp_path / "ui.json")]) == 0
    assert main(["convert", str(tmp_path / "ui.json")]) == 0
    back = json.loads(capsys.readouterr().out)
    assert back["2"]["inputs"] == {"images": ["1", 0], "filename_prefix": "t"}


def test_convert_command_names_the_node_on_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = json.loads(json.dumps(UI))
    broken["nodes"][0]["type"] = "Mystery"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    assert main(["convert", str(tmp_path / "broken.json")]) == 2
    assert "node 1 (Mystery)" in capsys.readouterr().err
