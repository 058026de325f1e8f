"""The command line, driven as a user drives it: through a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def latentgraph(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "latentgraph.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def base(tmp_path) -> Path:
    (tmp_path / "input").mkdir()
    Image.new("RGB", (32, 16), (0, 200, 0)).save(tmp_path / "input" / "photo.png")
    return tmp_path


def image_workflow(path: Path, **scale) -> Path:
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear",
                                                     "width": scale.get("width", 64), "height": 0,
                                                     "crop": "disabled"}, "_meta": {"title": "Resize"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "cli"}},
    }
    path.write_text(json.dumps(prompt))
    return path


def test_run_writes_the_png_and_prints_its_path(base):
    result = latentgraph("run", str(image_workflow(base / "wf.json")), cwd=base)
    assert result.returncode == 0, result.stderr
    printed = Path(result.stdout.strip())
    assert printed == base / "output" / "cli_00001_.png"
    with Image.open(printed) as png:
        assert png.size == (64, 32)
    assert "nodes" in result.stderr  # the progress bar


def test_set_overrides_by_id_and_by_title(base):
    workflow = image_workflow(base / "wf.json")
    result = latentgraph("run", str(workflow), "--set", "Resize.width=20", "--set", "3.filename_prefix=small",
                         "--quiet", "--base-dir", str(base), cwd=base.parent)
    assert result.returncode == 0, result.stderr
    with Image.open(Path(result.stdout.strip())) as png:
        assert png.size == (20, 10)
    assert Path(result.stdout.strip()).name == "small_00001_.png"


def test_set_targets_a_primitive_node_of_an_editor_workflow(base):
    """The editor's PrimitiveNode is folded away when converting; --set reaches it by id or by title."""
    from latentgraph.engine.workflow_format import api_to_ui
    from latentgraph.nodes import load_registry, make_environment

    prompt = json.loads(image_workflow(base / "api.json").read_text())
    ui = api_to_ui(prompt, load_registry(plugins=False).object_info(make_environment(base)))
    scale = next(n for n in ui["nodes"] if n["id"] == 2)
    next(i for i in scale["inputs"] if i["name"] == "width")["link"] = 99
    ui["nodes"].append({"id": 50, "type": "PrimitiveNode", "title": "Width", "pos": [0, 300], "size": [210, 82],
                        "flags": {}, "order": 0, "mode": 0, "inputs": [],
                        "outputs": [{"name": "INT", "type": "INT", "links": [99], "widget": {"name": "width"}}],
                        "properties": {"Run widget replace on values": False}, "widgets_values": [64, "fixed"]})
    ui["links"].append([99, 50, 0, 2, 2, "INT"])
    (base / "ui.json").write_text(json.dumps(ui))
    by_title = latentgraph("run", "ui.json", "--set", "Width.value=48", cwd=base)
    assert by_title.returncode == 0, by_title.stderr
    with Image.open(Path(by_title.stdout.strip())) as png:
        assert png.size == (48, 24)
    by_id = latentgraph("run", "ui.json", "--set", "50.width=40", "--set", "3.filename_prefix=b", cwd=base)
    assert by_id.returncode == 0, by_id.stderr
    with Image.open(Path(by_id.stdout.strip())) as png:
        assert png.size == (40, 20) and Path(by_id.stdout.strip()).name == "b_00001_.png"


def test_set_with_an_unknown_node_is_a_clear_error(base):
    result = latentgraph("run", str(image_workflow(base / "wf.json")), "--set", "Nope.width=3", cwd=base)
    assert result.returncode == 2
    assert "no node with id or title 'Nope'" in result.stderr


def test_check_reports_every_fault_by_node_id(base):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "sideways",
                                                     "width": -4, "height": 0, "crop": "disabled"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
    }
    (base / "bad.json").write_text(json.dumps(prompt))
    result = latentgraph("check", "bad.json", cwd=base)
    assert result.returncode == 2
    assert "node 1 (LoadImage), input 'image'" in result.stdout
    assert "node 2 (ImageScale), input 'upscale_method'" in result.stdout
    assert "node 2 (ImageScale), input 'width'" in result.stdout
    as_json = latentgraph("check", "bad.json", "--json", cwd=base)
    assert set(json.loads(as_json.stdout)["node_errors"]) == {"1", "2"}
    assert not (base / "output").exists() or not any((base / "output").iterdir())


def test_check_json_lists_every_unknown_node_of_an_editor_workflow(base):
    """Converting stops at nothing: each unknown node is a missing_node_type, and --json always prints JSON."""
    ui = json.loads((Path(__file__).parent / "data" / "ui_txt2img_v04.json").read_text())
    ui["nodes"][6]["type"] = "SaveVideoMagic"
    ui["nodes"][2]["type"] = "EmptyHunyuanLatent"
    (base / "ui.json").write_text(json.dumps(ui))
    result = latentgraph("check", "ui.json", "--json", cwd=base)
    assert result.returncode == 2
    body = json.loads(result.stdout)
    assert body["error"]["type"] == "missing_node_type"
    assert {k: v["class_type"] for k, v in body["node_errors"].items()} == {"5": "EmptyHunyuanLatent",
                                                                             "9": "SaveVideoMagic"}
    (base / "broken.json").write_text("{not json")
    broken = latentgraph("check", "broken.json", "--json", cwd=base)
    assert broken.returncode == 2 and json.loads(broken.stdout)["error"]["type"] == "invalid_prompt"


def test_check_accepts_a_valid_workflow(base):
    result = latentgraph("check", str(image_workflow(base / "wf.json")), cwd=base)
    assert result.returncode == 0
    assert result.stdout.startswith("ok: 3 nodes")


def test_run_of_an_invalid_workflow_exits_2_and_runs_nothing(base):
    workflow = image_workflow(base / "wf.json")
    result = latentgraph("run", str(workflow), "--set", "2.width=-1", cwd=base)
    assert result.returncode == 2
    assert "value_smaller_than_min" in result.stderr
    assert not (base / "output" / "cli_00001_.png").exists()


def test_bad_json_file_is_a_clear_error(base):
    (base / "broken.json").write_text('{"1": {"class_type": ')
    for command in ("run", "check"):
        result = latentgraph(command, "broken.json", cwd=base)
        assert result.returncode == 2
        assert "is not valid JSON (line 1" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_failing_node_exits_1_with_the_node_named(base):
    (base / "input" / "photo.png").write_bytes(b"not really a png")
    result = latentgraph("run", str(image_workflow(base / "wf.json")), "--quiet", cwd=base)
    assert result.returncode == 1
    assert "node 1 (LoadImage) failed" in result.stderr


def test_nodes_lists_schemas(base):
    listing = latentgraph("nodes", "ImageScale", cwd=base)
    assert listing.returncode == 0
    assert "width: INT" in listing.stdout
    info = json.loads(latentgraph("nodes", "--json", "SaveImage", cwd=base).stdout)
    assert info["SaveImage"]["output_node"] is True
    schema = json.loads(latentgraph("nodes", "--schema", "ImageScale", cwd=base).stdout)
    assert schema["ImageScale"]["properties"]["width"]["maximum"] == 16384


def test_help_lists_every_command(base):
    result = latentgraph("--help", cwd=base)
    for command in ("run", "check", "nodes"):
        assert command in result.stdout


def test_threads_option_and_variable_cap_torch_threads(base, monkeypatch):
    import torch
    from latentgraph.cli.main import main

    workflow = str(image_workflow(base / "wf.json"))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["run", workflow, "--quiet", "--threads", "1", "--base-dir", str(base)]) == 0
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("LATENTGRAPH_THREADS", "3")
        assert main(["run", workflow, "--quiet", "--base-dir", str(base)]) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_a_bad_thread_count_is_refused_before_running(base, value):
    result = latentgraph("run", str(image_workflow(base / "wf.json")), "--threads", value, cwd=base)
    assert result.returncode == 2
    assert "--threads" in result.stderr and "at least 1" in result.stderr
    assert not (base / "output").exists()
