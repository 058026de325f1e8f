"""`serve --ray` on a local Ray cluster, CPU only, with the bundled tiny checkpoint: two workers as Ray actors.

Events of a prompt reach only the client that queued it, in ComfyUI's order; prompts alternating between two
checkpoints load each checkpoint once, on one worker; /interrupt reaches the actor; a worker killed with SIGKILL
mid-sampling has its prompt run again on the other worker, and a prompt whose worker is lost twice is failed
with the reason, every prompt in history once and the workers restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import networkx as nx
import pytest
from latentgraph.server.options import RayOptions

from tests.server.helpers import ThreadedServer, finished, options_for, receive_until, write_input_image
from tests.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
DEMO = "latentgraph-demo.safetensors"
COPY = "second-demo.safetensors"


def txt2img(steps: int, seed: int, ckpt: str = DEMO, prefix: str = "ray") -> dict[str, Any]:
    prompt = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    prompt["3"]["inputs"].update(steps=steps, seed=seed)
    prompt["4"]["inputs"]["ckpt_name"] = ckpt
    prompt["5"]["inputs"].update(width=64, height=64)
    prompt["9"]["inputs"]["filename_prefix"] = prefix
    return prompt


@pytest.fixture(scope="module")
def server(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    """A real server with 2 Ray workers of 1 thread each; a second checkpoint file is a copy of the bundled one
    under another name (the model manager tells files apart by path)."""
    base = tmp_path_factory.mktemp("ray-server")
    write_input_image(base)
    checkpoints = base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copyfile(ROOT / "nodes" / "sd" / "assets" / "checkpoints" / DEMO, checkpoints / COPY)
    options = options_for(base, preview_interval_s=0.0,
                          ray=RayOptions(workers=2, threads_per_worker=1, hang_timeout_s=120.0))
    with ThreadedServer(options) as running:

        def ready() -> bool:
            view = get(running, "/workers")
            assert view["error"] is None, view["error"]
            return view["ready"]

        wait_until(ready, 240, "the Ray workers to start", interval=0.5)  # other processes: no event to wait on
        yield running


def get(server: ThreadedServer, path: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(server.url + path, timeout=30) as answer:
        return json.loads(answer.read())


async def queue(session: aiohttp.ClientSession, server: ThreadedServer, prompt: dict[str, Any],
                client_id: str) -> str:
    async with session.post(server.url + "/prompt", json={"prompt": prompt, "client_id": client_id}) as answer:
        assert answer.status == 200, await answer.text()
        return (await answer.json())["prompt_id"]


async def socket(session: aiohttp.ClientSession, server: ThreadedServer, client_id: str,
                 previews: bool = False) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(f"{server.url}/ws?clientId={client_id}")
    await ws.receive_json()  # status
    if previews:
        await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    return ws


async def worker_running(server: ThreadedServer, prompt_id: str, min_step: int, not_pid: int | None = None,
                         timeout: float = 120.0) -> dict[str, Any]:
    """The /workers entry of the worker running `prompt_id` once it has sampled `min_step` steps (polled: the
    WebSocket's progress does not say which worker process runs the prompt)."""
    async def entry() -> dict[str, Any] | None:
        for worker in (await asyncio.to_thread(get, server, "/workers"))["workers"]:
            progress = worker["progress"] or {}
            if worker["current_prompt"] == prompt_id and worker["pid"] != not_pid and \
                    progress.get("prompt_id") == prompt_id and progress.get("value", 0) >= min_step:
                return worker
        return None

    return await wait_until_async(entry, timeout, f"a worker to reach step {min_step} of {prompt_id}")


def of_prompt(messages: list[Any], prompt_id: str) -> list[dict[str, Any]]:
    return [m for m in messages if isinstance(m, dict) and isinstance(m.get("data"), dict)
            and m["data"].get("prompt_id") == prompt_id and m["type"] != "latentgraph.node_reason"]


async def test_events_reach_only_the_queuing_client_in_comfyui_order(server: ThreadedServer) -> None:
    prompt = txt2img(steps=3, seed=11)
    async with aiohttp.ClientSession() as session:
        alice = await socket(session, server, "alice", previews=True)
        bob = await socket(session, server, "bob", previews=True)
        prompt_id = await queue(session, server, prompt, "alice")
        messages = await receive_until(alice, finished({prompt_id}), timeout=180)
        await asyncio.sleep(0.5)  # anything misrouted to bob has arrived by now
        overheard = []
        while True:
            try:
                message = await bob.receive(timeout=0.2)
            except TimeoutError:
                break
            overheard.append(message.json() if message.type.name == "TEXT" else message.data)
        await alice.close()
        await bob.close()

    assert overheard and all(isinstance(m, dict) and m["type"] in ("status", "feature_flags")
                             for m in overheard), "the other client hears queue status (and its own flags) only"
    events = of_prompt(messages, prompt_id)
    kinds = [m["type"] for m in events]
    assert kinds[:2] == ["execution_start", "execution_cached"]
    assert kinds[-2:] == ["execution_success", "executing"] and events[-1]["data"]["node"] is None
    running = [m["data"]["node"] for m in events[2:-2] if m["type"] == "executing"]
    graph = nx.DiGraph()
    graph.add_nodes_from(prompt)
    for node_id, node in prompt.items():
        for value in node["inputs"].values():
            if isinstance(value, list):
                graph.add_edge(value[0], node_id)
    needed = nx.ancestors(graph, "9") | {"9"}  # what the output needs; the WorkflowInfo nodes are annotations
    assert sorted(running) == sorted(needed) and all(  # a fresh worker runs every needed node, parents first
        running.index(a) < running.index(b) for a, b in graph.subgraph(needed).edges)
    current = None
    steps = []
    for event in events[2:-2]:
        if event["type"] == "executing":
            current = event["data"]["node"]
        elif event["type"] in ("progress", "executed"):
            assert event["data"]["node"] == current, "progress and results belong to the node executing"
            if event["type"] == "progress":
                steps.append((current, event["data"]["value"]))
    assert [s for n, s in steps if n == "3"] == [1, 2, 3]
    assert [e["data"]["node"] for e in events if e["type"] == "executed"] == ["9"]
    frames = [m for m in messages if isinstance(m, bytes)]
    assert frames, "previews from the actor reach the client"
    kind, length = struct.unpack(">II", frames[0][:8])
    assert kind == 4 and json.loads(frames[0][8:8 + length])["prompt_id"] == prompt_id
    history = get(server, f"/history/{prompt_id}")[prompt_id]
    assert history["status"]["status_str"] == "success"
    assert (Path(server.options.base_dir) / "output" / history["outputs"]["9"]["images"][0]["filename"]).is_file()


async def test_two_checkpoints_alternating_are_each_loaded_once_on_one_worker(server: ThreadedServer) -> None:
    async with aiohttp.ClientSession() as session:
        # both workers start empty, whatever earlier tests left: each freed worker reports back to /workers
        async with session.post(server.url + "/free", json={"unload_models": True, "free_memory": True}) as answer:
            assert answer.status == 200
        await wait_until_async(lambda: not any(worker["models"] or worker["cache_entries"]
                                               for worker in get(server, "/workers")["workers"]),
                               60, "both workers to report empty after /free", interval=0.1)
        ws = await socket(session, server, "affinity")
        ids = [await queue(session, server, txt2img(steps=2, seed=100 + i, ckpt=(DEMO, COPY)[i % 2]), "affinity")
               for i in range(8)]
        await receive_until(ws, finished(set(ids)), timeout=300)
        await ws.close()
    history = get(server, "/history")
    assert all(history[i]["status"]["status_str"] == "success" for i in ids)
    loads = [(history[i]["prompt"][2]["4"]["inputs"]["ckpt_name"]) for i in ids
             if history[i]["latentgraph"]["nodes"]["4"]["status"] == "ran"]
    assert sorted(loads) == sorted([DEMO, COPY]), f"each checkpoint loaded once in all: {loads}"
    held = [{Path(model).name for model in worker["models"]} for worker in get(server, "/workers")["workers"]]
    assert sorted(held, key=sorted) == [{COPY}, {DEMO}] or sorted(held, key=sorted) == [{DEMO}, {COPY}], held


async def test_interrupt_reaches_the_actor(server: ThreadedServer) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await socket(session, server, "stopper")
        prompt_id = await queue(session, server, txt2img(steps=2000, seed=7), "stopper")
        worker = await worker_running(server, prompt_id, min_step=2)
        async with session.post(server.url + "/interrupt", json={"prompt_id": prompt_id}) as answer:
            assert answer.status == 200
        messages = await receive_until(ws, finished({prompt_id}), timeout=120)
        await ws.close()
    interrupted = [m["data"] for m in of_prompt(messages, prompt_id) if m["type"] == "execution_interrupted"]
    assert [(m["node_type"]) for m in interrupted] == ["KSampler"]
    last_step = max(m["data"]["value"] for m in of_prompt(messages, prompt_id) if m["type"] == "progress")
    assert last_step < 2000
    assert get(server, f"/history/{prompt_id}")[prompt_id]["status"]["status_str"] == "error"
    again = {w["id"]: w for w in get(server, "/workers")["workers"]}[worker["id"]]
    assert again["pid"] == worker["pid"] and again["restarts"] == 0, "an interrupt kills nothing"


async def test_sigkill_mid_sampling_reruns_once_then_fails_with_the_reason(server: ThreadedServer) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await socket(session, server, "faults")
        survivor = await queue(session, server, txt2img(steps=200, seed=21), "faults")
        others = [await queue(session, server, txt2img(steps=2, seed=22 + i), "faults") for i in range(2)]
        first = await worker_running(server, survivor, min_step=2)
        os.kill(first["pid"], signal.SIGKILL)
        rerun = await worker_running(server, survivor, min_step=1, not_pid=first["pid"])
        assert rerun["id"] != first["id"], "the lost prompt runs again on the other worker"
        await receive_until(ws, finished({survivor, *others}), timeout=300)

        doomed = await queue(session, server, txt2img(steps=2000, seed=31), "faults")
        one = await worker_running(server, doomed, min_step=2)
        os.kill(one["pid"], signal.SIGKILL)
        two = await worker_running(server, doomed, min_step=1, not_pid=one["pid"])
        os.kill(two["pid"], signal.SIGKILL)
        await receive_until(ws, finished({doomed}), timeout=300)
        await ws.close()

    history = get(server, "/history")
    queued_here = {prompt_id for prompt_id, entry in history.items() if entry["prompt"][3].get("client_id") == "faults"}
    assert queued_here == {survivor, *others, doomed}, "every prompt is in history, none twice or lost"
    for prompt_id in (survivor, *others):
        assert history[prompt_id]["status"]["status_str"] == "success"
        kinds = [m[0] for m in history[prompt_id]["status"]["messages"]]
        assert kinds.count("execution_success") == 1 and "execution_error" not in kinds
    failed = history[doomed]["status"]
    assert failed["status_str"] == "error"
    reason = [m[1] for m in failed["messages"] if m[0] == "execution_error"]
    assert len(reason) == 1 and "run twice" in reason[0]["exception_message"]
    assert get(server, "/queue") == {"queue_running": [], "queue_pending": []}

    def all_alive() -> list[dict[str, Any]] | None:
        workers = get(server, "/workers")["workers"]
        return workers if all(workers[i]["alive"] for i in range(2)) else None

    workers = wait_until(all_alive, 120, "the killed workers to be alive again", interval=0.2)
    assert sum(w["restarts"] for w in workers) == 3, "every killed worker came back"
    pids = {w["pid"] for w in workers}
    assert not pids & {first["pid"], one["pid"], two["pid"]}
    async with aiohttp.ClientSession() as session:  # and they serve again
        ws = await socket(session, server, "after")
        again = await queue(session, server, txt2img(steps=2, seed=41), "after")
        await receive_until(ws, finished({again}), timeout=180)
        await ws.close()
    assert get(server, f"/history/{again}")[again]["status"]["status_str"] == "success"
