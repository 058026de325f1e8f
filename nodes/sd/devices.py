"""Choosing the execution device and weight dtype, with overrides from the environment.

CUDA first, then Apple's MPS, then the CPU. Half precision where the hardware runs it well (fp16 on CUDA and MPS);
modules that are numerically fragile in fp16 (decoders, whose activations overflow) get bf16 where CUDA supports it
and fp32 otherwise. LATENTGRAPH_DEVICE ("cpu", "cuda", "cuda:1", "mps") and LATENTGRAPH_DTYPE ("fp32", "fp16",
"bf16") override the choice.
"""

from __future__ import annotations

import os

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def execution_device() -> torch.device:
    """The device models run on."""
    override = os.environ.get("LATENTGRAPH_DEVICE")
    if override:
        return torch.device(override)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def weight_dtype(device: torch.device, fragile: bool = False) -> torch.dtype:
    """The dtype weights are kept in on `device`; `fragile` modules avoid fp16."""
    override = os.environ.get("LATENTGRAPH_DTYPE")
    if override:
        if override.lower() not in DTYPES:
            raise ValueError(f"LATENTGRAPH_DTYPE={override!r}: expected one of {sorted(set(DTYPES))}")
        return DTYPES[override.lower()]
    if device.type == "cuda":
        if fragile:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.float16
    if device.type == "mps":
        return torch.float32 if fragile else torch.float16
    return torch.float32


def total_memory(device: torch.device) -> int:
    """Bytes of memory the device has (system RAM for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def empty_cache(device: torch.device) -> None:
    """Returns cached allocator blocks to the driver after models were offloaded."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
