"""The runtime's memory probe for the executor (`env.services["memory_probe"]`): the device's own allocator.

On CUDA, peak allocated memory per node from torch's allocator statistics (reset before each node), and a
synchronize as the node returns, so that its wall time includes the kernels it queued rather than leaving them
to the next node that reads a result back. Elsewhere, the engine's resident-memory probe with the device's name.
The device names timing records, so that estimates on one machine are not priced with another device's timings.
"""

from __future__ import annotations

import torch
from latentgraph.engine.context import Environment
from latentgraph.engine.executor import MEMORY_PROBE_SERVICE
from latentgraph.engine.insight import RssPeakProbe
from latentgraph.nodes.sd.devices import execution_device


def device_name(device: torch.device) -> str:
    """`cuda:0 NVIDIA H200`, `mps`, `cpu`: what timing records are keyed by."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return device.type


class TorchMemoryProbe:
    """Peak memory of one node on the execution device (CUDA's allocator), else peak resident memory."""

    def __init__(self, device: torch.device | None = None) -> None:
        self._device = device or execution_device()
        self.device = device_name(self._device)
        self._cuda = self._device.type == "cuda"
        self._rss = RssPeakProbe()
        self._baseline = 0

    def start(self) -> None:
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self._device)
            self._baseline = torch.cuda.memory_allocated(self._device)
        else:
            self._rss.start()

    def peak_bytes(self) -> int | None:
        if self._cuda:
            torch.cuda.synchronize(self._device)
            return max(0, torch.cuda.max_memory_allocated(self._device) - self._baseline)
        return self._rss.peak_bytes()


def install_memory_probe(env: Environment) -> None:
    """Gives the executor of `env` this probe, unless the runtime already supplied one."""
    if MEMORY_PROBE_SERVICE not in env.services:
        env.services[MEMORY_PROBE_SERVICE] = TorchMemoryProbe()
