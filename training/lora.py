"""`latentgraph train lora`: fine-tunes a LoRA on a folder of captioned images (the kohya layout) for an SD1.x/SD2.x
checkpoint, and saves it as a kohya-format `.safetensors` file.

Key layout: kohya's, which ComfyUI, A1111 and diffusers' `load_lora_weights` read:
`lora_unet_<diffusers module path with _>.lora_down.weight` / `.lora_up.weight` / `.alpha` for the UNet and
`lora_te_text_model_<module path>...` for the text encoder. The base weights are never changed: low-rank
factors are added through forward hooks while training.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from latentgraph.nodes.sd.checkpoint import inspect_checkpoint, load_component
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer
from PIL import Image, UnidentifiedImageError
from safetensors.torch import save_file
from tqdm import tqdm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
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
    """Low-rank factors for one Linear or 1x1 Conv2d, in kohya's shapes (down: [r, in], up: [out, r])."""

    def __init__(self, base: torch.nn.Module, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        conv = isinstance(base, torch.nn.Conv2d)
        in_features = base.in_channels if conv else base.in_features
        out_features = base.out_channels if conv else base.out_features
        shape = (1, 1) if conv else ()
        self.conv = conv
        self.scale = alpha / rank
        self.alpha = alpha
        self.down = torch.nn.Parameter(torch.randn(rank, in_features, *shape, generator=generator) / rank)
        self.up = torch.nn.Parameter(torch.zeros(out_features, rank, *shape))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv:
            return F.conv2d(F.conv2d(x, self.down), self.up) * self.scale
        return F.linear(F.linear(x, self.down), self.up) * self.scale


def _targets(model: torch.nn.Module, suffixes: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    found = {}
    for name, module in model.named_modules():
        if not name.endswith(suffixes):
            continue
        pointwise = isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1)
        if isinstance(module, torch.nn.Linear) or pointwise:
            found[name] = module
    return found


def make_lora(model: torch.nn.Module, suffixes: tuple[str, ...], rank: int, alpha: float,
              generator: torch.Generator) -> dict[str, LoraLayer]:
    return {name: LoraLayer(module, rank, alpha, generator) for name, module in _targets(model, suffixes).items()}


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
    rank: int = 8
    alpha: float = 8.0
    steps: int = 400
    batch_size: int = 4
    learning_rate: float = 1e-3
    text_encoder: bool = False
    text_learning_rate: float = 5e-4
    resolution: int | None = None
    seed: int = 0


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


def train_lora(data: Path, base: Path, out: Path, config: LoraConfig | None = None, *,
               progress: bool = True) -> dict[str, float]:
    """Trains a LoRA for checkpoint `base` on the captioned images in `data` and writes it to `out`.

    Returns {"first_loss", "last_loss"} (means over the first and last tenth of the steps).
    """
    config = config or LoraConfig()
    examples = scan_dataset(data)
    info = inspect_checkpoint(Path(base))
    if info.family not in ("sd1", "sd2"):
        raise ValueError(f"LoRA training supports SD1.x and SD2.x checkpoints; {Path(base).name} is {info.family}")
    unet = load_component(info, "unet")
    vae = load_component(info, "vae")
    text_encoder = load_component(info, "text_encoder")
    tokenizer = load_clip_tokenizer("!" if info.family == "sd2" else None)
    scaling = float(info.configs["vae"].get("scaling_factor", 0.18215))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    resolution = config.resolution or int(unet.config.sample_size) * factor
    prediction = info.prediction_type

    items = [e for e in examples for _ in range(e.repeats)]
    with torch.no_grad():
        pixels = np.stack([_load_image(e.image, resolution) for e in examples]).astype(np.float32) / 127.5 - 1
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        latents = torch.cat([vae.encode(x[i:i + 8]).latent_dist.mean for i in range(0, len(x), 8)]) * scaling
    index_of = {e.image: i for i, e in enumerate(examples)}
    ids = tokenizer([e.caption for e in examples], padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids

    generator = torch.Generator().manual_seed(config.seed)
    unet_layers = make_lora(unet, UNET_TARGETS, config.rank, config.alpha, generator)
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
    bar = tqdm(range(config.steps), desc="lora", disable=not progress, dynamic_ncols=True)
    with attached(unet, unet_layers), attached(text_encoder, text_layers):
        for _ in bar:
            batch = [index_of[order.choice(items).image] for _ in range(config.batch_size)]
            z0 = latents[batch]
            noise = torch.randn(z0.shape, generator=generator)
            t = torch.randint(0, len(acp), (len(batch),), generator=generator)
            a = acp[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
            target = a.sqrt() * noise - (1 - a).sqrt() * z0 if prediction == "v_prediction" else noise
            with torch.set_grad_enabled(bool(text_layers)):
                hidden = text_encoder(ids[batch]).last_hidden_state
            loss = F.mse_loss(unet(noisy, t, hidden).sample, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
    state = kohya_state(unet_layers, text_layers)
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.alpha),
        "ss_sd_model_name": Path(base).name,
        "ss_resolution": str(resolution),
        "ss_num_train_images": str(len(examples)),
        "ss_max_train_steps": str(config.steps),
        "latentgraph.lora": json.dumps({"format": "kohya", "text_encoder": config.text_encoder}),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=metadata)
    tenth = max(1, len(losses) // 10)
    return {"first_loss": float(np.mean(losses[:tenth])), "last_loss": float(np.mean(losses[-tenth:]))}
