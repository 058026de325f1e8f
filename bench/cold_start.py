"""Cold start: how long a user waits before the engine answers, each measured in a fresh process.

Three figures: `latentgraph serve` from process start to the first 200 on /object_info; `latentgraph run` of the
txt2img workflow from process start to the PNG on disk; the import time of each package (engine, nodes with the
registry built, server). The same-run baseline is a bare `python -c "import torch"`, the floor for anything that
uses PyTorch, and `import diffusers` with the model classes, which any SD runtime on diffusers pays.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import REPO, bench_threads, make_base_dir, median, report, sd_nodes_available, seconds, txt2img

IMPORTS = {
    "python (no imports)": "pass",
    "torch": "import torch",
    "diffusers models": "from diffusers import UNet2DConditionModel, AutoencoderKL; "
                        "from transformers import CLIPTextModel",
    "engine": "import latentgraph.engine.executor, latentgraph.engine.validate",
    "nodes (registry built)": "from latentgraph.nodes import load_registry; load_registry()",
    "server": "import latentgraph.cli.main; import importlib.util as u; "
              "u.find_spec('latentgraph.server.app') and __import__('latentgraph.server.app')",
}


def latentgraph_command() -> list[str]:
    """The console script beside this interpreter (what a user runs), else `python -m latentgraph.cli`."""
    script = Path(sys.executable).parent / "latentgraph"
    return [str(script)] if script.exists() else [sys.executable, "-m", "latentgraph.cli"]


def child_env() -> dict[str, str]:
    threads = str(bench_threads())
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def import_time(statement: str) -> float:
    """Seconds of a fresh interpreter doing `statement`, measured inside it (interpreter start excluded)."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=REPO,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def process_wall(statement: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], env=child_env(), cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_to_first_object_info(base: Path, timeout: float = 120.0) -> float:
    """Seconds from spawning `latentgraph serve` to the first 200 answer on /object_info; the server is then stopped."""
    port = free_port()
    cmd = latentgraph_command() + ["serve", "--port", str(port), "--base-dir", str(base)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=child_env(), cwd=base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/object_info"
        while time.perf_counter() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        json.loads(response.read())
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"no 200 from {url} within {timeout} s")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_to_png(base: Path, workflow: Path) -> float:
    """Seconds from spawning `latentgraph run WORKFLOW` to its exit, checking that a new PNG was written."""
    output = base / "output"
    before = set(output.rglob("*.png")) if output.exists() else set()
    cmd = latentgraph_command() + ["run", str(workflow), "--quiet", "--base-dir", str(base)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=child_env(), cwd=base, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"latentgraph run failed ({done.returncode}): {done.stdout[-1000:]}{done.stderr[-2000:]}")
    after = set(output.rglob("*.png"))
    if not after - before:
        raise RuntimeError("latentgraph run exited 0 but wrote no PNG")
    return elapsed


def serve_available() -> bool:
    return importlib_find("latentgraph.cli.serve") or importlib_find("latentgraph.server.app")


def importlib_find(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(f"cold start, {args.repeats} fresh processes each, medians")
    floor = []
    for label, statement in IMPORTS.items():
        values = [import_time(statement) for _ in range(args.repeats)]
        if label == "torch":
            floor = values
        ratio = f"   {median(values) / median(floor):5.2f}x torch" if floor and label != "torch" else ""
        print(f"  import {label:24s} {seconds(values)}{ratio}")
        report(f"import {label}", median(values), "s")
    interpreter = [process_wall("pass") for _ in range(args.repeats)]
    print(f"  interpreter start and exit      {seconds(interpreter)}")

    if serve_available():
        base = Path(tempfile.mkdtemp(prefix="lg-cold-serve-"))
        try:
            values = [serve_to_first_object_info(base) for _ in range(args.repeats)]
        finally:
            shutil.rmtree(base, ignore_errors=True)
        print(f"  serve: spawn -> 200 /object_info {seconds(values)}   ({median(values) / median(floor):.2f}x "
              f"import torch; ComfyUI start 12.9 s on this machine)")
        report("serve start -> /object_info 200", median(values), "s", "< 12.9 s (ComfyUI)")
    else:
        print("  serve: skipped, `latentgraph serve` has not landed yet")

    if sd_nodes_available():
        base = make_base_dir("lg-cold-run-")
        try:
            workflow = REPO / "workflows" / "txt2img.json"
            label = "workflows/txt2img.json"
            if not workflow.exists():
                workflow = base / "txt2img.json"
                workflow.write_text(json.dumps(txt2img()))
                label = "bench txt2img (tiny model, 20 steps, 64x64)"
            values = [run_to_png(base, workflow) for _ in range(args.repeats)]
        finally:
            shutil.rmtree(base, ignore_errors=True)
        print(f"  run {label}: spawn -> PNG {seconds(values)}")
        report("run txt2img: spawn -> PNG", median(values), "s")
    else:
        print("  run: skipped, the SD nodes have not landed yet")


if __name__ == "__main__":
    main()
