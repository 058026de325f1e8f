"""`latentgraph train lora`: fine-tunes a LoRA on a folder of captioned images (the kohya layout) for an SD1.x/SD2.x
checkpoint, and saves it as a kohya-format `.safetensors` file.

Key layout: kohya's, which ComfyUI, A1111 and diffusers' `load_lora_weights` read:
`lora_unet_<diffusers module path with _>.lora_down.weight` / `.lora_up.weight` / `.alpha` for the UNet and
`lora_te_text_model_<module path>...` for the text encoder. The base weights are never changed: low-rank
factors are added through forward hooks while training, and the hooked output equals the output of LoraLoader's
weight patch (tests/training/test_lora_equivalence.py).

A LoRA trains the UNet (and optionally the text encoder), never the VAE: it learns to produce the *latents* of the
training images, and can draw no better than the VAE decodes them. Training therefore decodes the training latents
once and reports how far the round trip is from the images (`vae_error`, mean absolute difference in 0..255 levels);
above VAE_WARN_LEVELS a sheet (images | VAE round trip) is written next to the output. The bundled demo model's VAE,
for example, only knows the colours of its shapes dataset: a grey background or a checker finer than its 8x8 latent
cells comes back as coloured blobs, and a LoRA trained on such images draws those blobs.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from latentgraph.nodes.sd.families import family, inspect_checkpoint, load_component
from latentgraph.nodes.sd.families.sd1 import SD1
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer
from PIL import Image, UnidentifiedImageError
from safetensors.torch import save_file
from tqdm import tqdm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
CONV_PARENTS = ("resnets.", "downsamplers.", "upsamplers.")
VAE_WARN_LEVELS = 12.0
_REPEATS = re.compile(r"^(\d+)_")


class DatasetError(ValueError):
    """The training folder cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class Example:
    image: Path
    caption: str
    repeats: int


def scan_dataset(folder: Path) -> list[Example]:
    """Every image with its caption; kohya's `N_name` subfolders repeat their images N times.

    Raises DatasetError, before any model is loaded, for a missing folder, no images, an image that cannot be
    read, or an image without a non-empty `.txt` caption beside it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"training data folder {folder} does not exist")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}")
    problems: list[str] = []
    examples: list[Example] = []
    for path in images:
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            problems.append(f"{path}: not a readable image ({error})")
            continue
        caption_file = path.with_suffix(".txt")
        if not caption_file.is_file():
            problems.append(f"{path}: no caption file {caption_file.name}")
            continue
        caption = caption_file.read_text(encoding="utf-8", errors="replace").strip()
        if not caption:
            problems.append(f"{path}: caption file {caption_file.name} is empty")
            continue
        match = _REPEATS.match(path.parent.name) if path.parent != folder else None
        examples.append(Example(path, caption, int(match[1]) if match else 1))
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DatasetError(f"{len(problems)} problem(s) in {folder}:\n  {shown}{more}")
    return examples


class LoraLayer(torch.nn.Module):
    """Low-rank factors for one Linear or Conv2d, in kohya's shapes and with kohya's arithmetic.

    Linear: down [r, in], up [out, r]. Conv2d: down [r, in, kh, kw] with the base conv's stride, padding and
    dilation, up [out, r, 1, 1] (kohya's LoCon layout for 3x3 convs; a 1x1 conv is the same with kh = kw = 1).
    The added output `up(down(x)) * alpha / rank` is exactly the output of the weight delta
    `alpha / rank * up.flatten(1) @ down.flatten(1)` that LoraLoader (like kohya, ComfyUI and diffusers) adds to
    the base weight.
    """

    def __init__(self, base: torch.nn.Module, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        conv = isinstance(base, torch.nn.Conv2d)
        if conv and (base.groups != 1 or base.padding_mode != "zeros"):
            raise ValueError("LoRA on a grouped or non-zero-padded conv is not supported")
        in_features = base.in_channels if conv else base.in_features
        out_features = base.out_channels if conv else base.out_features
        kernel = tuple(base.kernel_size) if conv else ()
        self.conv = conv
        self.conv_options = {"stride": base.stride, "padding": base.padding, "dilation": base.dilation} if conv else {}
        self.scale = alpha / rank
        self.alpha = alpha
        down = torch.empty(rank, in_features, *kernel)
        # kohya's start: down initialised like a default torch layer, up zero, so training starts at the base model
        torch.nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
        self.down = torch.nn.Parameter(down)
        self.up = torch.nn.Parameter(torch.zeros(out_features, rank, *((1, 1) if conv else ())))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank part of the layer's output for the layer's input `x`."""
        if self.conv:
            return F.conv2d(F.conv2d(x, self.down, **self.conv_options), self.up) * self.scale
        return F.linear(F.linear(x, self.down), self.up) * self.scale


def _targets(model: torch.nn.Module, suffixes: tuple[str, ...], conv: bool = False) -> dict[str, torch.nn.Module]:
    """The modules a LoRA trains: Linear and 1x1 Conv2d layers whose names end with `suffixes` (the attention
    blocks) and, with `conv`, every Conv2d and Linear inside the UNet's resnets, downsamplers and upsamplers
    (kohya's LoCon set: 3x3 convs, 1x1 shortcuts and time-embedding projections)."""
    found = {}
    for name, module in model.named_modules():
        pointwise = isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1)
        if name.endswith(suffixes) and (isinstance(module, torch.nn.Linear) or pointwise):
            found[name] = module
        elif conv and any(part in name for part in CONV_PARENTS):
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                found[name] = module
    return found


def make_lora(model: torch.nn.Module, suffixes: tuple[str, ...], rank: int, alpha: float,
              generator: torch.Generator, conv: bool = False) -> dict[str, LoraLayer]:
    """Fresh LoRA layers (up = 0: the model is unchanged until trained) for the targeted modules of `model`."""
    return {name: LoraLayer(module, rank, alpha, generator)
            for name, module in _targets(model, suffixes, conv).items()}


@contextmanager
def attached(model: torch.nn.Module, layers: dict[str, LoraLayer]) -> Iterator[None]:
    """Adds each layer's low-rank output to its module's output while the block runs."""
    handles = []
    for name, layer in layers.items():
        module = model.get_submodule(name)
        handles.append(module.register_forward_hook(lambda _m, args, out, layer=layer: out + layer.delta(args[0])))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def kohya_state(unet_layers: dict[str, LoraLayer], text_layers: dict[str, LoraLayer]) -> dict[str, torch.Tensor]:
    """The LoRA in kohya's key layout (diffusers module paths, dots as underscores)."""
    state: dict[str, torch.Tensor] = {}
    groups = [("lora_unet_", unet_layers, None), ("lora_te_text_model_", text_layers, "text_model.")]
    for prefix, layers, strip in groups:
        for name, layer in layers.items():
            bare = name[len(strip):] if strip and name.startswith(strip) else name
            base = prefix + bare.replace(".", "_")
            state[base + ".lora_down.weight"] = layer.down.detach().clone().contiguous()
            state[base + ".lora_up.weight"] = layer.up.detach().clone().contiguous()
            state[base + ".alpha"] = torch.tensor(float(layer.alpha))
    return state


@dataclass
class LoraConfig:
    """Training settings. The defaults learn a simple new pattern from ~8 images of the bundled demo model in
    about a minute on one CPU core (tests/training/test_lora_learning.py)."""

    rank: int = 8
    alpha: float = 8.0
    steps: int = 400
    batch_size: int = 4
    learning_rate: float = 1e-3
    text_encoder: bool = False
    text_learning_rate: float = 5e-4
    conv: bool = True  # also the resnet convs (kohya's LoCon): what an image looks like lives there
    # share of steps on the empty prompt: trains the unconditional prediction that CFG extrapolates from; without
    # it a LoRA leaves that branch untrained and at cfg 7 draws a distorted version of what it learned
    caption_dropout: float = 0.1
    resolution: int | None = None
    seed: int = 0
    preview_every: int = 0  # 0: no previews; else a row of samples every this many steps, in OUT-preview.png
    preview_steps: int = 20
    preview_cfg: float = 7.0


def _load_image(path: Path, resolution: int) -> np.ndarray:
    """RGB, shorter side scaled to `resolution` and centre-cropped to a square."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    return np.asarray(image.crop((left, top, left + resolution, top + resolution)))


def _alphas_cumprod(scheduler: dict) -> torch.Tensor:
    steps = int(scheduler.get("num_train_timesteps", 1000))
    start, end = float(scheduler.get("beta_start", 0.00085)), float(scheduler.get("beta_end", 0.012))
    if scheduler.get("beta_schedule", "scaled_linear") == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0).float()


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in -1..1 to [B, H, W, 3] uint8 (as VAEDecode and SaveImage write them)."""
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def grid(rows: list[list[np.ndarray]], scale: int = 2, gap: int = 2) -> Image.Image:
    """Rows of equal-sized HxWx3 images as one sheet (nearest-neighbour enlarged, separated by white gaps)."""
    height, width = rows[0][0].shape[:2]
    tile_h, tile_w = height * scale, width * scale
    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", (columns * (tile_w + gap) + gap, len(rows) * (tile_h + gap) + gap), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            tile = Image.fromarray(image).resize((tile_w, tile_h), Image.Resampling.NEAREST)
            sheet.paste(tile, (gap + c * (tile_w + gap), gap + r * (tile_h + gap)))
    return sheet


class _HookedModel:
    """The MODEL side of the engine's sampling loop for a UNet with LoRA hooks attached (for previews), so that a
    preview is drawn by the same loop, scheduler and CFG as KSampler draws the saved LoRA."""

    def __init__(self, unet: torch.nn.Module, scheduler_config: dict[str, Any], prediction: str, family: str,
                 latent_scale: float) -> None:
        self.unet, self.scheduler_config, self.prediction, self.family = unet, scheduler_config, prediction, family
        self.latent_scale = latent_scale

    @contextmanager
    def use(self) -> Iterator[torch.nn.Module]:
        yield self.unet

    def noise_space(self, sampler_name: str, scheduler_name: str) -> Any:
        from latentgraph.nodes.sd.noise_space import discrete_space

        return discrete_space(self.prediction)(sampler_name, scheduler_name, self.scheduler_config, self.latent_scale)

    def denoiser(self) -> Callable[..., torch.Tensor]:
        from latentgraph.nodes.sd.model_inputs import denoiser_output

        return partial(denoiser_output, self.family)


@torch.no_grad()
def draw(model: _HookedModel, text_encoder: torch.nn.Module, tokenizer: Any, vae: torch.nn.Module,
         captions: list[str], size: int, steps: int, cfg: float, seed: int = 0) -> list[np.ndarray]:
    """One image per caption (seed + index), as the txt2img workflow would draw them (euler, normal)."""
    from latentgraph.nodes.sd.prompt import encode_prompt
    from latentgraph.nodes.sd.sampling import sample

    negative = [[encode_prompt("", text_encoder, tokenizer), {}]]
    images = []
    for index, caption in enumerate(captions):
        latent = {"samples": torch.zeros(1, 4, size, size)}
        out = sample(model, seed=seed + index, steps=steps, cfg=cfg, sampler_name="euler", scheduler_name="normal",
                     positive=[[encode_prompt(caption, text_encoder, tokenizer), {}]], negative=negative,
                     latent=latent)
        images.append(_to_uint8(vae.decode(out["samples"]).sample)[0])  # the loop returns unscaled VAE latents
    return images


def train_lora(data: Path, base: Path, out: Path, config: LoraConfig | None = None, *, progress: bool = True,
               on_step: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Trains a LoRA for checkpoint `base` on the captioned images in `data` and writes it to `out`.

    `on_step(step, steps, loss)` is called after every step (a node reports progress and raises to interrupt
    there). Returns {"first_loss", "last_loss"} (means over the first and last tenth of the steps), "vae_error"
    (the VAE round trip's mean absolute error on the training images, 0..255 levels), "vae_sheet" (the path of the
    round-trip sheet, written when that error is above VAE_WARN_LEVELS, else None) and "preview" (the preview
    sheet's path, or None).
    """
    config = config or LoraConfig()
    examples = scan_dataset(data)
    info = inspect_checkpoint(Path(base))
    base_family = family(info.family)
    if not isinstance(base_family, SD1):  # SD1.x and SD2.x (its subclass)
        raise ValueError(f"LoRA training supports SD1.x and SD2.x checkpoints; {Path(base).name} is {info.family}")
    unet = load_component(info, "unet")
    vae = load_component(info, "vae")
    text_encoder = load_component(info, "text_encoder")
    tokenizer = load_clip_tokenizer(base_family.pad_token)
    scaling = float(info.configs["vae"].get("scaling_factor", 0.18215))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    resolution = config.resolution or int(unet.config.sample_size) * factor
    prediction = info.prediction_type
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    items = [e for e in examples for _ in range(e.repeats)]
    with torch.no_grad():
        images = np.stack([_load_image(e.image, resolution) for e in examples])
        x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2).contiguous()
        latents = torch.cat([vae.encode(x[i:i + 8]).latent_dist.mean for i in range(0, len(x), 8)]) * scaling
        shown = min(len(x), 16)  # the round trip of a few images says enough, and decoding is costly at 512 px
        round_trip = np.concatenate([_to_uint8(vae.decode(latents[i:min(i + 4, shown)] / scaling).sample)
                                     for i in range(0, shown, 4)])
    vae_error = float(np.abs(round_trip.astype(np.float32) - images[:shown].astype(np.float32)).mean())
    vae_sheet = None
    if vae_error > VAE_WARN_LEVELS:
        vae_sheet = out.with_name(out.stem + "-vae.png")
        grid([list(images[:shown]), list(round_trip)]).save(vae_sheet)
    index_of = {e.image: i for i, e in enumerate(examples)}
    ids = tokenizer([e.caption for e in examples] + [""], padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    empty = len(examples)

    generator = torch.Generator().manual_seed(config.seed)
    unet_layers = make_lora(unet, UNET_TARGETS, config.rank, config.alpha, generator, conv=config.conv)
    text_layers = make_lora(text_encoder, TEXT_TARGETS, config.rank, config.alpha, generator) \
        if config.text_encoder else {}
    groups = [{"params": [p for layer in unet_layers.values() for p in layer.parameters()],
               "lr": config.learning_rate}]
    if text_layers:
        groups.append({"params": [p for layer in text_layers.values() for p in layer.parameters()],
                       "lr": config.text_learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-2)
    acp = _alphas_cumprod(info.configs["scheduler"])
    order = random.Random(config.seed)
    losses: list[float] = []
    preview_path = out.with_name(out.stem + "-preview.png") if config.preview_every > 0 else None
    preview_rows: list[list[np.ndarray]] = []
    captions = list(dict.fromkeys(e.caption for e in examples))[:4]
    sampled = _HookedModel(unet, info.configs["scheduler"], prediction, info.family, scaling)

    def preview() -> None:
        if preview_path is None:
            return
        drawn = draw(sampled, text_encoder, tokenizer, vae, captions, resolution // factor, config.preview_steps,
                     config.preview_cfg)
        if not preview_rows:
            preview_rows.append(list(images[:len(drawn)]))
        preview_rows.append(drawn)
        grid(preview_rows).save(preview_path)

    bar = tqdm(range(config.steps), desc="lora", disable=not progress, dynamic_ncols=True)
    with attached(unet, unet_layers), attached(text_encoder, text_layers):
        for step in bar:
            batch = [index_of[order.choice(items).image] for _ in range(config.batch_size)]
            prompts = [empty if order.random() < config.caption_dropout else i for i in batch]
            z0 = latents[batch]
            noise = torch.randn(z0.shape, generator=generator)
            t = torch.randint(0, len(acp), (len(batch),), generator=generator)
            a = acp[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
            target = a.sqrt() * noise - (1 - a).sqrt() * z0 if prediction == "v_prediction" else noise
            with torch.set_grad_enabled(bool(text_layers)):
                hidden = text_encoder(ids[prompts]).last_hidden_state
            loss = F.mse_loss(unet(noisy, t, hidden).sample, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if on_step is not None:
                on_step(step + 1, config.steps, loss.item())
            if preview_path is not None and ((step + 1) % config.preview_every == 0 or step + 1 == config.steps):
                preview()
    state = kohya_state(unet_layers, text_layers)
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.alpha),
        "ss_sd_model_name": Path(base).name,
        "ss_resolution": str(resolution),
        "ss_num_train_images": str(len(examples)),
        "ss_max_train_steps": str(config.steps),
        "latentgraph.lora": json.dumps({"format": "kohya", "text_encoder": config.text_encoder,
                                        "conv": config.conv}),
    }
    if config.conv:
        metadata["ss_network_args"] = json.dumps({"conv_dim": str(config.rank), "conv_alpha": str(config.alpha)})
    save_file(state, str(out), metadata=metadata)
    tenth = max(1, len(losses) // 10)
    return {"first_loss": float(np.mean(losses[:tenth])), "last_loss": float(np.mean(losses[-tenth:])),
            "vae_error": vae_error, "vae_sheet": vae_sheet, "preview": preview_path}
