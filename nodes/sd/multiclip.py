"""Text conditioning for the multi-encoder families: SDXL (CLIP-L + OpenCLIP bigG) and SD3 (CLIP-L + CLIP-G + T5).

Each CLIP encoder reads the prompt with the same emphasis syntax, chunking and embeddings as SD1.x
(nodes/sd/prompt.py), but SDXL and SD3 take the hidden states of a layer *without* the final layer norm (the
penultimate by default) and also need the pooled, projected output of the first chunk, as diffusers and ComfyUI
compute them:

- SDXL base: hidden = concat(CLIP-L, bigG) along the feature axis (768 + 1280 = 2048), pooled = bigG's projection;
- SDXL refiner: bigG only;
- SD3: concat(CLIP-L, CLIP-G) zero-padded to T5's width, followed along the sequence by T5's 256 tokens, or by 256
  zero tokens when there is no T5 (what diffusers does without text_encoder_3); pooled = concat(L, G) projections.

T5 reads the prompt without emphasis weights (the syntax is removed, the words kept).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from latentgraph.engine.folders import Folders
from latentgraph.nodes.sd.prompt import chunk_tokens, parse_weights, run_with_embeddings, tokenize_weighted
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer

T5_TOKENS = 256
CLIP_TOKENS = 77
CLIP_L_WIDTH = 768
CLIP_G_WIDTH = 1280


@dataclass
class Encoded:
    hidden: torch.Tensor  # [1, tokens, width]
    pooled: torch.Tensor | None  # [1, projection] (first chunk, unweighted)


def _run(encoder: torch.nn.Module, ids: torch.Tensor, layer: int, vectors: Mapping[tuple[int, int], torch.Tensor]
         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = run_with_embeddings(encoder, ids, vectors, output_hidden_states=True)
    pooled = getattr(out, "text_embeds", None)
    if pooled is None:
        pooled = getattr(out, "pooler_output", None)
    return out.hidden_states[layer].float(), None if pooled is None else pooled.float()


@torch.no_grad()
def encode_clip(text: str, encoder: torch.nn.Module, pad_token: str | None, layer: int = -2,
                folders: Folders | None = None, min_chunks: int = 1) -> Encoded:
    """Hidden states of `layer` (no final norm) for every 77-token chunk, and the first chunk's pooled output."""
    tokenizer = load_clip_tokenizer(pad_token)
    width = encoder.config.hidden_size
    device = next(encoder.parameters()).device
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = chunk_tokens(tokenize_weighted(text, tokenizer, folders, width), bos, eos, pad)
    empty_chunk = chunk_tokens([], bos, eos, pad)[0]
    chunks += [empty_chunk] * (min_chunks - len(chunks))
    ids = torch.tensor([[t.id for t in chunk] for chunk in chunks], device=device)
    vectors = {(r, c): t.vector.to(device) for r, chunk in enumerate(chunks) for c, t in enumerate(chunk)
               if t.vector is not None}
    hidden, pooled = _run(encoder, ids, layer, vectors)
    weights = torch.tensor([[t.weight for t in chunk] for chunk in chunks], device=device)
    if bool((weights != 1.0).any()):
        empty, _ = _run(encoder, torch.tensor([[t.id for t in empty_chunk]], device=device), layer, {})
        hidden = empty + (hidden - empty) * weights[..., None]
    return Encoded(hidden.reshape(1, -1, width).cpu(), None if pooled is None else pooled[:1].cpu())


def chunk_count(text: str, pad_token: str | None, width: int, folders: Folders | None = None) -> int:
    tokenizer = load_clip_tokenizer(pad_token)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    return len(chunk_tokens(tokenize_weighted(text, tokenizer, folders, width), bos, eos, pad))


def plain_text(text: str) -> str:
    """The prompt's words without emphasis syntax, for encoders that take no weights (T5)."""
    return "".join(piece for piece, _ in parse_weights(text))


@torch.no_grad()
def encode_t5(text: str, encoder: torch.nn.Module, tokenizer, tokens: int = T5_TOKENS) -> torch.Tensor:
    """T5's last hidden state [1, tokens, width] for the prompt, padded or truncated to `tokens` as diffusers does."""
    device = next(encoder.parameters()).device
    ids = tokenizer(plain_text(text), padding="max_length", max_length=tokens, truncation=True,
                    add_special_tokens=True, return_tensors="pt").input_ids.to(device)
    return encoder(ids)[0].float().cpu()


def sdxl_conditioning(text_l: str, text_g: str, clip_l: torch.nn.Module | None, clip_g: torch.nn.Module,
                      layer: int = -2, folders: Folders | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden [1, 77k, L+G], pooled [1, G projection]); the refiner passes clip_l None and gets bigG alone.

    When the two prompts need different numbers of chunks, the shorter is padded with empty-prompt chunks.
    """
    if clip_l is None:
        g = encode_clip(text_g, clip_g, "!", layer, folders)
        return g.hidden, g.pooled
    chunks = max(chunk_count(text_l, None, clip_l.config.hidden_size, folders),
                 chunk_count(text_g, "!", clip_g.config.hidden_size, folders))
    lo = encode_clip(text_l, clip_l, None, layer, folders, min_chunks=chunks)
    g = encode_clip(text_g, clip_g, "!", layer, folders, min_chunks=chunks)
    return torch.cat([lo.hidden, g.hidden], dim=-1), g.pooled


def sd3_conditioning(text: str, clip_l: torch.nn.Module | None, clip_g: torch.nn.Module | None,
                     t5: torch.nn.Module | None, t5_tokenizer, layer: int = -2, folders: Folders | None = None,
                     text_g: str | None = None, text_t5: str | None = None, with_clip: bool = True,
                     with_t5: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(context [1, 77k + 256, width], pooled [1, L + G projections]) for SD3's MMDiT.

    The context is as wide as T5 (or as CLIP-L + CLIP-G without T5); the denoiser zero-pads it to the MMDiT's
    joint attention width, which gives diffusers' context in both cases. A missing CLIP (CLIPLoader with one file)
    contributes zeros of its standard width, as in ComfyUI; with neither CLIP the context is T5's alone.

    CLIPTextEncodeSD3 gives each encoder its prompt (`text` for CLIP-L, `text_g`, `text_t5`; both CLIPs take as
    many chunks as the longer needs, the other padded with empty-prompt chunks, as ComfyUI pads its tokens) and
    may leave out the CLIP part (pooled zeros) or the T5 part; with neither, the context is 77 zero tokens.
    """
    encoders = [(clip_l, None, CLIP_L_WIDTH, text), (clip_g, "!", CLIP_G_WIDTH, text if text_g is None else text_g)]
    present = [(e, pad, prompt) for e, pad, _, prompt in encoders if e is not None]
    chunks = max([chunk_count(prompt, pad, e.config.hidden_size, folders) for e, pad, prompt in present], default=1)
    hidden, pooled = [], []
    for encoder, pad, width, prompt in encoders:
        if encoder is None:
            hidden.append(torch.zeros(1, CLIP_TOKENS * chunks, width))
            pooled.append(torch.zeros(1, width))
        else:
            out = encode_clip(prompt, encoder, pad, layer, folders, min_chunks=chunks)
            hidden.append(out.hidden)
            pooled.append(out.pooled)
    clip = torch.cat(hidden, dim=-1)
    pooled_all = torch.cat(pooled, dim=-1) if with_clip else torch.zeros_like(torch.cat(pooled, dim=-1))
    parts = [clip] if with_clip and (present or t5 is None) else []
    if with_t5:
        parts.append(torch.zeros(1, T5_TOKENS, clip.shape[-1]) if t5 is None
                     else encode_t5(text if text_t5 is None else text_t5, t5, t5_tokenizer))
    width = int(t5.config.d_model) if t5 is not None else clip.shape[-1]
    if not parts:
        return torch.zeros(1, CLIP_TOKENS, width), pooled_all
    parts = [torch.nn.functional.pad(p, (0, width - p.shape[-1])) for p in parts]
    return torch.cat(parts, dim=-2), pooled_all
