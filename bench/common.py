"""What the benchmarks share: timing statistics, memory readings, a base folder with the tiny model, workflows.

Every benchmark is a script (`python bench/NAME.py`) that prints medians of several repetitions with their spread
and ratios against a baseline measured in the same process, then exits 0. The machines these run on are shared and
noisy, so a ratio of interleaved measurements is the figure to trust, not an absolute time.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY_CKPT = "bench-tiny.safetensors"
RESULT_PREFIX = "RESULT "


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """Min and max around the median, as the reader needs them to judge noise."""
    return f"min {min(values):.4g}, max {max(values):.4g}, n={len(values)}"


def ms(values: list[float]) -> str:
    """Seconds shown as 'median ms (min..max, n)'."""
    low, high = min(values) * 1e3, max(values) * 1e3
    return f"{median(values) * 1e3:9.2f} ms  (min {low:.2f}, max {high:.2f}, n={len(values)})"


def seconds(values: list[float]) -> str:
    return f"{median(values):8.3f} s  (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): p99 of 200 samples is the 198th smallest."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def rss_mb(pid: int | str = "self") -> float:
    """Current resident set size in MiB, from /proc (no psutil needed)."""
    return _proc_status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int | str = "self") -> float:
    """Highest resident set size this process has reached, in MiB."""
    return _proc_status_kb(pid, "VmHWM") / 1024


def children_peak_rss_mb() -> float:
    """Largest peak RSS among waited-for child processes, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _proc_status_kb(pid: int | str, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise KeyError(field)


def report(name: str, value: float, unit: str, target: str = "", note: str = "") -> None:
    """One machine-readable figure line, collected by run_all.py into its table."""
    print(RESULT_PREFIX + json.dumps({"name": name, "value": value, "unit": unit, "target": target, "note": note}))


def make_base_dir(prefix: str = "lg-bench-") -> Path:
    """A fresh base folder holding the tiny SD1-architecture model as models/checkpoints/bench-tiny.safetensors."""
    from latentgraph.nodes.sd.tiny import write_tiny_checkpoint

    base = Path(tempfile.mkdtemp(prefix=prefix))
    checkpoints = base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    write_tiny_checkpoint(checkpoints / TINY_CKPT, seed=0)
    return base


def txt2img(
    *,
    ckpt: str = TINY_CKPT,
    positive: str = "a red circle on a blue square",
    negative: str = "blurry",
    seed: int = 1,
    steps: int = 20,
    cfg: float = 7.0,
    width: int = 64,
    height: int = 64,
    sampler: str = "euler",
    scheduler: str = "normal",
    prefix: str = "bench",
    save: bool = True,
) -> dict[str, Any]:
    """ComfyUI's default txt2img graph, with ComfyUI's node ids, in API format."""
    prompt: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }
    if save:
        prompt["9"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}}
    else:
        prompt["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    return prompt


def sd_nodes_available() -> bool:
    """Whether the SD nodes (KSampler and friends) are registered yet; benchmarks that need them say so if not."""
    from latentgraph.nodes import load_registry

    return "KSampler" in load_registry(plugins=False)


def bench_threads() -> int:
    """Threads per process: 1 unless BENCH_THREADS says otherwise.

    On a shared 2-core machine a second PyTorch thread competing with other processes makes a UNet call up to 20x
    slower and wildly variable (measured: tiny UNet 38 ms median with 1 thread, 870 ms with 2 under a load of 6).
    """
    return int(os.environ.get("BENCH_THREADS", "1"))


def quiet_threads() -> None:
    """Fixed thread counts so that repeated runs compare like with like on a shared machine."""
    import torch

    torch.set_num_threads(bench_threads())
