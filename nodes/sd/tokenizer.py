"""The CLIP tokenizer, loaded from the vocabulary files shipped with the package (never from a model hub)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer


TOKENIZER_DIR = Path(__file__).resolve().parent / "configs" / "clip_tokenizer"


@cache
def _load(pad_token: str | None) -> CLIPTokenizer:
    from transformers import CLIPTokenizer
    kwargs = {} if pad_token is None else {"pad_token": pad_token}
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True, **kwargs)


def load_clip_tokenizer(pad_token: str | None = None) -> CLIPTokenizer:
    """SD's CLIP BPE tokenizer (SD1.x pads with <|endoftext|>; SD2.x's OpenCLIP pads with "!", pass pad_token="!").

    The instance is shared: callers must not change its settings.
    """
    return _load(pad_token)
