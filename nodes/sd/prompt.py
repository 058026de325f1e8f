"""Prompt text to CLIP conditioning: emphasis syntax, prompts longer than 77 tokens, textual-inversion embeddings.

Syntax, as users of A1111 and ComfyUI write it: `(word)` multiplies the weight by 1.1, `[word]` divides it by 1.1,
`(word:1.3)` multiplies it by 1.3, brackets nest, `\\(` is a literal bracket. `embedding:name` inserts the vectors
of models/embeddings/name.(safetensors|pt|bin). Tokens go into chunks of 75 between BOS and EOS (a short word that
would straddle two chunks moves to the next one); chunks are encoded separately and concatenated, as ComfyUI does.
A weight w moves a token's encoding away from the empty prompt's: z' = z_empty + (z - z_empty) * w (ComfyUI's rule);
with all weights 1 the result equals diffusers' encoding of the same prompt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from latentgraph.engine.folders import Folders
from latentgraph.nodes.sd.checkpoint import refuse_pickle
from safetensors.torch import load_file

CHUNK = 75
MAX_WORD = 8
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth")
_ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_EMBEDDING = re.compile(r"embedding:([^\s,()\[\]]+)")


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Splits a prompt into (text, weight) pieces following the emphasis syntax; adjacent equal weights merge."""
    pieces: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for m in _ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif token == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:
            pieces.append([token, 1.0])
    for start in round_open:
        scale(start, 1.1)
    for start in square_open:
        scale(start, 1 / 1.1)
    merged: list[tuple[str, float]] = []
    for piece_text, weight in pieces:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece_text, weight)
        else:
            merged.append((piece_text, weight))
    return merged or [("", 1.0)]


def load_embedding(folders: Folders, name: str, width: int) -> torch.Tensor:
    """The vectors [n, width] of a textual-inversion embedding in models/embeddings."""
    path = None
    for candidate in (name, *(name + s for s in EMBEDDING_SUFFIXES)):
        try:
            path = folders.find("embeddings", candidate)
            break
        except FileNotFoundError:
            continue
    if path is None:
        raise FileNotFoundError(f"embedding {name!r} not found in {', '.join(map(str, folders.folders('embeddings')))}")
    if path.suffix.lower() in (".safetensors", ".sft"):
        data = load_file(str(path))
    else:
        refuse_pickle(path)
        data = torch.load(path, map_location="cpu", weights_only=True)
    if "string_to_param" in data:
        data = data["string_to_param"]
    candidates = [v for v in data.values() if isinstance(v, torch.Tensor) and v.shape[-1] == width]
    if not candidates:
        shapes = {k: tuple(v.shape) for k, v in data.items() if isinstance(v, torch.Tensor)}
        raise ValueError(f"embedding {name!r} has no vectors of width {width} for this text encoder: {shapes}")
    return candidates[0].reshape(-1, width).float()


@dataclass
class Token:
    id: int
    weight: float
    vector: torch.Tensor | None = None  # an embedding vector replacing the token's own


def tokenize_weighted(text: str, tokenizer, folders: Folders | None, width: int) -> list[list[Token]]:
    """Word groups of weighted tokens; an `embedding:name` word becomes one group of its vectors."""
    groups: list[list[Token]] = []
    for piece, weight in parse_weights(text):
        for word in piece.split():
            parts = _EMBEDDING.split(word)
            for i, part in enumerate(parts):
                if i % 2 == 1:
                    if folders is None:
                        raise ValueError("embeddings need a models folder")
                    vectors = load_embedding(folders, part, width)
                    groups.append([Token(0, weight, v) for v in vectors])
                elif part:
                    ids = tokenizer(part, add_special_tokens=False).input_ids
                    if ids:
                        groups.append([Token(t, weight) for t in ids])
    return groups


def chunk_tokens(groups: list[list[Token]], bos: int, eos: int, pad: int) -> list[list[Token]]:
    """Chunks of 77 tokens: BOS, up to 75 tokens, EOS, padding; short words never straddle two chunks."""
    chunks: list[list[Token]] = []
    current: list[Token] = []

    def close() -> None:
        chunk = [Token(bos, 1.0), *current, Token(eos, 1.0)]
        chunk += [Token(pad, 1.0)] * (CHUNK + 2 - len(chunk))
        chunks.append(chunk)

    for group in groups:
        group = list(group)
        while group:
            room = CHUNK - len(current)
            if len(group) <= room:
                current.extend(group)
                group = []
            elif len(group) > MAX_WORD:
                current.extend(group[:room])
                group = group[room:]
                close()
                current = []
            else:
                close()
                current = []
    if current or not chunks:
        close()
    return chunks


def run_with_embeddings(encoder: torch.nn.Module, ids: torch.Tensor,
                        vectors: Mapping[tuple[int, int], torch.Tensor], **kwargs: Any) -> Any:
    """Runs a text encoder with textual-inversion vectors written over the token embeddings at (row, column)."""

    def inject(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for (row, col), vector in vectors.items():
            output[row, col] = vector.to(output.dtype)
        return output

    hook = encoder.get_input_embeddings().register_forward_hook(inject) if vectors else None
    try:
        return encoder(input_ids=ids, **kwargs)
    finally:
        if hook is not None:
            hook.remove()


def _hidden(encoder: torch.nn.Module, ids: torch.Tensor, layer: int, vectors: dict[tuple[int, int], torch.Tensor],
            ) -> torch.Tensor:
    """The encoder's hidden states at `layer` (-1: last), with the final layer norm, embedding vectors injected."""
    out = run_with_embeddings(encoder, ids, vectors, output_hidden_states=layer != -1)
    if layer == -1:
        return out.last_hidden_state
    final_norm = encoder.text_model.final_layer_norm if hasattr(encoder, "text_model") else encoder.final_layer_norm
    return final_norm(out.hidden_states[layer])


@torch.no_grad()
def encode_prompt(text: str, encoder: torch.nn.Module, tokenizer, layer: int = -1,
                  folders: Folders | None = None) -> torch.Tensor:
    """CLIP conditioning [1, 77*chunks, width] for a prompt, on the CPU in float32."""
    width = encoder.config.hidden_size
    device = next(encoder.parameters()).device
    groups = tokenize_weighted(text, tokenizer, folders, width)
    chunks = chunk_tokens(groups, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    ids = torch.tensor([[t.id for t in chunk] for chunk in chunks], device=device)
    vectors = {(r, c): t.vector.to(device) for r, chunk in enumerate(chunks) for c, t in enumerate(chunk)
               if t.vector is not None}
    hidden = _hidden(encoder, ids, layer, vectors).float()
    weights = torch.tensor([[t.weight for t in chunk] for chunk in chunks], device=device)
    if bool((weights != 1.0).any()):
        empty_ids = torch.tensor([[t.id for t in chunk_tokens([], tokenizer.bos_token_id, tokenizer.eos_token_id,
                                                               tokenizer.pad_token_id)[0]]], device=device)
        empty = _hidden(encoder, empty_ids, layer, {}).float()
        hidden = empty + (hidden - empty) * weights[..., None]
    return hidden.reshape(1, -1, width).cpu()

