"""One declaration, many views: object_info, JSON Schema and plugin loading come from the node classes."""

from __future__ import annotations

import sys
import textwrap
from typing import Literal

import pytest
from latentgraph.engine.context import Environment
from latentgraph.engine.node import Hidden, Input, Node
from latentgraph.engine.registry import Registry
from latentgraph.engine.types import Image, Mask
from latentgraph.nodes import load_registry


class Sample(Node):
    """Denoises something.

    A second paragraph that the editor does not show.
    """

    CATEGORY = "testing"
    DISPLAY_NAME = "Sample It"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("picture", "hole")

    image: Image
    seed: int = Input(0, ge=0, le=2**64 - 1, control_after_generate=True)
    cfg: float = Input(8.0, ge=0.0, le=100.0, step=0.1, round=0.01)
    mode: Literal["a", "b"] = Input("b", tooltip="which mode")
    text: str = Input("", multiline=True, dynamic_prompts=True)
    mask: Mask | None = Input(None, optional=True)
    strength: float = Input(1.0, optional=True)
    prompt: dict | None = Hidden("PROMPT")


def test_object_info_entry_is_derived_from_the_declaration(tmp_path):
    registry = Registry()
    registry.register(Sample)
    info = registry.object_info(Environment(tmp_path))["Sample"]
    assert info["input"]["required"] == {
        "image": ["IMAGE", {}],
        "seed": ["INT", {"default": 0, "control_after_generate": True, "min": 0, "max": 2**64 - 1}],
        "cfg": ["FLOAT", {"default": 8.0, "step": 0.1, "round": 0.01, "min": 0.0, "max": 100.0}],
        "mode": [["a", "b"], {"default": "b", "tooltip": "which mode"}],
        "text": ["STRING", {"default": "", "multiline": True, "dynamicPrompts": True}],
    }
    assert info["input"]["optional"] == {"mask": ["MASK", {}], "strength": ["FLOAT", {"default": 1.0}]}
    assert info["input"]["hidden"] == {"prompt": "PROMPT"}
    assert info["input_order"] == {"required": ["image", "seed", "cfg", "mode", "text"],
                                   "optional": ["mask", "strength"]}
    assert info["output"] == ["IMAGE", "MASK"]
    assert info["output_name"] == ["picture", "hole"]
    assert info["output_is_list"] == [False, False]
    assert (info["name"], info["display_name"], info["category"]) == ("Sample", "Sample It", "testing")
    assert info["description"] == "Denoises something."
    assert info["output_node"] is False
    assert info["python_module"] == __name__


def test_json_schema_carries_constraints_and_sockets():
    registry = Registry()
    registry.register(Sample)
    schema = registry.schema("Sample")
    assert schema["properties"]["seed"]["minimum"] == 0
    assert schema["properties"]["cfg"]["x-step"] == 0.1
    assert schema["properties"]["mode"]["enum"] == ["a", "b"]
    assert schema["properties"]["image"]["x-socket"] == "IMAGE"
    assert schema["x-outputs"] == [{"name": "picture", "type": "IMAGE"}, {"name": "hole", "type": "MASK"}]


def test_a_declaration_with_mismatched_outputs_is_refused_at_registration():
    class Broken(Node):
        RETURN_TYPES = ("IMAGE",)
        RETURN_NAMES = ("a", "b")

    with pytest.raises(TypeError, match="RETURN_NAMES"):
        Registry().register(Broken)


def _install_plugin(tmp_path, monkeypatch, name: str, module_source: str) -> None:
    """A real installed distribution (dist-info on sys.path) declaring a `latentgraph.nodes` entry point."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(module_source))
    dist = tmp_path / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[latentgraph.nodes]\n{name} = {name}\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_plugins_are_loaded_and_a_broken_one_is_reported_and_skipped(tmp_path, monkeypatch):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    _install_plugin(good, monkeypatch, "lg_good_plugin", """
        from latentgraph.engine.node import Input, Node

        class Doubler(Node):
            '''Doubles a number.'''
            RETURN_TYPES = ("INT",)
            value: int = Input(1)
    """)
    _install_plugin(bad, monkeypatch, "lg_bad_plugin", "raise ImportError('needs a missing library')\n")
    registry = load_registry()
    assert "Doubler" in registry
    assert "SaveImage" in registry
    assert [name for name, _ in registry.load_errors] == ["lg_bad_plugin"]
    assert "needs a missing library" in registry.load_errors[0][1]
    for module in ("lg_good_plugin", "lg_bad_plugin"):
        sys.modules.pop(module, None)
