"""ControlNet: reading ControlNet files offline, the control chain a CONDITIONING entry carries, and the denoiser
wrapper that adds the ControlNet residuals to the UNet call.

Files: a diffusers folder (config.json + weights), a single file in diffusers' layout (`controlnet_cond_embedding.*`,
`controlnet_down_blocks.*`) or in the original LDM layout (`control_model.input_blocks.*`, `zero_convs.*`,
`input_hint_block.*`, as lllyasviel's control_v11p_sd15_*.safetensors have it). A single file's config is read from
its tensor shapes over the shipped base config (`configs/controlnet/controlnet.json`): nothing is fetched. Pickled
files are refused unless pickles are allowed (nodes/sd/checkpoint.py).

Semantics are ComfyUI's (nodes.py ControlNetApply*, comfy/controlnet.py):

- the hint image is centre-cropped to the latent's aspect ratio and resized ("nearest-exact") to the latent's pixel
  size, per model call, so area-cropped calls get it at their size;
- `strength` multiplies every residual (diffusers' `conditioning_scale` does exactly that);
- a ControlNet is active while the model call's sigma lies between the noise space's `percent_to_sigma` of
  `start_percent` and of `end_percent` (bounds included);
- ControlNets applied one after the other form a chain whose residuals add; an inactive link passes the earlier
  links' residuals on;
- ControlNetApplyAdvanced puts the chain on the positive and the negative entries it is given; ControlNetApply (the
  old node) marks the positive `control_apply_to_uncond`, and negative entries without a chain of their own then use
  that positive's chain, as ComfyUI's sampler does.

The sampling loop enters `controlled(...)` around a run: it loads each ControlNet of the run's conditioning through
the model manager and wraps the family's denoiser. The family's denoiser is unchanged: it is handed a stand-in for
the UNet that runs the ControlNets on the same inputs (latent, timestep, context, SDXL's added conditioning) and
passes their residuals to the UNet as `down_block_additional_residuals` / `mid_block_additional_residual`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from latentgraph.engine.context import Environment
from latentgraph.nodes.imageops import upscale
from latentgraph.nodes.sd.checkpoint import (
    TensorFile,
    UnsafeCheckpoint,
    materialize,
    read_json,
    refuse_pickle,
)
from latentgraph.nodes.sd.detect import Shapes, UnknownCheckpoint, family_config, indices
from latentgraph.nodes.sd.services import model_manager

if TYPE_CHECKING:
    from diffusers import ControlNetModel
    from latentgraph.nodes.sd.handles import Component
    from latentgraph.nodes.sd.models import ModelManager

CONTROL = "control"  # the conditioning option holding the last ControlApplication of an entry's chain
APPLY_TO_UNCOND = "control_apply_to_uncond"
LDM_PREFIX = "control_model."
HANDLE_BYTES = 1024
LATENT_FACTOR = 8  # pixels per latent cell of the UNet families ControlNets exist for
HEAD_CHANNELS = 64  # SD2.x and SDXL attention heads; SD1.x uses 8 heads per attention
SAFE_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
PICKLED_WEIGHTS = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")

_RESNET = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("out_layers.0.", "norm2."),
           ("out_layers.3.", "conv2."), ("emb_layers.1.", "time_emb_proj."), ("skip_connection.", "conv_shortcut."))
_FIXED = (("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
          ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2."),
          ("input_blocks.0.0.", "conv_in."), ("middle_block_out.0.", "controlnet_mid_block."))


class NotAControlNet(UnknownCheckpoint):
    """The file holds no ControlNet this loader reads (a checkpoint, a LoRA, a T2I-Adapter...)."""


# ---------------------------------------------------------------------------------------------------------- files


def _resnet(rest: str) -> str:
    for old, new in _RESNET:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def ldm_to_diffusers(key: str, per_level: int, hint_convs: Sequence[int]) -> str:
    """The diffusers name of an LDM-layout ControlNet weight (prefix removed); `per_level` is layers per block + 1
    and `hint_convs` the indices of the hint encoder's convolutions."""
    for old, new in _FIXED:
        if key.startswith(old):
            return new + key[len(old):]
    if m := re.fullmatch(r"zero_convs\.(\d+)\.0\.(.+)", key):
        return f"controlnet_down_blocks.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"input_hint_block\.(\d+)\.(.+)", key):
        position = hint_convs.index(int(m[1]))
        if position == 0:
            return f"controlnet_cond_embedding.conv_in.{m[2]}"
        if position == len(hint_convs) - 1:
            return f"controlnet_cond_embedding.conv_out.{m[2]}"
        return f"controlnet_cond_embedding.blocks.{position - 1}.{m[2]}"
    if m := re.fullmatch(r"input_blocks\.(\d+)\.0\.op\.(.+)", key):
        return f"down_blocks.{int(m[1]) // per_level - 1}.downsamplers.0.conv.{m[2]}"
    if m := re.fullmatch(r"input_blocks\.(\d+)\.([01])\.(.+)", key):
        level, j = divmod(int(m[1]) - 1, per_level)
        return f"down_blocks.{level}.resnets.{j}.{_resnet(m[3])}" if m[2] == "0" else \
            f"down_blocks.{level}.attentions.{j}.{m[3]}"
    if m := re.fullmatch(r"middle_block\.([012])\.(.+)", key):
        return f"mid_block.attentions.0.{m[2]}" if m[1] == "1" else \
            f"mid_block.resnets.{int(m[1]) // 2}.{_resnet(m[2])}"
    raise NotAControlNet(f"no diffusers name for ControlNet weight {key!r}")


def _ldm_names(shapes: Shapes) -> dict[str, str]:
    """LDM name -> diffusers name for every weight of an LDM-layout ControlNet (prefix removed)."""
    downs = indices(shapes, r"input_blocks\.(\d+)\.0\.op\.weight")
    per_level = downs[0] if downs else len(indices(shapes, r"input_blocks\.(\d+)\."))
    hint_convs = indices(shapes, r"input_hint_block\.(\d+)\.weight")
    return {k: ldm_to_diffusers(k, per_level, hint_convs) for k in shapes}


def config_from_shapes(shapes: Shapes) -> dict[str, Any]:
    """A ControlNetModel config from diffusers-named shapes; what shapes cannot tell comes from the shipped base
    (SD1.x uses 8 heads per attention, SD2.x and SDXL 64-channel heads)."""
    levels = indices(shapes, r"down_blocks\.(\d+)\.")
    if not levels or "controlnet_cond_embedding.conv_in.weight" not in shapes:
        raise NotAControlNet("no ControlNet weights (controlnet_cond_embedding, down_blocks) found")
    layers = len(indices(shapes, r"down_blocks\.0\.resnets\.(\d+)\."))
    channels = [shapes[f"down_blocks.{level}.resnets.0.conv2.weight"][0] for level in levels]
    attention = [f"down_blocks.{level}.attentions.0.proj_in.weight" in shapes for level in levels]

    def depth(prefix: str) -> int:
        return len(indices(shapes, re.escape(prefix) + r"transformer_blocks\.(\d+)\."))

    mid_depth = depth("mid_block.attentions.0.")
    depths = [depth(f"down_blocks.{level}.attentions.0.") if attn else (mid_depth or 1)
              for level, attn in zip(levels, attention)]
    hint_blocks = indices(shapes, r"controlnet_cond_embedding\.blocks\.(\d+)\.weight")
    embedding = [shapes["controlnet_cond_embedding.conv_in.weight"][0],
                 *(shapes[f"controlnet_cond_embedding.blocks.{i}.weight"][0] for i in hint_blocks[1::2])]
    k_keys = sorted(k for k in shapes if k.endswith("attn2.to_k.weight"))
    if not k_keys:
        raise NotAControlNet("a ControlNet without cross-attention is not supported")
    context = shapes[k_keys[0]][1]
    xl = "add_embedding.linear_1.weight" in shapes
    config = family_config("controlnet", "controlnet")
    config.update(
        in_channels=shapes["conv_in.weight"][1],
        conditioning_channels=shapes["controlnet_cond_embedding.conv_in.weight"][1],
        conditioning_embedding_out_channels=embedding,
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        mid_block_type="UNetMidBlock2DCrossAttn" if mid_depth else None,
        cross_attention_dim=context,
        use_linear_projection=len(shapes[next(k for k in sorted(shapes) if k.endswith("proj_in.weight"))]) == 2,
        transformer_layers_per_block=depths[0] if len(set(depths)) == 1 else depths,
        attention_head_dim=[max(1, c // HEAD_CHANNELS) for c in channels] if xl or context >= 1024 else 8,
    )
    if xl:
        config.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=shapes["add_embedding.linear_1.weight"][1])
    return config


@dataclass
class ControlNetFile:
    """What a ControlNet file holds: its config, how to read its weights under diffusers' names, and whether they
    are differences from a base model (the "diff" ControlNets DiffControlNetLoader adds to the model's weights)."""

    config: dict[str, Any]
    read: Callable[[], dict[str, torch.Tensor]]
    difference: bool = False


def _folder_weights(path: Path) -> Path:
    for name in SAFE_WEIGHTS:
        if (path / name).is_file():
            return path / name
    for name in PICKLED_WEIGHTS:
        if (path / name).is_file():
            refuse_pickle(path / name)
            return path / name
    raise NotAControlNet(f"{path.name}: a ControlNet folder needs config.json and diffusion_pytorch_model.safetensors")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = TensorFile(path)
    return tensors.read(list(tensors.shapes))


def _read_pickled(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def inspect_controlnet(path: Path) -> ControlNetFile:
    """Reads a ControlNet file's header (or folder's config): raises NotAControlNet when it is none, and
    UnsafeCheckpoint for a pickle without the user's opt-in."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise NotAControlNet(f"{path.name}: a ControlNet folder needs config.json")
        config = read_json(path / "config.json")
        if config.get("_class_name") not in (None, "ControlNetModel"):
            raise NotAControlNet(f"{path.name} holds a {config.get('_class_name')}, not a ControlNetModel")
        weights = _folder_weights(path)
        if weights.suffix == ".safetensors":
            return ControlNetFile(config, lambda: _read_safetensors(weights))
        return ControlNetFile(config, lambda: _read_pickled(weights))
    tensors = TensorFile(path)  # refuses a pickle unless allowed
    shapes = tensors.shapes
    difference = "difference" in shapes
    prefix = LDM_PREFIX if any(k.startswith(LDM_PREFIX) for k in shapes) else ""
    bare = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix) and k != "difference"}
    if "controlnet_cond_embedding.conv_in.weight" in bare:
        names = {k: k for k in bare}
    elif "zero_convs.0.0.weight" in bare and "input_hint_block.0.weight" in bare:
        names = _ldm_names(bare)
    elif any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in shapes):
        raise NotAControlNet(f"{path.name} is a model checkpoint, not a ControlNet: put it in models/checkpoints")
    elif "controlnet_blocks.0.weight" in bare and "double_blocks.0.img_attn.norm.key_norm.scale" in bare:
        raise NotAControlNet(f"{path.name} is a Flux ControlNet; ControlNets are read for SD1.x, SD2.x and SDXL")
    elif "controlnet_blocks.0.weight" in bare and "pos_embed_input.proj.weight" in bare:
        # ComfyUI's test for an MMDiT ControlNet (diffusers' SD3ControlNetModel or Stability's SD3.5 layout)
        raise NotAControlNet(f"{path.name} is an SD3 (MMDiT) ControlNet, which is not supported yet; ControlNets "
                             "are read for SD1.x, SD2.x and SDXL")
    elif "lora_controlnet" in shapes:
        raise NotAControlNet(f"{path.name} is a Control-LoRA, which is not supported")
    elif any(k.startswith(("body.", "conv_in.")) for k in shapes) or any(".body." in k for k in shapes):
        raise NotAControlNet(f"{path.name} looks like a T2I-Adapter, which is not supported")
    else:
        raise NotAControlNet(f"{path.name} holds no ControlNet weights (no controlnet_cond_embedding.* nor "
                             f"zero_convs.*/input_hint_block.* tensors)")
    config = config_from_shapes({names[k]: v for k, v in bare.items()})

    def read() -> dict[str, torch.Tensor]:
        loaded = tensors.read([prefix + k for k in names])
        return {names[k[len(prefix):]]: v for k, v in loaded.items()}

    return ControlNetFile(config, read, difference)


def load_controlnet(path: Path, dtype: torch.dtype, base: Mapping[str, torch.Tensor] | None = None,
                    ) -> ControlNetModel:
    """A ControlNetModel built on the CPU in `dtype`; a difference file gets `base` (the model's UNet weights under
    diffusers' names, which a ControlNet shares) added to the weights both have."""
    from diffusers import ControlNetModel
    found = inspect_controlnet(path)
    state = found.read()
    if found.difference:
        if base is None:
            raise NotAControlNet(f"{Path(path).name} is a difference ControlNet: load it with DiffControlNetLoader "
                                 f"and the model it was made for")
        state = {k: v.float() + base[k].float() if k in base else v for k, v in state.items()}
    with torch.device("meta"):
        model = ControlNetModel.from_config(found.config)
    return materialize(model, state, dtype)


# -------------------------------------------------------------------------------------------------------- handles


@dataclass(frozen=True)
class ControlNetHandle:
    """CONTROL_NET: which file, in which dtype, and (for a difference file) which UNet's weights it adds to; the
    weights live in the shared model manager."""

    path: Path
    identity: str
    dtype: torch.dtype
    env: Environment = field(compare=False, repr=False)
    base: Component | None = None

    @property
    def key(self) -> str:
        return f"{self.identity}#controlnet#{self.dtype}" + (f"+{self.base.key}" if self.base else "")

    @property
    def manager(self) -> ModelManager:
        return model_manager(self.env)

    def cache_bytes(self) -> int:
        return HANDLE_BYTES

    def loader(self) -> Callable[[], torch.nn.Module]:
        def load() -> torch.nn.Module:
            base = None
            if self.base is not None:
                unet = self.manager.get(self.base.key, self.base.loader(self.env))
                base = unet.state_dict()
            return load_controlnet(self.path, self.dtype, base)
        return load

    def preload(self) -> None:
        """Loads the weights now, so that a broken file fails at the loader node."""
        self.manager.get(self.key, self.loader())

    @contextmanager
    def use(self) -> Iterator[ControlNetModel]:
        with self.manager.use(self.key, self.loader()) as model:
            yield model


@dataclass(frozen=True, eq=False)
class ControlApplication:
    """One ControlNet applied to conditioning: its hint [B, C, H, W] in 0..1, strength and window, and the
    application before it in the chain (None for the first)."""

    net: ControlNetHandle
    hint: torch.Tensor
    strength: float
    start_percent: float = 0.0
    end_percent: float = 1.0
    previous: ControlApplication | None = None

    def chain(self) -> list[ControlApplication]:
        """This application and those before it, oldest first."""
        links: list[ControlApplication] = []
        link: ControlApplication | None = self
        while link is not None:
            links.append(link)
            link = link.previous
        return links[::-1]

    def cache_bytes(self) -> int:
        return sum(a.hint.element_size() * a.hint.nelement() + HANDLE_BYTES for a in self.chain())


def apply_control(conditioning: list, net: ControlNetHandle, image: torch.Tensor, strength: float,
                  start_percent: float, end_percent: float, shared: dict[int, ControlApplication],
                  to_uncond: bool) -> list:
    """A copy of `conditioning` whose entries carry `net` applied after their own chain; entries with the same
    earlier chain share one application (`shared`, by that chain's identity)."""
    hint = image.movedim(-1, 1)
    out = []
    for embeddings, options in conditioning:
        previous = options.get(CONTROL)
        key = id(previous)
        if key not in shared:
            shared[key] = ControlApplication(net, hint, strength, start_percent, end_percent, previous)
        out.append([embeddings, {**options, CONTROL: shared[key], APPLY_TO_UNCOND: to_uncond}])
    return out


# ------------------------------------------------------------------------------------------------------- sampling


def prepare_hint(hint: torch.Tensor, height: int, width: int, batch: int) -> torch.Tensor:
    """The hint centre-cropped and resized (nearest-exact) to height x width pixels, one per image of `batch`
    (a single hint is shared; a batch of hints is used in order and repeated when shorter), as ComfyUI does."""
    if hint.shape[-2:] != (height, width):
        hint = upscale(hint, width, height, "nearest-exact", "center")
    if hint.shape[0] == 1:
        return hint.expand(batch, -1, -1, -1)
    hint = hint[:batch]
    if hint.shape[0] < batch:
        hint = torch.cat([hint] * (batch // hint.shape[0]) + [hint[: batch % hint.shape[0]]])
    return hint


class Schedule:
    """The run's noise levels as ComfyUI compares them with a ControlNet's window: the sigma of each model call
    (looked up by the call's timestep in the noise space's schedule) and `percent_to_sigma` for the window."""

    def __init__(self, space: Any) -> None:
        self.space = space
        self._sigmas: dict[float, float] = {}

    def sigma(self, t: torch.Tensor) -> float:
        value = float(t)
        if value not in self._sigmas:
            timesteps = [float(s) for s in self.space.timesteps]
            nearest = min(range(len(timesteps)), key=lambda i: abs(timesteps[i] - value))
            self._sigmas[value] = float(self.space.call_sigma(nearest))
        return self._sigmas[value]

    def window(self, application: ControlApplication) -> tuple[float, float]:
        """(highest, lowest) sigma at which the application is active."""
        return (self.space.percent_to_sigma(application.start_percent),
                self.space.percent_to_sigma(application.end_percent))


Residuals = tuple[list[torch.Tensor], torch.Tensor]


class _Run:
    """The ControlNets of one sampling run: loaded models, windows and prepared hints."""

    def __init__(self, models: dict[ControlNetHandle, torch.nn.Module], schedule: Schedule) -> None:
        self.models = models
        self.schedule = schedule
        self._windows: dict[int, tuple[float, float]] = {}
        self._hints: dict[tuple[int, int, int, int], torch.Tensor] = {}

    def active(self, application: ControlApplication, t: torch.Tensor) -> bool:
        key = id(application)
        if key not in self._windows:
            self._windows[key] = self.schedule.window(application)
        start, end = self._windows[key]
        return end <= self.schedule.sigma(t) <= start

    def hint(self, application: ControlApplication, x: torch.Tensor, groups: int, dtype: torch.dtype,
             ) -> torch.Tensor:
        batch = x.shape[0] // groups
        height, width = x.shape[-2] * LATENT_FACTOR, x.shape[-1] * LATENT_FACTOR
        key = (id(application), height, width, batch)
        if key not in self._hints:
            self._hints[key] = prepare_hint(application.hint.float(), height, width, batch).to(x.device, dtype)
        hint = self._hints[key]
        return hint.repeat(groups, 1, 1, 1) if groups > 1 else hint

    def residuals(self, application: ControlApplication, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                  added: dict[str, torch.Tensor] | None, groups: int) -> Residuals | None:
        """The chain's summed residuals for `x` (`groups` conditioning groups of equal batch), None when no link of
        it is active at `t`."""
        total: Residuals | None = None
        for link in application.chain():
            if not self.active(link, t):
                continue
            model = self.models[link.net]
            dtype = next(model.parameters()).dtype
            if model.config.cross_attention_dim != context.shape[-1]:
                raise ValueError(f"ControlNet {link.net.path.name} expects {model.config.cross_attention_dim}-wide "
                                 f"text conditioning but the model gives {context.shape[-1]}: it was made for "
                                 f"another model family")
            kwargs = {"added_cond_kwargs": {k: v.to(dtype) for k, v in added.items()}} if added else {}
            downs, mid = model(x.to(dtype), t, encoder_hidden_states=context.to(dtype),
                               controlnet_cond=self.hint(link, x, groups, dtype), conditioning_scale=link.strength,
                               return_dict=False, **kwargs)
            if total is None:
                total = (list(downs), mid)
            else:
                total = ([a + b for a, b in zip(total[0], downs)], total[1] + mid)
        return total


class ControlledNet:
    """Stands in for the UNet in a family's denoiser call: runs each group's ControlNet chain on the same inputs and
    calls the UNet with their residuals (zeros for groups without control). Other attributes are the UNet's."""

    def __init__(self, net: Any, run: _Run, applications: list[ControlApplication | None]) -> None:
        self._net = net
        self._run = run
        self._applications = applications

    def __getattr__(self, name: str) -> Any:
        return getattr(self._net, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "down_block_additional_residuals" not in _parameters(self._net):
            raise ValueError(f"ControlNets (ControlNetApply, ControlNetApplyAdvanced) work with UNet models (SD1.x, "
                             f"SD2.x, SDXL), not with {type(self._net).__name__}: SD3 ControlNets are not supported")
        return self._controlled(*args, **kwargs)

    def _controlled(self, sample: torch.Tensor, timestep: torch.Tensor, *args: Any,
                    encoder_hidden_states: torch.Tensor, added_cond_kwargs: dict[str, torch.Tensor] | None = None,
                    **kwargs: Any) -> Any:
        groups = len(self._applications)
        batch = sample.shape[0] // groups
        by_chain: dict[int, list[int]] = {}
        for g, application in enumerate(self._applications):
            if application is not None:
                by_chain.setdefault(id(application), []).append(g)
        per_group: list[Residuals | None] = [None] * groups
        for members in by_chain.values():
            application = self._applications[members[0]]
            assert application is not None

            def pick(tensor: torch.Tensor, members: list[int] = members) -> torch.Tensor:
                return torch.cat([tensor[g * batch:(g + 1) * batch] for g in members])

            added = {k: pick(v) for k, v in added_cond_kwargs.items()} if added_cond_kwargs else None
            result = self._run.residuals(application, pick(sample), timestep, pick(encoder_hidden_states), added,
                                         len(members))
            if result is not None:
                for i, g in enumerate(members):
                    per_group[g] = ([d[i * batch:(i + 1) * batch] for d in result[0]],
                                    result[1][i * batch:(i + 1) * batch])
        if added_cond_kwargs is not None:
            kwargs["added_cond_kwargs"] = added_cond_kwargs
        present = next((r for r in per_group if r is not None), None)
        if present is None:
            return self._net(sample, timestep, *args, encoder_hidden_states=encoder_hidden_states, **kwargs)
        filled = [r if r is not None else ([torch.zeros_like(d) for d in present[0]], torch.zeros_like(present[1]))
                  for r in per_group]
        dtype = sample.dtype
        downs = tuple(torch.cat([r[0][i] for r in filled]).to(dtype) for i in range(len(present[0])))
        mid = torch.cat([r[1] for r in filled]).to(dtype)
        return self._net(sample, timestep, *args, encoder_hidden_states=encoder_hidden_states,
                         down_block_additional_residuals=downs, mid_block_additional_residual=mid, **kwargs)


def _parameters(net: Any) -> set[str]:
    import inspect
    forward = getattr(net, "forward", net)
    return set(inspect.signature(forward).parameters)


def _applications(conditioning: list) -> list[ControlApplication]:
    return [options[CONTROL] for _, options in conditioning if options.get(CONTROL) is not None]


@contextmanager
def controlled(denoiser: Callable[..., torch.Tensor], positive: list, negative: list, space: Any,
               ) -> Iterator[Callable[..., torch.Tensor]]:
    """The denoiser for a run whose conditioning may carry ControlNets: unchanged when none does; else the
    ControlNets are held loaded for the run and each call gets its groups' residuals."""
    uncond_fallback = next((options[CONTROL] for _, options in positive
                            if options.get(CONTROL) is not None and options.get(APPLY_TO_UNCOND)), None)
    applications = _applications(positive) + _applications(negative)
    if not applications:
        yield denoiser
        return
    handles = {link.net for application in applications for link in application.chain()}
    with ExitStack() as stack:
        models = {handle: stack.enter_context(handle.use()) for handle in handles}
        run = _Run(models, Schedule(space))

        def call(net: Any, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 options: Sequence[Mapping[str, Any]], negative_flags: Sequence[bool]) -> torch.Tensor:
            chains: list[ControlApplication | None] = [
                o.get(CONTROL) if o.get(CONTROL) is not None else (uncond_fallback if is_negative else None)
                for o, is_negative in zip(options, negative_flags)]
            if all(c is None for c in chains):
                return denoiser(net, x, t, context, options, negative_flags)
            return denoiser(ControlledNet(net, run, chains), x, t, context, options, negative_flags)

        yield call


def describe_file_error(path: Path, error: Exception) -> str:
    """The validation message for a ControlNet file that cannot be used."""
    if isinstance(error, UnsafeCheckpoint):
        return str(error)
    return f"{path.name} cannot be loaded as a ControlNet: {error}"
