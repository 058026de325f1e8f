"""The stable plugin surface: what a third-party node package imports, and nothing else.

A node package declares nodes with `Node`, `Input`, `Hidden` and the socket types, returns `NodeOutput` when it
adds UI data, and registers through the `latentgraph.nodes` entry-point group. Names here keep their meaning
across minor versions; anything imported from deeper modules may move.
"""

from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.interrupt import Interrupted
from latentgraph.engine.node import Hidden, Input, Node, NodeOutput
from latentgraph.engine.types import AnyType, Clip, Conditioning, Image, Latent, Mask, Model, Socket, Vae

__all__ = [
    "AnyType",
    "Clip",
    "Conditioning",
    "Environment",
    "Hidden",
    "Image",
    "Input",
    "Interrupted",
    "Latent",
    "Mask",
    "Model",
    "Node",
    "NodeOutput",
    "RunContext",
    "Socket",
    "Vae",
]
