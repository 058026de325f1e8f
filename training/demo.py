"""`latentgraph train demo`: trains the bundled demo model from scratch on the procedural shapes dataset.

Four stages, each resumable from `state.pt` in the output folder: (1) the VAE learns to reconstruct images,
(2) its decoder is sharpened with the encoder frozen, (3) a pool of training images is encoded to latents once,
(4) the text encoder and UNet learn to denoise those latents given the captions (eps objective on SD1.x's
schedule, min-SNR weighting, EMA weights). Batches and noise
are functions of (seed, step), so a resumed run draws exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from latentgraph.nodes.sd.tokenizer import load_clip_tokenizer
from latentgraph.training import dataset
from latentgraph.training.models import (
    Architecture,
    alphas_cumprod,
    build_text_encoder,
    build_unet,
    build_vae,
)
from latentgraph.training.vae_init import init_vae
from tqdm import tqdm

STATE_FILE = "state.pt"
LATENTS_FILE = "latents.pt"
LOG_FILE = "log.jsonl"


@dataclass
class DemoConfig:
    """Everything a run depends on; stored in the state so that a resume continues the same run."""

    arch: Architecture = field(default_factory=Architecture)
    seed: int = 0
    vae_steps: int = 1200
    vae_batch: int = 8
    vae_lr: float = 3e-4
    decoder_steps: int = 1500
    decoder_lr: float = 1e-3
    edge_weight: float = 1.0
    pool_size: int = 6000
    captions_per_image: int = 4
    unet_steps: int = 5200
    unet_batch: int = 32
    unet_lr: float = 6e-4
    warmup_steps: int = 100
    caption_dropout: float = 0.1
    offset_noise: float = 0.05
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    checkpoint_seconds: float = 180.0
    log_every: int = 20

    @classmethod
    def from_dict(cls, data: dict) -> DemoConfig:
        arch = data.get("arch", {})
        arch = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}
        arch.setdefault("text_heads", max(1, arch.get("text_hidden", 64) // 64))  # runs from before the field
        return cls(**{**data, "arch": Architecture(**arch)})


PRESETS: dict[str, DemoConfig] = {
    "demo": DemoConfig(),
    "tiny": DemoConfig(
        arch=Architecture(
            resolution=32,
            vae_channels=(32, 32, 32, 32),
            unet_channels=(32, 32),
            text_hidden=32,
            text_layers=1,
            text_heads=1,
            text_intermediate=64,
        ),
        vae_steps=30,
        vae_batch=4,
        vae_lr=5e-4,
        decoder_steps=10,
        pool_size=64,
        unet_steps=60,
        unet_batch=8,
        unet_lr=1e-3,
        warmup_steps=5,
        ema_decay=0.9,
        checkpoint_seconds=1e9,
        log_every=1,
    ),
    # Fine-tuning a finished model (`--from-checkpoint`) on the varied captions: VAE frozen, stages 1-2 skipped.
    "finetune": DemoConfig(unet_steps=1500, unet_lr=3e-4, warmup_steps=50),
}


@dataclass
class TrainState:
    """What `state.pt` holds between runs."""

    config: DemoConfig
    stage: str = "vae"
    step: int = 0
    vae: dict = field(default_factory=dict)
    unet: dict = field(default_factory=dict)
    text_encoder: dict = field(default_factory=dict)
    ema_unet: dict = field(default_factory=dict)
    ema_text_encoder: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    decoder_step: int = 0
    decoder_optimizer: dict = field(default_factory=dict)
    latent_scale: float = 1.0
    elapsed_seconds: float = 0.0
    init_checkpoint: str = ""

    def save(self, folder: Path) -> None:
        data = {**self.__dict__, "config": asdict(self.config)}
        tmp = folder / (STATE_FILE + ".tmp")
        torch.save(data, tmp)
        tmp.replace(folder / STATE_FILE)

    @classmethod
    def load(cls, folder: Path) -> TrainState:
        data = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
        data["config"] = DemoConfig.from_dict(data["config"])
        return cls(**data)


def _images_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    array = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def _log(folder: Path, record: dict) -> None:
    with open(folder / LOG_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")


class _Clock:
    """Calls `save` every `seconds` of wall time and at the end; tracks the run's total elapsed time."""

    def __init__(self, state: TrainState, seconds: float, save: Callable[[], None]) -> None:
        self.state, self.seconds, self.save = state, seconds, save
        self.start = self.last = time.monotonic()
        self.base = state.elapsed_seconds

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        self.state.elapsed_seconds = self.base + now - self.start
        if force or now - self.last >= self.seconds:
            self.save()
            self.last = now


def _image_batch(cfg: DemoConfig, stream: int, step: int) -> torch.Tensor:
    """Batch `step` of image stream `stream` (a pure function of both, so a resumed run sees the same images)."""
    first = step * cfg.vae_batch
    return _images_to_tensor([dataset.sample(stream, first + i, cfg.arch.resolution)[0] for i in range(cfg.vae_batch)])


def _sample_latents(posterior: torch.distributions.Distribution, generator: torch.Generator) -> torch.Tensor:
    return posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)


def _record_step(state: TrainState, folder: Path, bar: tqdm, clock: _Clock, stage: str, step: int,
                 loss: float) -> None:
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}")
    if step % state.config.log_every == 0:
        _log(folder, {"stage": stage, "step": step, "loss": loss, "time": state.elapsed_seconds})
    clock.tick()


def _adamw(params: list[torch.nn.Parameter], lr: float, saved: dict) -> torch.optim.AdamW:
    """AdamW without weight decay, continuing from `saved` (an optimizer state dict) when a run resumes."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if saved:
        opt.load_state_dict(saved)
    return opt


def _train_vae(state: TrainState, folder: Path, progress: bool) -> None:
    cfg = state.config
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg.arch)
    if state.vae:
        vae.load_state_dict(state.vae)
    else:
        init_vae(vae)
    opt = _adamw(list(vae.parameters()), cfg.vae_lr, state.optimizer)

    def save() -> None:
        state.vae, state.optimizer = vae.state_dict(), opt.state_dict()
        state.save(folder)

    clock = _Clock(state, cfg.checkpoint_seconds, save)
    bar = tqdm(total=cfg.vae_steps, initial=state.step, desc="vae", disable=not progress, dynamic_ncols=True)
    vae.train()
    while state.step < cfg.vae_steps:
        x = _image_batch(cfg, cfg.seed + 1, state.step)
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * min(1.0, (state.step + 1) / cfg.warmup_steps)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.step)
        posterior = vae.encode(x).latent_dist
        z = _sample_latents(posterior, generator)
        recon = vae.decode(z).sample
        kl = posterior.kl().mean() / z[0].numel()
        loss = _reconstruction_loss(recon, x, cfg.edge_weight) + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state.step += 1
        _record_step(state, folder, bar, clock, "vae", state.step, loss.item())
    bar.close()
    clock.tick()
    state.vae, state.optimizer = vae.state_dict(), {}
    state.stage, state.step = "latents", 0
    state.save(folder)


def _image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def _reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """L1 + L2 of the pixels plus L1 of the image gradients: the edge term weights the pixels that tell a square
    from a circle and a small star from a blob, which plain pixel losses leave blurred."""
    loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
    for made, wanted in zip(_image_gradients(recon), _image_gradients(x)):
        loss = loss + edge_weight * F.l1_loss(made, wanted)
    return loss


def _refine_decoder(state: TrainState, folder: Path, progress: bool) -> None:
    """Sharpens the decoder with the encoder frozen, so latents (and a UNet trained on them) stay valid.

    The joint stage leaves edges and corners blurred, and corners are what tell a square from a circle: an
    image-gradient term weights exactly those pixels, and a cosine schedule settles the decoder at the end.
    Because the encoder never changes, a finished run can gain (more of) this stage without retraining its UNet.
    """
    cfg = state.config
    vae = build_vae(cfg.arch)
    vae.load_state_dict(state.vae)
    vae.requires_grad_(False)
    trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in trained:
        p.requires_grad_(True)
    opt = _adamw(trained, cfg.decoder_lr, state.decoder_optimizer)

    def save() -> None:
        state.vae, state.decoder_optimizer = vae.state_dict(), opt.state_dict()
        state.save(folder)

    clock = _Clock(state, cfg.checkpoint_seconds, save)
    bar = tqdm(total=cfg.decoder_steps, initial=state.decoder_step, desc="decoder", disable=not progress,
               dynamic_ncols=True)
    vae.train()
    while state.decoder_step < cfg.decoder_steps:
        step = state.decoder_step
        x = _image_batch(cfg, cfg.seed + 2, step)
        for group in opt.param_groups:
            group["lr"] = cfg.decoder_lr * 0.5 * (1 + math.cos(math.pi * step / cfg.decoder_steps))
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 250_000 + step)
        with torch.no_grad():
            z = _sample_latents(vae.encode(x).latent_dist, generator)
        recon = vae.decode(z).sample
        loss = _reconstruction_loss(recon, x, cfg.edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state.decoder_step += 1
        _record_step(state, folder, bar, clock, "decoder", state.decoder_step, loss.item())
    bar.close()
    state.vae, state.decoder_optimizer = vae.state_dict(), {}
    clock.tick(force=True)


def _encode_pool(state: TrainState, folder: Path, progress: bool) -> None:
    """Encodes the training pool once (mean and std of each posterior) and measures the latents' spread."""
    cfg = state.config
    vae = build_vae(cfg.arch)
    vae.load_state_dict(state.vae)
    vae.eval()
    tokenizer = load_clip_tokenizer()
    means, stds, captions = [], [], []
    variants = cfg.captions_per_image
    batch = 64
    with torch.no_grad():
        for start in tqdm(range(0, cfg.pool_size, batch), desc="encode", disable=not progress, dynamic_ncols=True):
            indices = range(start, min(start + batch, cfg.pool_size))
            samples = [dataset.sample(cfg.seed, i, cfg.arch.resolution) for i in indices]
            posterior = vae.encode(_images_to_tensor([s[0] for s in samples])).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
            captions.extend(dataset.sample_caption(s[2], cfg.seed, i, k) for s, i in zip(samples, indices)
                            for k in range(variants))
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids = ids.view(-1, variants, ids.shape[-1])
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    mean = torch.cat(means)
    torch.save({"mean": mean, "std": torch.cat(stds), "ids": ids, "empty": empty}, folder / LATENTS_FILE)
    if not state.init_checkpoint:  # a shipped VAE is already rescaled to SD1.x's latent scale
        state.latent_scale = float(mean.std())
    state.stage, state.step = "unet", 0
    state.save(folder)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)


def _train_unet(state: TrainState, folder: Path, progress: bool) -> None:
    cfg = state.config
    pool = torch.load(folder / LATENTS_FILE, map_location="cpu")
    torch.manual_seed(cfg.seed)
    unet, text_encoder = build_unet(cfg.arch), build_text_encoder(cfg.arch)
    if state.unet:
        unet.load_state_dict(state.unet)
        text_encoder.load_state_dict(state.text_encoder)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    if state.ema_unet:
        ema_unet.load_state_dict(state.ema_unet)
        ema_text.load_state_dict(state.ema_text_encoder)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = _adamw(params, cfg.unet_lr, state.optimizer)
    acp = alphas_cumprod()
    snr = acp / (1 - acp)
    weights = torch.clamp(snr, max=cfg.min_snr_gamma) / snr

    def save() -> None:
        state.unet, state.text_encoder = unet.state_dict(), text_encoder.state_dict()
        state.ema_unet, state.ema_text_encoder = ema_unet.state_dict(), ema_text.state_dict()
        state.optimizer = opt.state_dict()
        state.save(folder)

    clock = _Clock(state, cfg.checkpoint_seconds, save)
    bar = tqdm(total=cfg.unet_steps, initial=state.step, desc="unet", disable=not progress, dynamic_ncols=True)
    unet.train()
    text_encoder.train()
    count = pool["mean"].shape[0]
    while state.step < cfg.unet_steps:
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 500_000 + state.step)
        idx = torch.randint(0, count, (cfg.unet_batch,), generator=generator)
        eps_z = torch.randn(pool["mean"][idx].shape, generator=generator)
        latents = (pool["mean"][idx] + pool["std"][idx] * eps_z) / state.latent_scale
        ids = pool["ids"][idx]
        if ids.dim() == 3:  # several captions per image: one drawn per sample
            ids = ids[torch.arange(len(idx)), torch.randint(0, ids.shape[1], (len(idx),), generator=generator)]
        ids = ids.clone()
        drop = torch.rand(cfg.unet_batch, generator=generator) < cfg.caption_dropout
        ids[drop] = pool["empty"]
        noise = torch.randn(latents.shape, generator=generator)
        noise += cfg.offset_noise * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
        t = torch.randint(0, len(acp), (cfg.unet_batch,), generator=generator)
        a = acp[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = cfg.unet_lr * min(1.0, (state.step + 1) / cfg.warmup_steps)
        hidden = text_encoder(ids).last_hidden_state
        pred = unet(noisy, t, hidden).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + state.step) / (10 + state.step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        state.step += 1
        _record_step(state, folder, bar, clock, "unet", state.step, loss.item())
    bar.close()
    state.stage = "done"
    clock.tick(force=True)


def init_from_checkpoint(folder: Path, checkpoint: Path, config: DemoConfig) -> TrainState:
    """Starts a run in `folder` from a finished model file (e.g. the shipped demo model) instead of from scratch.

    Its VAE is kept frozen (stages 1-2 are skipped, so the latents the UNet already knows stay the same); the pool
    is encoded with the current captions, and the UNet and text encoder (and their EMA copies) continue from the
    file's weights for `config.unet_steps` steps. The file's VAE is already rescaled to SD1.x's latent scale, so
    the run's latent scale is 1 / scaling_factor and exporting leaves the VAE as it was.
    """
    from latentgraph.nodes.sd.families import inspect_checkpoint, load_component

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / STATE_FILE).exists():
        raise FileExistsError(f"{folder} already holds a run; resume it without --from-checkpoint or pick a new --out")
    info = inspect_checkpoint(Path(checkpoint))
    state = TrainState(config=copy.deepcopy(config), stage="latents", init_checkpoint=str(checkpoint))
    state.decoder_step = config.decoder_steps
    arch = config.arch
    for name, build in (("vae", build_vae), ("unet", build_unet), ("text_encoder", build_text_encoder)):
        model = build(arch)
        model.load_state_dict(load_component(info, name).state_dict())  # strict: the architecture must match
        setattr(state, name, model.state_dict())
    state.ema_unet, state.ema_text_encoder = state.unet, state.text_encoder
    state.latent_scale = 1.0 / float(info.configs["vae"].get("scaling_factor", 0.18215))
    state.save(folder)
    return state


def train_demo(folder: Path, config: DemoConfig | None = None, *, progress: bool = True,
               finish: bool = False) -> TrainState:
    """Runs (or resumes) every remaining stage into `folder` and returns the final state.

    A folder that already holds a state resumes it; `config` then only raises the step counts (to train longer).
    `finish` ends a run stopped during its UNet stage where its last checkpoint is, instead of resuming it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / STATE_FILE).exists():
        state = TrainState.load(folder)
        if config is not None:
            if state.stage == "vae":
                state.config.vae_steps = max(state.config.vae_steps, config.vae_steps)
            state.config.decoder_steps = max(state.config.decoder_steps, config.decoder_steps)
            state.config.unet_steps = max(state.config.unet_steps, config.unet_steps)
            if state.stage == "done" and state.step < state.config.unet_steps:
                state.stage = "unet"
    else:
        state = TrainState(config=copy.deepcopy(config or PRESETS["demo"]))
        state.save(folder)
    if finish and state.stage == "unet" and state.ema_unet:
        state.config.unet_steps = state.step
        state.stage = "done"
        state.save(folder)
    if state.stage == "vae":
        _train_vae(state, folder, progress)
    if state.decoder_step < state.config.decoder_steps:
        _refine_decoder(state, folder, progress)
    if state.stage == "latents":
        _encode_pool(state, folder, progress)
    if state.stage == "unet":
        _train_unet(state, folder, progress)
    return state


def loss_history(folder: Path, stage: str) -> list[float]:
    """The logged losses of one stage, in step order."""
    path = folder / LOG_FILE
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["loss"] for r in records if r["stage"] == stage]


def mean_or_nan(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
