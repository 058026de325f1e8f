"""Primitive value nodes evaluated on the backend (ComfyUI's comfy_extras/nodes_primitive.py): one widget, one
output of the same type, so a value can be set once and wired into several inputs.

The editor's own "Primitive" node (PrimitiveNode) is a front-end construct that never reaches the backend: the
workflow converter folds its value into the inputs it feeds.
"""

from __future__ import annotations

import sys

from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Input, Node


class PrimitiveString(Node):
    """A string value."""

    CATEGORY = "utils/primitive"
    DISPLAY_NAME = "Text"
    RETURN_TYPES = ("STRING",)

    value: str = Input()

    def execute(self, ctx: RunContext) -> tuple:
        return (self.value,)


class PrimitiveStringMultiline(Node):
    """A string value edited in a multi-line box."""

    CATEGORY = "utils/primitive"
    DISPLAY_NAME = "Text (Multiline)"
    RETURN_TYPES = ("STRING",)

    value: str = Input(multiline=True)

    def execute(self, ctx: RunContext) -> tuple:
        return (self.value,)


class PrimitiveInt(Node):
    """An integer value (the editor can change it after each run, like a seed)."""

    CATEGORY = "utils/primitive"
    DISPLAY_NAME = "Int"
    RETURN_TYPES = ("INT",)

    value: int = Input(ge=-sys.maxsize, le=sys.maxsize, control_after_generate=True)

    def execute(self, ctx: RunContext) -> tuple:
        return (self.value,)


class PrimitiveFloat(Node):
    """A floating-point value."""

    CATEGORY = "utils/primitive"
    DISPLAY_NAME = "Float"
    RETURN_TYPES = ("FLOAT",)

    value: float = Input(ge=-sys.maxsize, le=sys.maxsize)

    def execute(self, ctx: RunContext) -> tuple:
        return (self.value,)


class PrimitiveBoolean(Node):
    """A true/false value."""

    CATEGORY = "utils/primitive"
    DISPLAY_NAME = "Boolean"
    RETURN_TYPES = ("BOOLEAN",)

    value: bool = Input()

    def execute(self, ctx: RunContext) -> tuple:
        return (self.value,)
