"""Server throughput and responsiveness against a real `latentgraph serve` subprocess on 127.0.0.1.

Three phases, each over HTTP + WebSocket as a ComfyUI client talks (POST /prompt with a client_id, events on
/ws?clientId=...):
1. idle overhead: one client queues prompts one after another; queue-to-start latency (POST sent -> the prompt's
   execution_start received) and end-to-end time per prompt, against the same prompts run by an in-process
   Executor in this process (the baseline: what the server adds is the difference);
2. throughput: 8 concurrent clients queue 200 prompts in all (each client waits for its prompt to finish before
   queueing the next, so up to 8 are queued at once): prompts per second, queue-to-start p50/p99 (which here includes
   waiting behind other clients' prompts) and the worker's idle gap between one prompt's end and the next's start;
3. GET /queue latency p50/p99 while a long sampling runs in the worker thread, against the same requests on the idle
   server.
Each prompt is the tiny-model txt2img (64x64, few steps) with its own seed, so the sampler, decoder and SaveImage
run every time while the checkpoint and the prompts' text encodings come from the cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
from cold_start import child_env, latentgraph_command
from common import make_base_dir, median, ms, percentile, quiet_threads, report, txt2img


def start_server(base: Path, extra: list[str] | None = None, wait_s: float = 180) -> tuple[subprocess.Popen, str]:
    """A `latentgraph serve --port 0 [EXTRA...]` subprocess and the URL it prints once listening."""
    cmd = latentgraph_command() + ["serve", "--port", "0", "--base-dir", str(base), *(extra or [])]
    proc = subprocess.Popen(cmd, env=child_env(), cwd=base, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    deadline = time.monotonic() + wait_s
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            return proc, line.split("listening on", 1)[1].split()[0]
        if time.monotonic() > deadline:
            break
    stop_server(proc)
    raise RuntimeError("the server did not report that it was listening")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Client:
    """One ComfyUI-style client: its own WebSocket, a reader task timestamping the events of its prompts."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.sid = uuid.uuid4().hex
        self.events: dict[str, dict[str, float]] = defaultdict(dict)
        self.done: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task | None = None
        self.foreign = 0

    async def connect(self) -> None:
        self.ws = await self.session.ws_connect(f"{self.url}/ws?clientId={self.sid}")
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.perf_counter()
            data = json.loads(message.data)
            kind, body = data.get("type"), data.get("data") or {}
            prompt_id = body.get("prompt_id")
            if prompt_id is None:
                continue
            self.events[prompt_id].setdefault(kind, now)
            if kind == "executing" and body.get("node") is None:
                self.events[prompt_id]["done"] = now
                self.done[prompt_id].set()

    async def queue(self, prompt: dict[str, Any]) -> str:
        sent = time.perf_counter()
        async with self.session.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": self.sid}) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"POST /prompt answered {resp.status}: {body}")
        prompt_id = body["prompt_id"]
        self.events[prompt_id]["sent"] = sent
        return prompt_id

    async def run(self, prompt: dict[str, Any], timeout: float = 300) -> dict[str, float]:
        prompt_id = await self.queue(prompt)
        await asyncio.wait_for(self.done[prompt_id].wait(), timeout)
        events = self.events[prompt_id]
        if "execution_success" not in events:
            raise RuntimeError(f"prompt {prompt_id} did not succeed: events {sorted(events)}")
        return events

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await self.reader


async def get_queue_latencies(session: aiohttp.ClientSession, url: str, count: int) -> list[float]:
    values = []
    for _ in range(count):
        start = time.perf_counter()
        async with session.get(f"{url}/queue") as resp:
            await resp.read()
            assert resp.status == 200
        values.append(time.perf_counter() - start)
    return values


def workflow(seed: int, steps: int) -> dict[str, Any]:
    return txt2img(seed=seed, steps=steps, prefix=f"srv/s{seed}")


def in_process_baseline(base: Path, seeds: list[int], steps: int) -> list[float]:
    """The same prompts through an Executor in this process: the engine's own time per prompt."""
    from latentgraph.engine.executor import Executor
    from latentgraph.nodes import load_registry, make_environment

    executor = Executor(load_registry(), make_environment(base))
    executor.run(workflow(10**9, steps))  # load the model and encode the texts, as the server's warm-up did
    values = []
    for seed in seeds:
        start = time.perf_counter()
        result = executor.run(workflow(seed, steps))
        values.append(time.perf_counter() - start)
        assert result.status == "success", result.error
    executor.free()
    return values


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        solo = Client(session, url)
        await solo.connect()
        await solo.run(workflow(10**9, args.steps))  # warm-up: model load and text encodes
        idle = [await solo.run(workflow(seed, args.steps)) for seed in range(args.idle_prompts)]
        figures["idle_q2s"] = [e["execution_start"] - e["sent"] for e in idle]
        figures["idle_e2e"] = [e["done"] - e["sent"] for e in idle]
        figures["idle_run"] = [e["execution_success"] - e["execution_start"] for e in idle]
        figures["idle_finish"] = [e["done"] - e["execution_success"] for e in idle]
        figures["queue_idle"] = await get_queue_latencies(session, url, args.queue_requests)
        # the baseline runs here, while the server sits idle, so that both see the same machine load
        figures["baseline"] = in_process_baseline(args.base, list(range(args.idle_prompts)), args.steps)

        clients = [Client(session, url) for _ in range(args.clients)]
        await asyncio.gather(*(c.connect() for c in clients))
        per_client = args.prompts // args.clients
        start = time.perf_counter()

        async def drive(index: int, client: Client) -> list[dict[str, float]]:
            base_seed = 1000 + index * per_client
            return [await client.run(workflow(base_seed + i, args.steps)) for i in range(per_client)]

        runs = [e for batch in await asyncio.gather(*(drive(i, c) for i, c in enumerate(clients))) for e in batch]
        elapsed = time.perf_counter() - start
        figures["count"] = len(runs)
        figures["throughput"] = len(runs) / elapsed
        figures["busy_q2s"] = [e["execution_start"] - e["sent"] for e in runs]
        spans = sorted((e["execution_start"], e["done"]) for e in runs)
        figures["gaps"] = [max(0.0, nxt[0] - prev[1]) for prev, nxt in zip(spans, spans[1:])]
        await asyncio.gather(*(c.close() for c in clients))

        long_id = await solo.queue(workflow(7, args.long_steps))
        while "progress" not in solo.events[long_id]:
            await asyncio.sleep(0.01)
        figures["queue_busy"] = await get_queue_latencies(session, url, args.queue_requests)
        still_running = "done" not in solo.events[long_id]
        async with session.post(f"{url}/interrupt", json={}) as resp:
            await resp.read()
        await asyncio.wait_for(solo.done[long_id].wait(), 120)
        figures["long_still_running"] = still_running
        await solo.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="sampling steps of each throughput prompt")
    parser.add_argument("--idle-prompts", type=int, default=20)
    parser.add_argument("--queue-requests", type=int, default=200)
    parser.add_argument("--long-steps", type=int, default=5000, help="steps of the long run (interrupted)")
    args = parser.parse_args()
    quiet_threads()

    base = args.base = make_base_dir("lg-bench-server-")
    try:
        proc, url = start_server(base)
        try:
            figures = asyncio.run(measure(url, args))
        finally:
            stop_server(proc)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    baseline = figures["baseline"]

    q2s, e2e = figures["idle_q2s"], figures["idle_e2e"]
    overhead = median(e2e) - median(baseline)
    print(f"server on {url}; tiny txt2img, 64x64, {args.steps} steps, a new seed per prompt")
    print("idle server, one client, prompts one after another:")
    print(f"  queue-to-start                 {ms(q2s)}   p99 {percentile(q2s, 99) * 1e3:.2f} ms")
    print(f"  end-to-end per prompt          {ms(e2e)}")
    print(f"    of which execution_start -> execution_success {ms(figures['idle_run'])}")
    print(f"    of which execution_success -> final executing {ms(figures['idle_finish'])}   (history written)")
    print(f"  in-process Executor.run        {ms(baseline)}")
    print(f"  server overhead per prompt     {overhead * 1e3:9.2f} ms   ratio {median(e2e) / median(baseline):.3f}x")
    busy = figures["busy_q2s"]
    print(f"{args.clients} concurrent clients, {figures['count']} prompts:")
    print(f"  throughput                     {figures['throughput']:9.2f} prompts/s   "
          f"(in-process: {1 / median(baseline):.2f} prompts/s)")
    print(f"  queue-to-start p50 / p99       {percentile(busy, 50) * 1e3:9.2f} / {percentile(busy, 99) * 1e3:.2f} ms "
          f"(includes waiting behind up to {args.clients - 1} prompts)")
    gaps = figures["gaps"]
    print(f"  worker idle gap between prompts {ms(gaps)}")
    quiet, loaded = figures["queue_idle"], figures["queue_busy"]
    print(f"GET /queue, {len(quiet)} sequential requests:")
    print(f"  idle server      p50 {percentile(quiet, 50) * 1e3:7.2f} ms   p99 {percentile(quiet, 99) * 1e3:7.2f} ms")
    print(f"  while sampling   p50 {percentile(loaded, 50) * 1e3:7.2f} ms   p99 {percentile(loaded, 99) * 1e3:7.2f} ms"
          f"   ({percentile(loaded, 50) / percentile(quiet, 50):.2f}x idle p50)"
          + ("" if figures["long_still_running"] else "   WARNING: the long run ended before the requests did"))
    report("server prompts/s (8 clients)", figures["throughput"], "prompts/s",
           note=f"in-process {1 / median(baseline):.2f}/s")
    report("server queue-to-start p50 (idle)", percentile(q2s, 50) * 1e3, "ms",
           note=f"p99 {percentile(q2s, 99) * 1e3:.1f}")
    report("server overhead per prompt", overhead * 1e3, "ms",
           note=f"e2e/in-process {median(e2e) / median(baseline):.3f}x")
    report("GET /queue p50 while sampling", percentile(loaded, 50) * 1e3, "ms",
           note=f"p99 {percentile(loaded, 99) * 1e3:.1f}; idle p50 {percentile(quiet, 50) * 1e3:.1f}")


if __name__ == "__main__":
    sys.exit(main())
