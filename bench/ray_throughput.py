"""Throughput of `latentgraph serve --ray`: 2 workers x 1 thread against 1 worker x 1 thread (issue 15).

Two real servers run side by side as subprocesses, each starting its own local Ray cluster (CPU only): one with
`--ray --workers 1 --threads-per-worker 1` (the baseline), one with `--ray --workers 2 --threads-per-worker 1`.
A round queues N independent prompts at once (the shipped workflows/txt2img.json on the bundled demo model, a new
seed each, so the sampler, decoder and SaveImage run every time) through POST /prompt and waits on the WebSocket
for every one to finish; its time runs from the first POST to the last prompt's closing `executing` message.
Rounds alternate between the two servers (baseline, scaled, baseline, ...) so that the shared machine's load
falls on both alike; a first untimed round on each loads the checkpoint into every worker. The ratio printed is
median round time of the baseline over that of 2 workers (the goal on a 2-core machine is >= 1.7x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from common import REPO, median, report, seconds
from server_throughput import start_server, stop_server

WORKFLOW = REPO / "workflows" / "txt2img.json"


def prompt_for(seed: int) -> dict[str, Any]:
    """The shipped txt2img workflow (API format) with its own seed and output prefix."""
    prompt = json.loads(WORKFLOW.read_text())
    prompt["3"]["inputs"]["seed"] = seed
    prompt["9"]["inputs"]["filename_prefix"] = f"ray/s{seed}"
    return prompt


def start_ray_server(base: Path, workers: int) -> tuple[subprocess.Popen, str]:
    """`latentgraph serve --ray --workers N --threads-per-worker 1 --port 0` and the URL it prints."""
    return start_server(base, ["--ray", "--workers", str(workers), "--threads-per-worker", "1"], wait_s=240)


async def workers_view(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/workers") as resp:
        return await resp.json()


async def wait_ready(session: aiohttp.ClientSession, url: str, timeout: float = 300) -> None:
    """Until every Ray worker has started (the actors load the node library after the server listens)."""
    deadline = time.monotonic() + timeout
    while not (view := await workers_view(session, url))["ready"]:
        if view["error"] or time.monotonic() > deadline:
            raise RuntimeError(f"the Ray workers did not start: {view['error']}")
        await asyncio.sleep(0.5)


async def run_round(session: aiohttp.ClientSession, url: str, seeds: list[int]) -> float:
    """Queues one prompt per seed at once; seconds from the first POST until the last one has finished."""
    client = uuid.uuid4().hex
    ws = await session.ws_connect(f"{url}/ws?clientId={client}")
    start = time.perf_counter()
    pending = set()
    for seed in seeds:
        async with session.post(f"{url}/prompt", json={"prompt": prompt_for(seed), "client_id": client}) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"POST /prompt answered {resp.status}: {body}")
            pending.add(body["prompt_id"])
    failed = []
    async for message in ws:
        if message.type != aiohttp.WSMsgType.TEXT:
            continue
        data = json.loads(message.data)
        body = data.get("data") or {}
        if data.get("type") == "execution_error":
            failed.append(body.get("exception_message"))
        if data.get("type") == "executing" and body.get("node") is None and body.get("prompt_id") in pending:
            pending.discard(body["prompt_id"])
            if not pending:
                break
    elapsed = time.perf_counter() - start
    await ws.close()
    if failed or pending:
        raise RuntimeError(f"prompts failed or never finished: {failed or pending}")
    return elapsed


async def measure(urls: dict[int, str], rounds: int, prompts: int) -> tuple[dict[int, list[float]], dict[int, Any]]:
    times: dict[int, list[float]] = {workers: [] for workers in urls}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in urls.values():
            await wait_ready(session, url)
        seed = 1000
        for url in urls.values():  # untimed: loads the checkpoint into every worker
            await run_round(session, url, list(range(seed, seed + prompts)))
            seed += prompts
        for _ in range(rounds):
            for workers, url in urls.items():
                times[workers].append(await run_round(session, url, list(range(seed, seed + prompts))))
                seed += prompts
        views = {workers: await workers_view(session, url) for workers, url in urls.items()}
    return times, views


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="independent prompts queued at once per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per server (alternating)")
    args = parser.parse_args()

    bases = {workers: Path(tempfile.mkdtemp(prefix=f"lg-bench-ray{workers}-")) for workers in (1, 2)}
    procs: list[subprocess.Popen] = []
    try:
        urls = {}
        for workers, base in bases.items():
            proc, urls[workers] = start_ray_server(base, workers)
            procs.append(proc)
        times, views = asyncio.run(measure(urls, args.rounds, args.prompts))
    finally:
        for proc in procs:
            stop_server(proc)
        for base in bases.values():
            shutil.rmtree(base, ignore_errors=True)

    print(f"{args.prompts} independent prompts per round (workflows/txt2img.json, demo model, a new seed each), "
          f"{args.rounds} timed rounds per server, alternating")
    for workers in (1, 2):
        done = [w["prompts_done"] for w in views[workers]["workers"]]
        rate = args.prompts / median(times[workers])
        print(f"  --ray --workers {workers} --threads-per-worker 1: {seconds(times[workers])} per round, "
              f"{rate:.3f} prompts/s; prompts per worker {done}")
    ratio = median(times[1]) / median(times[2])
    per_round = ", ".join(f"{a / b:.2f}x" for a, b in zip(times[1], times[2], strict=True))
    print(f"throughput ratio 2 workers / 1 worker: {ratio:.2f}x (goal >= 1.7x; per round: {per_round})")
    report("ray throughput ratio 2x1 / 1x1", ratio, "x", target=">= 1.7",
           note=f"{args.prompts} prompts x {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
