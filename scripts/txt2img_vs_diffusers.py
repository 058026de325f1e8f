"""Times a 20-step 64x64 txt2img on the tiny model through the engine and through StableDiffusionPipeline.

Same process, same weights (the engine loads the checkpoint file written from the very modules the pipeline uses),
same scheduler (Euler, "normal" spacing), seed, cfg and prompts; both write a PNG. The engine's cache is cleared
before each run so every node executes, while the model manager keeps the weights loaded, as a server would. The two
alternate run by run so that a busy machine's noise falls on both alike. Prints the medians and their ratio.

    python scripts/txt2img_vs_diffusers.py [--repeats 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from latentgraph.engine.executor import Executor
from latentgraph.nodes import load_registry, make_environment
from latentgraph.nodes.sd.checkpoint_save import save_single_file
from latentgraph.nodes.sd.detect import family_config
from latentgraph.nodes.sd.samplers import make_scheduler
from latentgraph.nodes.sd.tiny import build_tiny_pipeline_components

POSITIVE, NEGATIVE, SEED, STEPS, CFG, SIZE = "a red circle on a blue square", "blurry", 1, 20, 7.0, 64


def workflow(ckpt: str) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "engine", "images": ["8", 0]}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = Path(tempfile.mkdtemp(prefix="latentgraph-bench-"))
    parts = build_tiny_pipeline_components()
    save_single_file(parts.unet, parts.vae, parts.text_encoder, base / "models" / "checkpoints" / "tiny.safetensors")
    executor = Executor(load_registry(plugins=False), make_environment(base))
    prompt = workflow("tiny.safetensors")
    scheduler = make_scheduler("euler", "normal", family_config("sd1", "scheduler"))
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def engine() -> None:
        executor.cache.clear()
        if executor.run(prompt).status != "success":
            raise SystemExit("engine run failed")

    def diffusers(i: int) -> None:
        image = pipe(POSITIVE, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                     guidance_scale=CFG, generator=torch.Generator().manual_seed(SEED)).images[0]
        image.save(base / f"diffusers_{i}.png")

    engine()
    diffusers(0)
    ours, theirs = [], []
    for i in range(args.repeats):
        start = time.perf_counter()
        engine()
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        diffusers(i + 1)
        theirs.append(time.perf_counter() - start)
    e, d = statistics.median(ours), statistics.median(theirs)
    paired = statistics.median(a / b for a, b in zip(ours, theirs))
    print(f"engine {e * 1000:.0f} ms, diffusers {d * 1000:.0f} ms (medians of {args.repeats}); "
          f"ratio {e / d:.3f}, paired median {paired:.3f}")


if __name__ == "__main__":
    main()
