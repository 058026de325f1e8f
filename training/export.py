"""Turning a demo training run into shippable files: one LDM-layout `.safetensors` (what CheckpointLoaderSimple
and other SD tools load) and a diffusers folder.

The VAE is rescaled on the way out so that SD1.x's fixed latent scale (0.18215) gives the UNet latents of unit
spread, exactly as in training: the encoder's mean (and std) are multiplied and the decoder's first 1x1 conv
divided by the same factor, which leaves reconstructions unchanged.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from latentgraph.nodes.sd.checkpoint_save import save_single_file
from latentgraph.nodes.sd.detect import family_config
from latentgraph.nodes.sd.tokenizer import TOKENIZER_DIR
from latentgraph.training.demo import TrainState
from latentgraph.training.models import build_text_encoder, build_unet, build_vae
from transformers import CLIPTextModel


def rescale_vae(vae: AutoencoderKL, latent_scale: float) -> AutoencoderKL:
    """Makes `encode(x).mean * scaling_factor` equal the training run's `mean / latent_scale`."""
    factor = 1.0 / (latent_scale * vae.config.scaling_factor)
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[:channels] *= factor
        vae.quant_conv.bias[:channels] *= factor
        vae.quant_conv.bias[channels:] += 2 * math.log(factor)
        vae.post_quant_conv.weight /= factor
    return vae


def trained_components(state: TrainState) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """The run's models with EMA weights for the UNet and text encoder, and the VAE rescaled."""
    arch = state.config.arch
    unet, vae, text_encoder = build_unet(arch), build_vae(arch), build_text_encoder(arch)
    unet.load_state_dict(state.ema_unet or state.unet)
    text_encoder.load_state_dict(state.ema_text_encoder or state.text_encoder)
    vae.load_state_dict(state.vae)
    rescale_vae(vae, state.latent_scale)
    for model in (unet, vae, text_encoder):
        model.eval().requires_grad_(False)
    return unet, vae, text_encoder


def write_single_file(state: TrainState, path: Path, dtype: torch.dtype = torch.float16) -> Path:
    unet, vae, text_encoder = trained_components(state)
    save_single_file(unet, vae, text_encoder, Path(path), dtype=dtype)
    return Path(path)


def write_diffusers_folder(state: TrainState, folder: Path, dtype: torch.dtype = torch.float16) -> Path:
    """A StableDiffusionPipeline-style folder (model_index.json, unet, vae, text_encoder, tokenizer, scheduler)."""
    unet, vae, text_encoder = trained_components(state)
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        model.to(dtype).save_pretrained(str(folder / name), safe_serialization=True)
    shutil.copytree(TOKENIZER_DIR, folder / "tokenizer", ignore=shutil.ignore_patterns("README.md"))
    DDPMScheduler.from_config(family_config("sd1", "scheduler")).save_pretrained(str(folder / "scheduler"))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


