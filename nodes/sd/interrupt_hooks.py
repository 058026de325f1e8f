"""Interrupts that take effect inside one denoiser call, not only between sampling steps.

A step of a large model on a CPU can take most of a minute (44 s at 1024x1024), and checking the interrupt only
between steps made a stop wait for it. `interrupt_checks` puts a forward pre-hook on every block of the network
(each member of an `nn.ModuleList`: UNet down/up blocks and their resnets and attentions, transformer blocks), so
that a stop takes effect before the next block runs. A pre-hook costs microseconds per block; the hooks are
removed when the context ends, so a model shared with other runs is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


def blocks(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The network's blocks: every module held in an `nn.ModuleList`, at any depth."""
    return [child for module in net.modules() if isinstance(module, torch.nn.ModuleList) for child in module]


@contextmanager
def interrupt_checks(net: Any, check: Callable[[], None] | None, per_block: bool) -> Iterator[Any]:
    """Calls `check` (which raises to stop) before each block of `net` runs (`per_block`: a hook per block costs
    time, worth it where one call is long), while the context lasts. A compiled net (nodes/sd/compiled.py) has no
    blocks to hook; it gets `check` for the time it waits for a compile."""
    if check is not None and hasattr(net, "with_interrupt"):
        yield net.with_interrupt(check)
        return
    if check is None or not per_block or not isinstance(net, torch.nn.Module):
        yield net
        return

    def hook(module: torch.nn.Module, args: object) -> None:
        check()

    handles = [block.register_forward_pre_hook(hook) for block in blocks(net)]
    try:
        yield net
    finally:
        for handle in handles:
            handle.remove()
