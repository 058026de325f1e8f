"""LoRA files and applying them to shared weights without corrupting them.

Formats read: kohya/A1111 (`lora_unet_<module>` / `lora_te_<module>` with `lora_down`, `lora_up`, `alpha`, module
paths in diffusers or in LDM naming) and diffusers/PEFT (`unet.<module>.lora_A` / `lora_B`, `lora.down` / `lora.up`).
A patch adds `strength * scale * up @ down` to each weight while a model is in use and restores the exact
original values afterwards, so a workflow without the LoRA that shares the same loaded model is unaffected.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from latentgraph.nodes.sd.checkpoint import refuse_pickle
from latentgraph.nodes.sd.ldm_keys import unet_key_to_ldm
from safetensors.torch import load_file

if TYPE_CHECKING:
    from latentgraph.nodes.sd.models import ModelManager


@dataclass(frozen=True)
class LoraPatch:
    """A LoRA file applied to one model ("unet" or "text_encoder") at a strength."""

    path: Path
    identity: str
    target: str
    strength: float


def read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file, read from disk."""
    refuse_pickle(Path(path))
    if Path(path).suffix.lower() in (".safetensors", ".sft"):
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_lora_file(path: Path, identity: str, manager: ModelManager | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file; with the environment's model manager they are kept there, by file content,
    counted in its RAM budget and dropped by /free, instead of being read again on every use."""
    if manager is None:
        return read_lora_file(path)
    return manager.get(f"{identity}#lora", lambda: read_lora_file(path))


def _module_names(model: torch.nn.Module, target: str) -> dict[str, str]:
    """Every name a LoRA file may use for a weighted module of `model`, mapped to the module's path."""
    names: dict[str, str] = {}
    config = getattr(model, "config", None)
    for name, module in model.named_modules():
        if not isinstance(getattr(module, "weight", None), torch.Tensor) or not name:
            continue
        bare = name[len("text_model."):] if name.startswith("text_model.") else name
        if target == "unet":
            names["lora_unet_" + name.replace(".", "_")] = name
            names["unet." + name] = name
            names[name] = name
            try:
                up_attention = {i for i, t in enumerate(config.up_block_types) if "CrossAttn" in t}
                ldm = unet_key_to_ldm(name + ".weight", config.layers_per_block, up_attention)[: -len(".weight")]
                names["lora_unet_" + ldm.replace(".", "_")] = name
            except (KeyError, AttributeError):  # no LDM name for this module: the diffusers names above suffice
                pass
        else:
            for prefix in ("lora_te_", "lora_te1_"):
                names[prefix + "text_model_" + bare.replace(".", "_")] = name
            names["text_encoder.text_model." + bare] = name
            names["text_encoder." + bare] = name
    return names


_PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
          (".lora.down.weight", ".lora.up.weight"))


def lora_deltas(tensors: dict[str, torch.Tensor], model: torch.nn.Module, target: str) -> dict[str, torch.Tensor]:
    """Weight deltas (at strength 1) by parameter name of `model`, for the LoRA pairs that address it."""
    names = _module_names(model, target)
    params = dict(model.named_parameters())
    deltas: dict[str, torch.Tensor] = {}
    for key, down in tensors.items():
        for down_suffix, up_suffix in _PAIRS:
            if not key.endswith(down_suffix):
                continue
            base = key[: -len(down_suffix)]
            module = names.get(base)
            up = tensors.get(base + up_suffix)
            if module is None or up is None:
                continue
            weight = params[module + ".weight"]
            rank = down.shape[0]
            alpha = tensors.get(base + ".alpha")
            scale = float(alpha) / rank if alpha is not None else 1.0
            delta = up.flatten(1).float() @ down.flatten(1).float()
            if delta.numel() != weight.numel():
                raise ValueError(f"LoRA weights for {module} do not fit this model: {tuple(up.shape[:1])}x"
                                 f"{tuple(down.shape[1:])} against a weight of shape {tuple(weight.shape)}")
            deltas[module + ".weight"] = (delta * scale).reshape(weight.shape)
    return deltas


def addressed_modules(tensors: dict[str, torch.Tensor], model: torch.nn.Module, target: str) -> int:
    """How many modules of `model` the LoRA has weights for (zero: a LoRA for another architecture)."""
    names = _module_names(model, target)
    count = 0
    for key in tensors:
        for down_suffix, _ in _PAIRS:
            if key.endswith(down_suffix) and key[: -len(down_suffix)] in names:
                count += 1
    return count


@contextmanager
def patched(model: torch.nn.Module, patches: tuple[LoraPatch, ...], manager: ModelManager | None = None,
            ) -> Iterator[torch.nn.Module]:
    """Adds the LoRA deltas to the model's weights for the block, then puts the original values back exactly."""
    params = dict(model.named_parameters())
    backup: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for patch in patches:
                if patch.strength == 0:
                    continue
                tensors = load_lora_file(patch.path, patch.identity, manager)
                for name, delta in lora_deltas(tensors, model, patch.target).items():
                    param = params[name]
                    if name not in backup:
                        backup[name] = param.detach().clone()
                    param.add_((delta * patch.strength).to(device=param.device, dtype=param.dtype))
        yield model
    finally:
        with torch.no_grad():
            for name, original in backup.items():
                params[name].copy_(original)
