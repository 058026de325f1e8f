"""Socket types: the values that travel along links, named as ComfyUI names them.

A socket input is link-only; its value is whatever the upstream node produced, so pydantic does not validate it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any


@dataclass(frozen=True)
class Socket:
    """Marks an input or alias as a link-only socket of the given ComfyUI type name."""

    name: str


Model = Annotated[Any, Socket("MODEL")]
Clip = Annotated[Any, Socket("CLIP")]
Vae = Annotated[Any, Socket("VAE")]
Conditioning = Annotated[Any, Socket("CONDITIONING")]
Latent = Annotated[Any, Socket("LATENT")]
Image = Annotated[Any, Socket("IMAGE")]
Mask = Annotated[Any, Socket("MASK")]
AnyType = Annotated[Any, Socket("*")]
# Custom sampling (ComfyUI's SamplerCustomAdvanced): noise levels, a sampler, initial noise, a guided model.
Sigmas = Annotated[Any, Socket("SIGMAS")]
Sampler = Annotated[Any, Socket("SAMPLER")]
Noise = Annotated[Any, Socket("NOISE")]
Guider = Annotated[Any, Socket("GUIDER")]
