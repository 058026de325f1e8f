"""The image nodes, run through the executor on real files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from latentgraph.engine.context import RunContext
from latentgraph.engine.executor import Executor
from latentgraph.engine.interrupt import InterruptToken
from latentgraph.nodes import load_registry, make_environment
from latentgraph.nodes.image_nodes import LoadImage
from PIL import Image


@pytest.fixture
def executor(tmp_path) -> Executor:
    return Executor(load_registry(plugins=False), make_environment(tmp_path))


def write_input(executor: Executor, name: str, image: Image.Image) -> None:
    image.save(executor.env.folders.input_dir / name)


def scale_and_save(width: int, height: int, method: str = "bilinear", crop: str = "disabled") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": method, "width": width,
                                                     "height": height, "crop": crop}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "out/test"}},
    }


def saved_path(executor: Executor, result, node: str = "3"):
    (entry,) = result.outputs[node]["images"]
    return executor.env.folders.output_dir / entry["subfolder"] / entry["filename"]


def test_load_scale_save_keeps_aspect_and_writes_the_workflow_into_the_png(executor):
    write_input(executor, "in.png", Image.new("RGB", (40, 20), (255, 0, 0)))
    prompt = scale_and_save(80, 0)
    result = executor.run(prompt, extra_data={"extra_pnginfo": {"workflow": {"nodes": []}}})
    assert result.status == "success"
    path = saved_path(executor, result)
    assert path.name == "test_00001_.png" and path.parent.name == "out"
    with Image.open(path) as png:
        assert png.size == (80, 40)
        assert json.loads(png.text["prompt"])["2"]["inputs"]["width"] == 80
        assert json.loads(png.text["workflow"]) == {"nodes": []}
        assert np.asarray(png)[10, 10].tolist() == [255, 0, 0]


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"])
def test_every_scaling_method_gives_the_requested_size(executor, method):
    write_input(executor, "in.png", Image.new("RGB", (30, 30), (0, 128, 255)))
    result = executor.run(scale_and_save(17, 9, method, "center"))
    with Image.open(saved_path(executor, result)) as png:
        assert png.size == (17, 9)
        assert abs(int(np.asarray(png)[4, 8][2]) - 255) <= 2


def test_counter_increments_when_the_workflow_changes(executor):
    write_input(executor, "in.png", Image.new("RGB", (8, 8)))
    first = executor.run(scale_and_save(8, 8))
    second = executor.run(scale_and_save(16, 8))
    assert [saved_path(executor, r).name for r in (first, second)] == ["test_00001_.png", "test_00002_.png"]


def test_mask_is_one_minus_alpha(executor):
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    pixels[0, 0, 3] = 0
    write_input(executor, "in.png", Image.fromarray(pixels, "RGBA"))
    ctx = RunContext(env=executor.env, node_id="1", prompt_id="p", prompt={}, extra_data={},
                     interrupt=InterruptToken(), sink=lambda event, data: None)
    image, mask = LoadImage(image="in.png").execute(ctx)
    assert image.shape == (1, 4, 4, 3)
    assert mask.shape == (1, 4, 4)
    assert float(mask[0, 0, 0]) == 1.0 and float(mask.sum()) == 1.0


def test_changed_file_content_invalidates_the_cache(executor):
    write_input(executor, "in.png", Image.new("RGB", (8, 8), (0, 0, 0)))
    executor.run(scale_and_save(8, 8))
    assert executor.run(scale_and_save(8, 8)).executed == []
    write_input(executor, "in.png", Image.new("RGB", (8, 8), (255, 255, 255)))
    rerun = executor.run(scale_and_save(8, 8))
    assert sorted(rerun.executed) == ["1", "2", "3"]


def test_invert_and_batch(executor):
    write_input(executor, "in.png", Image.new("RGB", (10, 10), (255, 255, 255)))
    write_input(executor, "small.png", Image.new("RGB", (5, 5), (0, 0, 0)))
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "small.png"}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "4": {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["2", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "b"}},
    }
    result = executor.run(prompt)
    images = result.outputs["5"]["images"]
    assert len(images) == 2
    for entry in images:
        with Image.open(executor.env.folders.output_dir / entry["filename"]) as png:
            assert png.size == (10, 10)
            assert np.asarray(png).max() == 0


def test_a_prefix_leaving_the_output_folder_fails_the_run(executor):
    write_input(executor, "in.png", Image.new("RGB", (8, 8)))
    prompt = scale_and_save(8, 8)
    prompt["3"]["inputs"]["filename_prefix"] = "../escape"
    result = executor.run(prompt)
    assert result.status == "error"
    assert "outside the output folder" in result.error["exception_message"]
    assert not (executor.env.base_dir / "escape_00001_.png").exists()
