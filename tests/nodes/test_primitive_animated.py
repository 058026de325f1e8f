"""Primitive value nodes wired into widget inputs, and animated WebP/PNG saving with ComfyUI's metadata layout,
read back with PIL."""

from __future__ import annotations

import json

import pytest
from latentgraph.engine.executor import Executor
from latentgraph.nodes import load_registry, make_environment
from PIL import Image


@pytest.fixture
def executor(tmp_path) -> Executor:
    return Executor(load_registry(plugins=False), make_environment(tmp_path))


def frames_workflow(save: dict) -> dict:
    return {
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": 24}},
        "2": {"class_type": "PrimitiveFloat", "inputs": {"value": 0.25}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": ["1", 0], "height": 16, "batch_size": 1,
                                                     "color": 0xFF0000}},
        "8": {"class_type": "EmptyImage", "inputs": {"width": 24, "height": 16, "batch_size": 1, "color": 0x00FF00}},
        "9": {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["8", 0]}},
        "4": {"class_type": "SolidMask", "inputs": {"value": ["2", 0], "width": 24, "height": 16}},
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 0]}},
        "6": {"class_type": "ImageBatch", "inputs": {"image1": ["9", 0], "image2": ["5", 0]}},
        "7": save,
    }


def test_primitives_feed_widget_inputs(executor):
    info = executor.registry.object_info(executor.env)
    assert info["PrimitiveInt"]["display_name"] == "Int"
    assert info["PrimitiveInt"]["input"]["required"]["value"] == [
        "INT", {"control_after_generate": True, "min": -(2**63 - 1), "max": 2**63 - 1}]
    assert info["PrimitiveStringMultiline"]["input"]["required"]["value"] == ["STRING", {"multiline": True}]
    assert info["PrimitiveBoolean"]["output"] == ["BOOLEAN"]
    save = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "prim"}}
    result = executor.run(frames_workflow(save))
    assert result.status == "success", result.error
    assert len(result.outputs["7"]["images"]) == 3
    with Image.open(executor.env.folders.output_dir / "prim_00003_.png") as last:
        assert last.size == (24, 16) and last.getpixel((0, 0)) == (63, 63, 63)  # 0.25 grey, truncated as ComfyUI


def test_animated_webp_has_every_frame_and_the_workflow_in_exif(executor):
    save = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["6", 0], "filename_prefix": "anim/a", "fps": 4.0,
                                                         "lossless": True, "quality": 80, "method": "fastest"}}
    extra = {"extra_pnginfo": {"workflow": {"nodes": [1]}, "note": "x"}}
    result = executor.run(frames_workflow(save), extra_data=extra)
    assert result.status == "success", result.error
    assert result.outputs["7"]["images"] == [{"filename": "a_00001_.webp", "subfolder": "anim", "type": "output"}]
    assert list(result.outputs["7"]["animated"]) == [True]
    with Image.open(executor.env.folders.output_dir / "anim" / "a_00001_.webp") as webp:
        assert webp.n_frames == 3
        webp.seek(1)
        webp.load()
        assert webp.info["duration"] == 250
        exif = webp.getexif()
        key, _, body = exif[0x0110].partition(":")
        assert key == "prompt" and json.loads(body)["1"]["class_type"] == "PrimitiveInt"
        assert exif[0x010F] == 'workflow:{"nodes": [1]}' and exif[0x010E] == 'note:"x"'  # counting down
        webp.seek(0)
        assert webp.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_animated_png_has_every_frame_and_comf_chunks(executor):
    save = {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["6", 0], "filename_prefix": "apng", "fps": 10.0,
                                                        "compress_level": 1}}
    result = executor.run(frames_workflow(save))
    assert result.status == "success", result.error
    path = executor.env.folders.output_dir / "apng_00001_.png"
    with Image.open(path) as png:
        assert png.n_frames == 3
    data = path.read_bytes()
    index = data.index(b"comf")
    assert data[index + 4:index + 11] == b"prompt\0"
    assert data.index(b"IDAT") < index  # after the image data, as ComfyUI writes it
