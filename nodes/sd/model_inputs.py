"""The denoiser call by family name, for callers that hold a name rather than a family (the training loop).

What each family's network takes besides the latent, the timestep and the text context is the family's own
knowledge (`Family.denoise`, nodes/sd/families/); this only looks the family up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from latentgraph.nodes.sd.families import family as family_named


def denoiser_output(family: str, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                    options: Sequence[Mapping[str, Any]], negative: Sequence[bool]) -> torch.Tensor:
    """The model output for `x` = len(options) groups of equal batch, group i conditioned by context/options[i]."""
    return family_named(family).denoise(model, x, t, context, options, negative)
