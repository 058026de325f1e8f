"""MODEL, CLIP and VAE values: light handles naming a checkpoint component, not the weights themselves.

A handle says which file and which part of it, in which dtype, plus the patches (LoRAs) to apply while it runs.
The weights live in the model manager (nodes/sd/models.py), shared by every node and run and loaded once per file
content; a handle asks for them in `use()`. Handles are small, so the executor's cache keeps them cheaply, and
two handles for the same file share the same loaded weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from latentgraph.engine.context import Environment
from latentgraph.engine.folders import Folders
from latentgraph.nodes.sd.checkpoint import CheckpointInfo, TensorFile, load_vae_file
from latentgraph.nodes.sd.compiled import CompileOptions, maybe_compiled
from latentgraph.nodes.sd.devices import weight_dtype
from latentgraph.nodes.sd.family import Family
from latentgraph.nodes.sd.lora import LoraPatch, patched
from latentgraph.nodes.sd.models import ModelManager
from latentgraph.nodes.sd.noise_space import NoiseSpace
from latentgraph.nodes.sd.prompt import encode_prompt
from latentgraph.nodes.sd.services import CheckpointInfos, model_manager
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer

__all__ = ["ClipHandle", "Component", "ModelHandle", "VaeHandle", "checkpoint_info", "checkpoint_infos", "component",
           "model_manager"]

HANDLE_BYTES = 1024


def checkpoint_infos(env: Environment) -> CheckpointInfos:
    """The environment's checkpoint facts (header reads remembered per file content, cleared by /free)."""
    return env.service(CheckpointInfos, lambda _env: CheckpointInfos())


def checkpoint_info(env: Environment, path: Path, identity: str, family: Family) -> CheckpointInfo:
    """Header facts of a checkpoint of `family`, read once per file content in this environment."""
    def inspect(p: Path) -> CheckpointInfo | None:
        return family.inspect(p, TensorFile(p) if p.is_file() else None)

    return checkpoint_infos(env).get(path, identity, inspect)


@dataclass(frozen=True)
class Component:
    """One loadable part of a checkpoint file (or a standalone VAE file)."""

    path: Path
    identity: str
    part: str  # a component of the family's checkpoints ("unet", "vae", "text_encoder", ...) or "vae_file"
    dtype: torch.dtype
    family: Family | None = None  # who loads it (None: a standalone VAE file)

    @property
    def key(self) -> str:
        return f"{self.identity}#{self.part}#{self.dtype}"

    def loader(self, env: Environment) -> Callable[[], torch.nn.Module]:
        def load() -> torch.nn.Module:
            if self.family is None:
                return load_vae_file(self.path, self.dtype)
            info = checkpoint_info(env, self.path, self.identity, self.family)
            return self.family.load_component(info, self.part, self.dtype)
        return load


def component(path: Path, identity: str, part: str, manager: ModelManager, family: Family | None = None,
              ) -> Component:
    """A loadable part of a family's checkpoint (`family` None: a standalone VAE file, part "vae_file")."""
    fragile = part in ("vae", "vae_file")
    return Component(Path(path), identity, part, weight_dtype(manager.device, fragile=fragile), family)


@dataclass(frozen=True)
class _Handle:
    component: Component
    env: Environment = field(compare=False, repr=False)

    def cache_bytes(self) -> int:
        return HANDLE_BYTES

    @property
    def manager(self) -> ModelManager:
        return model_manager(self.env)

    def preload(self) -> None:
        """Loads the weights now, so that a broken file fails at the loader node."""
        self.manager.get(self.component.key, self.component.loader(self.env))


@dataclass(frozen=True)
class ModelHandle(_Handle):
    """MODEL: the denoiser, its family (which says how to call it and in which noise space to sample), its noise
    schedule, and LoRA patches."""

    family: Family
    scheduler_config: dict[str, Any] = field(default_factory=dict, compare=False)
    latent_scale: float = 0.18215
    patches: tuple[LoraPatch, ...] = ()
    # FreeU/RescaleCFG-like patches (nodes/sd/model_patch_nodes.py): `attached(net)` hooks the network while in use,
    # `cfg_function` (or None) is the sampler's CFG function
    model_patches: tuple[Any, ...] = ()
    compile: CompileOptions | None = None  # TorchCompileModel's (None: the environment's default, eager unless set)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    def with_patch(self, patch: LoraPatch) -> ModelHandle:
        return replace(self, patches=(*self.patches, patch))

    def with_model_patch(self, patch: Any) -> ModelHandle:
        return replace(self, model_patches=(*self.model_patches, patch))

    @property
    def sampler_cfg_function(self) -> Callable[[dict[str, Any]], torch.Tensor] | None:
        """The last patch's CFG function (a later one replaces an earlier one, as in ComfyUI), or None."""
        functions = [p.cfg_function for p in self.model_patches if p.cfg_function is not None]
        return functions[-1] if functions else None

    @property
    def weights_name(self) -> str:
        """Names what the network computes while in use: its file content and dtype, LoRAs and hooks (a compiled
        library holds the weights as constants, so it is made and found by this name)."""
        lora = [(p.identity, p.target, p.strength) for p in self.patches]
        return repr((self.component.key, lora, self.model_patches))

    def noise_space(self, sampler_name: str, scheduler_name: str) -> NoiseSpace:
        """The sampling loop's strategy for this model, as its family says (eps, v, flow...)."""
        return self.family.noise_space(self, sampler_name, scheduler_name)

    def denoiser(self) -> Callable[..., torch.Tensor]:
        """The network call with what this family's denoiser takes besides latent, timestep and context."""
        return self.family.denoise

    @contextmanager
    def use(self) -> Iterator[torch.nn.Module]:
        with self.manager.use(self.component.key, self.component.loader(self.env)) as unet:
            with patched(unet, self.patches, self.manager) if self.patches else nullcontext(), ExitStack() as stack:
                for patch in self.model_patches:
                    stack.enter_context(patch.attached(unet))
                yield maybe_compiled(unet, self.compile, self.env, self.weights_name)


@dataclass(frozen=True)
class ClipHandle(_Handle):
    """CLIP: one text encoder, its family (pad token, layer numbering), the layer to read from, and LoRA patches."""

    family: Family
    layer: int = -1
    patches: tuple[LoraPatch, ...] = ()

    @property
    def pad_token(self) -> str | None:
        return self.family.pad_token

    @property
    def encoder_layer(self) -> int:
        """The layer of the loaded encoder that `layer` (ComfyUI's numbering) means, as the family numbers it."""
        return self.family.clip_layer(self.layer)

    def encode(self, text: str, folders: Folders | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(context, pooled) for the prompt: one encoder gives no pooled output."""
        with self.use() as encoder:
            embeddings = encode_prompt(text, encoder, load_clip_tokenizer(self.pad_token), self.encoder_layer,
                                       folders)
        return embeddings, None

    def with_patch(self, patch: LoraPatch) -> ClipHandle:
        return replace(self, patches=(*self.patches, patch))

    def with_layer(self, layer: int) -> ClipHandle:
        return replace(self, layer=layer)

    @contextmanager
    def use(self) -> Iterator[torch.nn.Module]:
        with self.manager.use(self.component.key, self.component.loader(self.env)) as encoder:
            with patched(encoder, self.patches, self.manager) if self.patches else nullcontext():
                yield encoder


@dataclass(frozen=True)
class VaeHandle(_Handle):
    """VAE: the autoencoder between pixels and latents."""

    @contextmanager
    def use(self) -> Iterator[torch.nn.Module]:
        with self.manager.use(self.component.key, self.component.loader(self.env)) as vae:
            yield vae
