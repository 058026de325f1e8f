"""CLIPTextEncodeSD3 on the tiny SD3 checkpoint: a prompt per encoder, against diffusers' own SD3 encode_prompt with
prompt (CLIP-L), prompt_2 (CLIP-G) and prompt_3 (T5) as the reference; ComfyUI's empty_padding "none" leaves out
the parts whose prompts are empty."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from latentgraph.nodes import make_environment
from latentgraph.nodes.sd.loader_nodes import CheckpointLoaderSimple
from latentgraph.nodes.sd.sd3 import save_sd3_single_file
from latentgraph.nodes.sd.sd3_nodes import CLIPTextEncodeSD3
from latentgraph.nodes.sd.text_nodes import CLIPTextEncode
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer
from transformers import AutoTokenizer

from tests.nodes.sd.families_tiny import run_context, tiny_sd3, write_t5_tokenizer

L_TEXT, G_TEXT, T5_TEXT = "a red house", "a photo of an astronaut", "riding a horse on the moon"


@pytest.fixture(scope="module")
def sd3(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("sd3_text")
    parts = tiny_sd3()
    save_sd3_single_file(parts["transformer"], parts["vae"],
                         {c: parts[c] for c in ("text_encoder", "text_encoder_2", "text_encoder_3")},
                         root / "models" / "checkpoints" / "tiny_sd3.safetensors")
    tokenizer_dir = root / "models" / "text_encoders" / "t5_tokenizer"
    write_t5_tokenizer(tokenizer_dir)
    ctx = run_context(make_environment(root))
    _, clip, _ = CheckpointLoaderSimple(ckpt_name="tiny_sd3.safetensors").execute(ctx)
    pipeline = StableDiffusion3Pipeline(
        transformer=parts["transformer"], scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=parts["vae"],
        text_encoder=parts["text_encoder"], tokenizer=load_clip_tokenizer(), text_encoder_2=parts["text_encoder_2"],
        tokenizer_2=load_clip_tokenizer("!"), text_encoder_3=parts["text_encoder_3"],
        tokenizer_3=AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    return {"ctx": ctx, "clip": clip, "pipeline": pipeline}


def encode(sd3: dict, clip_l: str, clip_g: str, t5xxl: str, empty_padding: str) -> tuple[torch.Tensor, torch.Tensor]:
    [[context, options]] = CLIPTextEncodeSD3(clip=sd3["clip"], clip_l=clip_l, clip_g=clip_g, t5xxl=t5xxl,
                                             empty_padding=empty_padding).execute(sd3["ctx"])[0]
    return context, options["pooled_output"]


def diffusers_reference(sd3: dict, clip_l: str, clip_g: str, t5xxl: str) -> tuple[torch.Tensor, torch.Tensor]:
    embeds, _, pooled, _ = sd3["pipeline"].encode_prompt(clip_l, clip_g, t5xxl, device="cpu",
                                                         do_classifier_free_guidance=False)
    return embeds, pooled


def test_a_prompt_per_encoder_equals_diffusers(sd3: dict) -> None:
    context, pooled = encode(sd3, L_TEXT, G_TEXT, T5_TEXT, "none")
    embeds, reference_pooled = diffusers_reference(sd3, L_TEXT, G_TEXT, T5_TEXT)
    diff = max(float((context - embeds).abs().max()), float((pooled - reference_pooled).abs().max()))
    print(f"CLIPTextEncodeSD3 vs diffusers encode_prompt(prompt, prompt_2, prompt_3): max diff = {diff:.3g}")
    assert context.shape == embeds.shape and diff < 1e-5
    # each encoder really read its own prompt: one prompt everywhere gives another context
    same, _ = encode(sd3, L_TEXT, L_TEXT, L_TEXT, "none")
    assert float((same - context).abs().max()) > 1e-3
    # one prompt in every field equals CLIPTextEncode
    [[plain, _]] = CLIPTextEncode(text=L_TEXT, clip=sd3["clip"]).execute(sd3["ctx"])[0]
    assert torch.equal(same, plain)


def test_empty_padding(sd3: dict) -> None:
    """"none": empty CLIP prompts drop the 77 CLIP tokens (pooled zeros), an empty T5 prompt drops T5's 256;
    "empty_prompt": empty prompts are encoded, as diffusers encodes ""."""
    embeds, pooled = diffusers_reference(sd3, "", "", T5_TEXT)
    t5_only, zero_pooled = encode(sd3, "", "", T5_TEXT, "none")
    assert t5_only.shape[1] == 256 and torch.allclose(t5_only, embeds[:, 77:], atol=1e-5)
    assert not zero_pooled.any()
    padded, padded_pooled = encode(sd3, "", "", T5_TEXT, "empty_prompt")
    assert torch.allclose(padded, embeds, atol=1e-5) and torch.allclose(padded_pooled, pooled, atol=1e-5)
    clip_embeds, clip_pooled = diffusers_reference(sd3, L_TEXT, G_TEXT, "")
    clip_only, clip_only_pooled = encode(sd3, L_TEXT, G_TEXT, "", "none")
    assert clip_only.shape[1] == 77 and torch.allclose(clip_only, clip_embeds[:, :77], atol=1e-5)
    assert torch.allclose(clip_only_pooled, clip_pooled, atol=1e-5)
    nothing, _ = encode(sd3, "", "", "", "none")
    assert nothing.shape == (1, 77, embeds.shape[-1]) and not nothing.any()


def test_refuses_another_familys_clip(sd3: dict, shared_executor) -> None:
    _, sd1_clip, _ = CheckpointLoaderSimple(ckpt_name="tiny.safetensors").execute(run_context(shared_executor.env))
    with pytest.raises(ValueError, match="CLIPTextEncodeSD3 needs the CLIP of an SD3 model"):
        CLIPTextEncodeSD3(clip=sd1_clip, clip_l="a", clip_g="b", t5xxl="c", empty_padding="none").execute(sd3["ctx"])
