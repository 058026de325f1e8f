"""TorchCompileModel: the MODEL's denoiser (UNet or MMDiT) run through torch.compile (ComfyUI's name and inputs).

ComfyUI's node wraps the diffusion model in `torch.compile` for the process's lifetime; here the compiled module is
kept with the loaded model in the model manager (shared by every workflow on that checkpoint, dropped with it), and
the compiled code is kept under the base directory, so a restart does not compile again
(nodes/sd/compiled.py). The options are part of the MODEL handle: a compiled MODEL's results are cached apart from
the eager one's. A backend that cannot run on this machine is refused at validation; a compile failure at run time
falls back to eager with a warning.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.node import Input, Node
from latentgraph.engine.types import Model
from latentgraph.nodes.sd.compiled import CompileOptions
from latentgraph.nodes.sd.devices import execution_device


class TorchCompileModel(Node):
    """Compiles the model's denoiser with torch.compile: slower first step of each new size, faster steps after."""

    CATEGORY = "_for_testing"
    RETURN_TYPES = ("MODEL",)

    model: Model
    backend: Literal["inductor", "cudagraphs"] = Input("inductor")

    @classmethod
    def check(cls, inputs: dict[str, Any], env: Environment) -> list[tuple[str, str]]:
        if inputs.get("backend") == "cudagraphs" and execution_device().type != "cuda":
            return [("backend", f"cudagraphs needs a CUDA device; this server runs models on "
                                f"{execution_device().type} (use inductor)")]
        return []

    def execute(self, ctx: RunContext) -> tuple:
        if not hasattr(self.model, "compile"):
            raise ValueError("TorchCompileModel: this MODEL cannot be compiled (it is not a denoiser handle)")
        return (replace(self.model, compile=CompileOptions(backend=self.backend)),)
