"""A tiny SD1-architecture model built deterministically, for tests and as the bundled default checkpoint.

It has the real CLIP tokenizer and vocabulary and every part of SD1.x (cross-attention UNet, 8x VAE with 4 latent
channels, CLIP text encoder), only narrow: it runs a 64x64 txt2img in well under a second on a CPU. Its weights
are random from a fixed seed, so its images are noise-like, not pictures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from latentgraph.nodes.sd.checkpoint_save import save_single_file
from latentgraph.nodes.sd.detect import family_config
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer
from safetensors.torch import save_file

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

TEXT_WIDTH = 32


@dataclass
class TinyComponents:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler


def build_tiny_pipeline_components(seed: int = 0) -> TinyComponents:
    """The same tiny random model for the same seed, on every machine (CPU float32)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=32)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=32, sample_size=64, scaling_factor=0.18215)
        text_config = dict(family_config("sd1", "text_encoder"), hidden_size=TEXT_WIDTH, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=1, projection_dim=TEXT_WIDTH)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    finally:
        torch.random.set_rng_state(generator_state)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    scheduler = DDIMScheduler.from_config(family_config("sd1", "scheduler"))
    return TinyComponents(unet, vae, text_encoder, load_clip_tokenizer(), scheduler)


def write_tiny_checkpoint(path: Path, seed: int = 0, dtype: torch.dtype | None = None) -> Path:
    """Writes the tiny model as a single-file LDM-layout safetensors checkpoint (the bundled default's format)."""
    parts = build_tiny_pipeline_components(seed)
    return save_single_file(parts.unet, parts.vae, parts.text_encoder, Path(path), dtype=dtype)


def write_random_lora(path: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module, rank: int = 4,
                      seed: int = 0, scale: float = 0.5) -> Path:
    """A kohya-format LoRA with random low-rank factors on every attention projection of both models.

    Made for a given model (e.g. the bundled one) so that the LoRA workflow and tests have a LoRA that fits.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    targets = [("lora_unet_", unet, ("to_q", "to_k", "to_v", "to_out.0")),
               ("lora_te_text_model_", text_encoder, ("q_proj", "k_proj", "v_proj", "out_proj"))]
    for prefix, model, suffixes in targets:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(suffixes):
                base = prefix + name.replace(".", "_")
                out_features, in_features = module.weight.shape
                tensors[base + ".lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * scale
                tensors[base + ".lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * scale
                tensors[base + ".alpha"] = torch.tensor(float(rank))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
