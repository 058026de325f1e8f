"""The stable plugin surface: what a third-party node package imports, and nothing else.

A node package declares nodes with `Node`, `Input`, `Hidden` and the socket types, returns `NodeOutput` when it
adds UI data, and registers through the `latentgraph.nodes` entry-point group. A model-family package implements
`Family` (most start from `BaseFamily`) and registers through the `latentgraph.families` entry-point group; those
two names are imported on first use, so that a node package importing this module does not load torch. Names here
keep their meaning across minor versions; anything imported from deeper modules may move.
"""

from typing import TYPE_CHECKING

from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.interrupt import Interrupted
from latentgraph.engine.node import Hidden, Input, Node, NodeOutput
from latentgraph.engine.types import (
    AnyType,
    Clip,
    Conditioning,
    Guider,
    Image,
    Latent,
    Mask,
    Model,
    Noise,
    Sampler,
    Sigmas,
    Socket,
    Vae,
)

if TYPE_CHECKING:
    from latentgraph.nodes.sd.family import BaseFamily, Family

__all__ = [
    "AnyType",
    "BaseFamily",
    "Clip",
    "Conditioning",
    "Environment",
    "Family",
    "Guider",
    "Hidden",
    "Image",
    "Input",
    "Interrupted",
    "Latent",
    "Mask",
    "Model",
    "Node",
    "NodeOutput",
    "Noise",
    "RunContext",
    "Sampler",
    "Sigmas",
    "Socket",
    "Vae",
]


def __getattr__(name: str) -> object:
    """`Family` and `BaseFamily` come from the SD runtime (which imports torch) only when asked for."""
    if name in ("Family", "BaseFamily"):
        from latentgraph.nodes.sd import family

        return getattr(family, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
