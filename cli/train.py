"""`latentgraph train demo` (the bundled demo model, from scratch) and `latentgraph train lora` (a user's LoRA)."""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from latentgraph.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    add_base_dir_argument,
    add_threads_argument,
    apply_threads,
)


@dataclass(frozen=True)
class _LoraDefaults:
    """training.lora.LoraConfig's defaults, repeated so that building the CLI does not import torch (a test checks
    they agree)."""

    steps: int = 400
    rank: int = 8
    learning_rate: float = 1e-3
    batch_size: int = 4
    conv: bool = True
    caption_dropout: float = 0.1


LORA_DEFAULTS = _LoraDefaults()


def _demo(args: argparse.Namespace) -> int:
    from latentgraph.training.demo import PRESETS, STATE_FILE, init_from_checkpoint, train_demo
    from latentgraph.training.export import write_diffusers_folder, write_single_file

    apply_threads(args.threads)
    config = None
    if not (args.out / STATE_FILE).exists() or args.unet_steps is not None or args.decoder_steps is not None:
        config = copy.deepcopy(PRESETS[args.preset])
        if args.unet_steps is not None:
            config.unet_steps = args.unet_steps
        if args.decoder_steps is not None:
            config.decoder_steps = args.decoder_steps
    if args.from_checkpoint is not None:
        if (args.out / STATE_FILE).exists():
            print(f"error: {args.out} already holds a run; resume it without --from-checkpoint", file=sys.stderr)
            return EXIT_INVALID
        if not args.from_checkpoint.is_file():
            print(f"error: --from-checkpoint {args.from_checkpoint} is not a file", file=sys.stderr)
            return EXIT_INVALID
        init_from_checkpoint(args.out, args.from_checkpoint, config)
        config = None
    state = train_demo(args.out, config, progress=not args.quiet, finish=args.finish)
    single = write_single_file(state, args.out / "latentgraph-demo.safetensors")
    folder = write_diffusers_folder(state, args.out / "latentgraph-demo")
    print(f"trained {state.config.unet_steps} UNet steps in {state.elapsed_seconds / 60:.1f} min")
    print(f"wrote {single} ({single.stat().st_size / 1e6:.1f} MB) and {folder}")
    if args.install:
        target = args.base_dir / "models" / "checkpoints" / single.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(single, target)
        print(f"installed as {target}")
    return EXIT_OK


def _find_base(base_dir: Path, name: str) -> Path:
    path = Path(name)
    if path.exists():
        return path
    from latentgraph.nodes import make_environment
    from latentgraph.nodes.sd.loader_nodes import find_checkpoint

    return find_checkpoint(make_environment(base_dir), name)


def _lora(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    from latentgraph.training.lora import DatasetError, LoraConfig, scan_dataset, train_lora

    try:
        examples = scan_dataset(args.data)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    try:
        base = _find_base(args.base_dir, args.base)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    out = args.out or args.base_dir / "models" / "loras" / f"{args.data.resolve().name}.safetensors"
    config = LoraConfig(rank=args.rank, alpha=args.alpha or float(args.rank), steps=args.steps,
                        batch_size=args.batch_size, learning_rate=args.lr, text_encoder=args.text_encoder,
                        conv=args.conv, caption_dropout=args.caption_dropout, resolution=args.resolution,
                        seed=args.seed, preview_every=args.preview_every)
    print(f"training a LoRA on {len(examples)} captioned images for {base.name}")
    try:
        result = train_lora(args.data, base, out, config, progress=not args.quiet)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    if result["vae_sheet"] is not None:
        print(f"warning: this checkpoint's VAE reproduces the training images poorly (mean error "
              f"{result['vae_error']:.1f}/255): a LoRA cannot draw better than the VAE decodes; compare the images "
              f"with their round trip in {result['vae_sheet']}", file=sys.stderr)
    print(f"loss {result['first_loss']:.4f} -> {result['last_loss']:.4f}; wrote {out} (kohya key layout)")
    if result["preview"] is not None:
        print(f"previews (training images, then one row every {args.preview_every} steps): {result['preview']}")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train the demo model or a LoRA",
                                   description="Train the bundled demo model from scratch, or a LoRA on your images.")
    kinds = parser.add_subparsers(title="what to train", metavar="KIND", required=True)

    demo = kinds.add_parser("demo", help="train the demo model on generated shapes (resumable)",
                            description="Trains the demo model on the procedural shapes dataset. Re-running with "
                                        "the same --out resumes; a finished run is only exported again.")
    add_base_dir_argument(demo)
    demo.add_argument("--out", type=Path, default=Path("demo-training"), help="run folder (default: demo-training)")
    demo.add_argument("--preset", choices=["demo", "tiny", "finetune"], default="demo",
                      help="model and schedule sizes (finetune: the schedule for --from-checkpoint)")
    demo.add_argument("--from-checkpoint", type=Path, default=None, metavar="FILE",
                      help="start a new run from a finished model file (VAE frozen; the UNet and text encoder "
                           "continue on the current captions), e.g. the shipped demo model with --preset finetune")
    demo.add_argument("--unet-steps", type=int, default=None, help="UNet steps (raise it to train a run longer)")
    demo.add_argument("--decoder-steps", type=int, default=None,
                      help="steps sharpening the VAE decoder (raise it to refine a finished run's decoder)")
    add_threads_argument(demo)
    demo.add_argument("--finish", action="store_true",
                      help="end a stopped run at its last checkpoint and export it, instead of resuming it")
    demo.add_argument("--install", action="store_true", help="copy the result into BASE_DIR/models/checkpoints")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    defaults = LORA_DEFAULTS
    lora = kinds.add_parser("lora", help="train a LoRA on a folder of images with .txt captions",
                            description="Trains a LoRA (kohya key layout) on IMAGE + IMAGE.txt pairs; kohya's "
                                        "N_name subfolders repeat their images N times.")
    add_base_dir_argument(lora)
    add_threads_argument(lora)
    lora.add_argument("--data", type=Path, required=True, help="folder of images and .txt captions")
    lora.add_argument("--base", required=True, help="checkpoint file, or a name in models/checkpoints")
    lora.add_argument("--out", type=Path, default=None, help="output file (default: models/loras/DATA.safetensors)")
    lora.add_argument("--steps", type=int, default=defaults.steps, help=f"optimizer steps (default {defaults.steps})")
    lora.add_argument("--rank", type=int, default=defaults.rank,
                      help=f"LoRA rank: size of the low-rank update (default {defaults.rank})")
    lora.add_argument("--alpha", type=float, default=None, help="default: the rank (scale 1)")
    lora.add_argument("--lr", type=float, default=defaults.learning_rate,
                      help=f"learning rate (default {defaults.learning_rate:g})")
    lora.add_argument("--batch-size", type=int, default=defaults.batch_size,
                      help=f"images per step (default {defaults.batch_size})")
    lora.add_argument("--resolution", type=int, default=None, help="default: the checkpoint's native size")
    lora.add_argument("--text-encoder", action="store_true", help="also train the text encoder")
    lora.add_argument("--conv", action=argparse.BooleanOptionalAction, default=defaults.conv,
                      help="also train the UNet's resnet convs (kohya's LoCon; default: on)")
    lora.add_argument("--caption-dropout", type=float, default=defaults.caption_dropout,
                      help=f"share of steps on the empty prompt (default {defaults.caption_dropout:g})")
    lora.add_argument("--preview-every", type=int, default=100, metavar="N",
                      help="every N steps, add a row of samples of the captions to OUT-preview.png (0: none; "
                           "default 100)")
    lora.add_argument("--seed", type=int, default=0, help="seed for noise, timesteps and order (default 0)")
    lora.add_argument("--quiet", action="store_true", help="no progress bar")
    lora.set_defaults(func=_lora)
