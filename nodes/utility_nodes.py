"""Utility nodes of ComfyUI's core that shared workflows use to look at and convert plain values: PreviewAny
(comfy_extras/nodes_preview_any.py) and ComfyNumberConvert (comfy_extras/nodes_number_convert.py).

Names, inputs and outputs are ComfyUI's; the text PreviewAny shows is formed as ComfyUI forms it (a string as is, a
number or boolean by str(), anything else as indented JSON or, failing that, str()), so a workflow built to show a
value shows the same text here.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import torch
from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Node, NodeOutput
from latentgraph.engine.types import AnyType, Socket


def preview_text(source: Any) -> str:
    """ComfyUI's PreviewAny text of a value: tensors print with six edge items, as ComfyUI sets for the call."""
    if source is None:
        return "None"
    if isinstance(source, str):
        return source
    if isinstance(source, (int, float, bool)):
        return str(source)
    try:
        return json.dumps(source, indent=4)
    except (TypeError, ValueError):
        previous = torch._tensor_str.PRINT_OPTS.edgeitems  # restored after: print options are process-wide
        torch.set_printoptions(edgeitems=6)
        try:
            return str(source)
        except Exception:  # an object whose __str__ fails still gets a preview, as in ComfyUI
            return "source exists, but could not be serialized."
        finally:
            torch.set_printoptions(edgeitems=previous)


class PreviewAny(Node):
    """Shows any value as text in the editor and passes that text on."""

    CATEGORY = "utilities"
    DISPLAY_NAME = "Preview as Text"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)

    source: AnyType

    def execute(self, ctx: RunContext) -> NodeOutput:
        text = preview_text(self.source)
        return NodeOutput((text,), ui={"text": [text]})


def convert_number(value: Any) -> tuple[float, int]:
    """ComfyUI's ComfyNumberConvert: booleans as 1/0, a float's int truncated toward zero, a string parsed (as an
    integer when it is one, so large integers stay exact); non-finite and empty values refused."""
    if isinstance(value, bool):
        as_float, as_int = float(value), int(value)
    elif isinstance(value, int):
        as_float, as_int = float(value), value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"Cannot convert non-finite value to number: {value}")
        as_float, as_int = value, int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("Cannot convert empty string to number.")
        try:
            as_float = float(text)
        except ValueError:
            raise ValueError(f"Cannot convert string to number: {value!r}") from None
        if not math.isfinite(as_float):
            raise ValueError(f"Cannot convert non-finite value to number: {as_float}")
        try:
            as_int = int(text)
        except ValueError:
            as_int = int(as_float)
    else:
        raise TypeError(f"Unsupported input type: {type(value).__name__}")
    return as_float, as_int


class ComfyNumberConvert(Node):
    """Converts an integer, float, string or boolean into a float and an integer."""

    CATEGORY = "math"
    DISPLAY_NAME = "Convert Number"
    RETURN_TYPES = ("FLOAT", "INT")

    value: Annotated[Any, Socket("INT,FLOAT,STRING,BOOLEAN")]

    def execute(self, ctx: RunContext) -> tuple:
        return convert_number(self.value)
