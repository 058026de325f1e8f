"""Cheap nodes for engine tests: integer arithmetic over small tensors, a slow node, a failing node."""

from __future__ import annotations

import time
import weakref
from typing import Annotated, Any, ClassVar

import torch
from latentgraph.engine.context import RunContext
from latentgraph.engine.node import Input, Node, NodeOutput
from latentgraph.engine.registry import Registry
from latentgraph.engine.types import Socket

Number = Annotated[Any, Socket("NUMBER")]


class Source(Node):
    """A constant as a tensor of `size` elements."""

    RETURN_TYPES = ("NUMBER",)
    value: int = Input(0, ge=-1000, le=100000)
    size: int = Input(1, ge=1, le=64)

    def execute(self, ctx: RunContext) -> tuple:
        return (torch.full((self.size,), float(self.value)),)


class Combine(Node):
    """a * 2 + b + k, elementwise on the first element."""

    RETURN_TYPES = ("NUMBER",)
    a: Number
    b: Number | None = Input(None, optional=True)
    k: int = Input(0, ge=-1000, le=100000)

    def execute(self, ctx: RunContext) -> tuple:
        total = self.a[:1] * 2 + self.k
        if self.b is not None:
            total = total + self.b[:1]
        return (total,)


class Chain(Node):
    """a + k, remembering a weak reference to each result so tests can see when the engine lets go of it."""

    RETURN_TYPES = ("NUMBER",)
    produced: ClassVar[list[weakref.ref]] = []
    a: Number
    k: int = Input(0)

    def execute(self, ctx: RunContext) -> tuple:
        out = self.a + self.k
        Chain.produced.append(weakref.ref(out))
        return (out,)


class Show(Node):
    """Output node: reports the value it received."""

    OUTPUT_NODE = True
    value: Number

    def execute(self, ctx: RunContext) -> NodeOutput:
        return NodeOutput(ui={"value": [float(self.value[0])]})


class Slow(Node):
    """Counts up to `steps`, checking for interrupts at every step like a sampler does."""

    RETURN_TYPES = ("NUMBER",)
    steps: int = Input(100, ge=1, le=100000)
    reached: ClassVar[list[int]] = []

    def execute(self, ctx: RunContext) -> tuple:
        for step in range(self.steps):
            ctx.check_interrupt()
            Slow.reached.append(step)
            ctx.progress(step + 1, self.steps)
            time.sleep(0.01)  # a step's work: it leaves an interrupt time to land mid-node
        return (torch.tensor([float(self.steps)]),)


class Fail(Node):
    """Raises, to test that a failing node fails only its run."""

    RETURN_TYPES = ("NUMBER",)
    message: str = Input("boom")

    def execute(self, ctx: RunContext) -> tuple:
        raise RuntimeError(self.message)


class Even(Node):
    """Accepts only even values: a custom check across inputs."""

    RETURN_TYPES = ("NUMBER",)
    value: int = Input(0)
    mode: str = Input("strict")

    @classmethod
    def check(cls, inputs: dict, env) -> list[tuple[str, str]]:
        return [] if inputs["value"] % 2 == 0 else [("value", "value must be even")]

    def execute(self, ctx: RunContext) -> tuple:
        return (torch.tensor([float(self.value)]),)


class Text(Node):
    """A string output, to test type checks along links."""

    RETURN_TYPES = ("STRING",)
    text: str = Input("")

    def execute(self, ctx: RunContext) -> tuple:
        return (self.text,)


class Random(Node):
    """Not deterministic: never cached, so its descendants always re-run."""

    RETURN_TYPES = ("NUMBER",)
    DETERMINISTIC = False

    def execute(self, ctx: RunContext) -> tuple:
        return (torch.rand(1),)


def cheap_registry() -> Registry:
    registry = Registry()
    for cls in (Source, Combine, Chain, Show, Slow, Fail, Even, Text, Random):
        registry.register(cls)
    return registry
