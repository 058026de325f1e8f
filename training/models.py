"""The demo model's architecture: SD1.x's three components (AutoencoderKL, CLIPTextModel, UNet2DConditionModel),
shrunk, with SD1.x's conventions kept so that every SD1 code path (single-file layout, 0.18215 latent scale,
scaled-linear eps schedule, <|endoftext|> padding, 8 attention heads) runs it unchanged. One departure: the VAE
normalises over one group (see vae_init.py), which a checkpoint records in its config hints."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

SD1_SCALING_FACTOR = 0.18215
VAE_NORM_GROUPS = 1  # not SD's 32: see vae_init.py; checkpoints carry it as a config hint
NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


@dataclass
class Architecture:
    """Sizes of the three components; every channel count is a multiple of 32 (SD's GroupNorm has 32 groups)."""

    resolution: int = 64
    vae_channels: tuple[int, ...] = (32, 32, 64, 64)
    unet_channels: tuple[int, ...] = (64, 96, 96)
    unet_layers_per_block: int = 1
    text_hidden: int = 64
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 256

    def as_dict(self) -> dict:
        return asdict(self)


def build_vae(arch: Architecture) -> AutoencoderKL:
    levels = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(arch.vae_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=VAE_NORM_GROUPS,
        sample_size=arch.resolution,
        scaling_factor=SD1_SCALING_FACTOR,
    )


def build_unet(arch: Architecture) -> UNet2DConditionModel:
    levels = len(arch.unet_channels)
    return UNet2DConditionModel(
        sample_size=arch.resolution // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=arch.unet_layers_per_block,
        block_out_channels=tuple(arch.unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=arch.text_hidden,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_text_encoder(arch: Architecture) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=arch.text_hidden,
        intermediate_size=arch.text_intermediate,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def alphas_cumprod() -> torch.Tensor:
    """SD1.x's noise schedule (scaled_linear betas), the one KSampler assumes for SD1 checkpoints."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
