"""Tiny random SDXL (base, refiner) and SD3 models for tests, and a tiny T5 tokenizer built in place (no hub)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, UNet2DConditionModel
from latentgraph.engine.context import Environment, RunContext
from latentgraph.engine.interrupt import InterruptToken
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

WIDTH = 32
T5_WORDS = "a photo of an astronaut riding horse on the moon cat dog blurry red".split()


def _clip(projection: bool, act: str, seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                            projection_dim=WIDTH, hidden_act=act, vocab_size=49408, bos_token_id=49406,
                            eos_token_id=49407, pad_token_id=1)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    return model.eval().requires_grad_(False)


def _vae(channels: int, scale: float, shift: float | None, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         latent_channels=channels, norm_num_groups=32, sample_size=64, scaling_factor=scale,
                         shift_factor=shift, use_quant_conv=shift is None,
                         use_post_quant_conv=shift is None).eval().requires_grad_(False)


def tiny_sdxl(refiner: bool = False, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    time_ids = 5 if refiner else 6
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=WIDTH if refiner else 2 * WIDTH, attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=WIDTH + time_ids * 8, norm_num_groups=32, use_linear_projection=True,
    ).eval().requires_grad_(False)
    return {"unet": unet, "vae": _vae(4, 0.13025, None, seed + 1),
            "text_encoder": None if refiner else _clip(False, "quick_gelu", seed + 2),
            "text_encoder_2": _clip(True, "gelu", seed + 3)}


def tiny_t5(seed: int = 0, width: int = 48) -> T5EncoderModel:
    torch.manual_seed(seed)
    config = T5Config(d_model=width, d_ff=37, d_kv=8, num_heads=4, num_layers=2, vocab_size=64,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    return T5EncoderModel(config).eval().requires_grad_(False)


def write_t5_tokenizer(folder: Path) -> Path:
    """A word-level T5-style tokenizer (tokenizer.json, <pad>=0, </s>=1 appended) for the tiny T5."""
    words = ["<pad>", "</s>", "<unk>"] + [f"\u2581{w}" for w in T5_WORDS]
    tokenizer = Tokenizer(models.Unigram([(w, -float(i)) for i, w in enumerate(words)], unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
         "model_max_length": 512, "extra_ids": 0}))
    return folder


def tiny_sd3(seed: int = 0, t5: bool = True) -> dict[str, Any]:
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=2 * WIDTH,
        out_channels=16, pos_embed_max_size=16).eval().requires_grad_(False)
    return {"transformer": transformer, "vae": _vae(16, 1.5305, 0.0609, seed + 1),
            "text_encoder": _clip(True, "quick_gelu", seed + 2), "text_encoder_2": _clip(True, "gelu", seed + 3),
            "text_encoder_3": tiny_t5(seed + 4, width=64) if t5 else None,
            "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0)}


def run_context(env: Environment) -> RunContext:
    return RunContext(env=env, node_id="1", prompt_id="test", prompt={}, extra_data={}, interrupt=InterruptToken(),
                      sink=lambda event, data: None)
