"""How many pixels one image or latent batch may have: a guard against requests that would exhaust memory.

A 16384x16384 EmptyLatentImage into VAEDecode, a small PNG that decodes to 13000x13000 (6.9 GB), a 400-frame GIF:
each fits in a small request and would take the machine's memory. Sizes are checked before anything is
allocated: at validation for the nodes that make latents, from the file header for the ones that decode images.
The budget is LATENTGRAPH_MAX_PIXELS (default 2^26, 67 M pixels: one 8192x8192 image or 64 of 1024x1024).
"""

from __future__ import annotations

import os

DEFAULT_MAX_PIXELS = 2**26
MAX_PIXELS_ENV = "LATENTGRAPH_MAX_PIXELS"


def max_pixels() -> int:
    """The budget, read at each check so that a server started with the variable set uses it."""
    raw = os.environ.get(MAX_PIXELS_ENV, "")
    try:
        value = int(raw) if raw else DEFAULT_MAX_PIXELS
    except ValueError:
        value = DEFAULT_MAX_PIXELS
    return value if value > 0 else DEFAULT_MAX_PIXELS


def over_budget(width: int, height: int, count: int = 1, what: str = "the images") -> str | None:
    """None when `count` images of width x height fit the budget, else a message saying what to change."""
    pixels = int(width) * int(height) * max(1, int(count))
    budget = max_pixels()
    if pixels <= budget:
        return None
    shown = f"{count} x {width}x{height}" if count > 1 else f"{width}x{height}"
    return (f"{what} would have {pixels:,} pixels ({shown}); at most {budget:,} are allowed "
            f"(set {MAX_PIXELS_ENV} to change the budget)")
