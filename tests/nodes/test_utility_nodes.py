"""PreviewAny and ComfyNumberConvert against ComfyUI's behaviour written out case by case (comfy_extras/
nodes_preview_any.py and nodes_number_convert.py), and run from an editor workflow as ComfyUI's template
basic_datatype_conversion saves them (PreviewAny with the editor's three display-widget values)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from latentgraph.engine.executor import Executor
from latentgraph.engine.workflow_format import ui_to_api
from latentgraph.nodes import load_registry, make_environment
from latentgraph.nodes.utility_nodes import ComfyNumberConvert, PreviewAny


def preview(value: object) -> str:
    result = PreviewAny(source=value).execute(None)
    (text,) = result.outputs
    assert result.ui == {"text": [text]}
    return text


def test_preview_any_text_as_comfyui_forms_it() -> None:
    assert preview("a b\n") == "a b\n"
    assert preview(3) == "3" and preview(2.5) == "2.5" and preview(True) == "True"
    assert preview(None) == "None"
    assert preview({"x": [1, 2], "y": "z"}) == '{\n    "x": [\n        1,\n        2\n    ],\n    "y": "z"\n}'


def test_preview_any_prints_a_tensor_with_six_edge_items_and_restores_the_print_options() -> None:
    tensor = torch.arange(2000)  # above torch's 1000-element threshold, so it is summarised
    text = " ".join(preview(tensor).split())  # torch wraps at 80 columns
    assert text == "tensor([ 0, 1, 2, 3, 4, 5, ..., 1994, 1995, 1996, 1997, 1998, 1999])"
    assert str(tensor) == "tensor([   0,    1,    2,  ..., 1997, 1998, 1999])"  # the process's options are back
    assert preview({"t": tensor}).startswith("{'t': tensor([   0,    1,    2,    3,    4,    5,  ...")  # str()


@pytest.mark.parametrize(("value", "expected"), [
    (True, (1.0, 1)), (False, (0.0, 0)), (7, (7.0, 7)), (-2.9, (-2.9, -2)), (2.9, (2.9, 2)),
    (" 42 ", (42.0, 42)), ("1e3", (1000.0, 1000)), ("-3.75", (-3.75, -3)),
    ("12345678901234567890", (1.2345678901234567e19, 12345678901234567890)),  # int() of the text: exact
])
def test_number_convert(value: object, expected: tuple[float, int]) -> None:
    as_float, as_int = ComfyNumberConvert(value=value).execute(None)
    assert (as_float, as_int) == expected
    assert type(as_float) is float and type(as_int) is int


@pytest.mark.parametrize(("value", "error"), [
    ("", ValueError), ("  ", ValueError), ("abc", ValueError), ("inf", ValueError), ("nan", ValueError),
    (math.inf, ValueError), (math.nan, ValueError), ([1], TypeError),
])
def test_number_convert_refuses_what_comfyui_refuses(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        ComfyNumberConvert(value=value).execute(None)


def test_editor_workflow_with_preview_any_display_widgets_converts_and_runs(tmp_path) -> None:
    """The editor stores PreviewAny's own display widgets (markdown, text, a toggle) in widgets_values although
    the node declares no widget input; they are not inputs, and the string reaches PreviewAny through
    ComfyNumberConvert's INT output."""
    executor = Executor(load_registry(plugins=False), make_environment(tmp_path))
    ui = {
        "nodes": [
            {"id": 1, "type": "PrimitiveStringMultiline", "widgets_values": [" 12.5 "], "inputs": [],
             "outputs": [{"name": "STRING", "type": "STRING", "links": [1]}]},
            {"id": 2, "type": "ComfyNumberConvert", "widgets_values": [],
             "inputs": [{"name": "value", "type": "INT,FLOAT,STRING,BOOLEAN", "link": 1}],
             "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": []},
                         {"name": "INT", "type": "INT", "links": [2]}]},
            {"id": 3, "type": "PreviewAny", "widgets_values": [None, None, False],
             "inputs": [{"name": "source", "type": "*", "link": 2}],
             "outputs": [{"name": "STRING", "type": "STRING", "links": []}]},
        ],
        "links": [[1, 1, 0, 2, 0, "STRING"], [2, 2, 1, 3, 0, "INT"]],
    }
    prompt = ui_to_api(ui, executor.registry.object_info(executor.env))
    assert prompt["3"]["inputs"] == {"source": ["2", 1]}
    result = executor.run(json.loads(json.dumps(prompt)))
    assert result.status == "success", result.error
    assert result.outputs["3"] == {"text": ["12"]}
