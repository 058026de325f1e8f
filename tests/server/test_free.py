"""POST /free empties what it says: the result cache (free_memory) and the loaded models (unload_models), checked
in the server's own executor after a real txt2img run on the bundled model, not by the status code alone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from latentgraph.nodes.sd.services import model_manager
from latentgraph.server.state import STATE

from tests.server.helpers import finished, receive_until
from tests.waiting import wait_until_async

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "txt2img.json"


async def test_free_empties_the_cache_and_unloads_the_models(client) -> None:
    state = client.server.app[STATE]
    assert await asyncio.to_thread(state.worker.warmed.wait, 120), "the warm-up did not finish within 120 s"
    prompt = {k: v for k, v in json.loads(WORKFLOW.read_text()).items() if not v["class_type"].startswith("Workflow")}
    prompt["3"]["inputs"]["steps"] = 2
    ws = await client.ws_connect("/ws?clientId=free-test")
    answer = await (await client.post("/prompt", json={"prompt": prompt, "client_id": "free-test"})).json()
    prompt_id = answer["prompt_id"]
    await receive_until(ws, finished({prompt_id}), timeout=240)  # sent once its record is in history
    await ws.close()
    history = await (await client.get(f"/history/{prompt_id}")).json()
    assert history[prompt_id]["status"]["completed"], history[prompt_id]["status"]
    executor = state.executor
    models = model_manager(executor.env)
    assert len(executor.cache) > 0 and models.keys()

    assert (await client.post("/free", json={"free_memory": False, "unload_models": True})).status == 200
    # the worker thread frees between prompts and tells nobody: polled
    await wait_until_async(lambda: not models.keys(), 240, "the models to be unloaded")
    assert len(executor.cache) > 0  # unloading models keeps the cached results

    assert (await client.post("/free", json={"free_memory": True})).status == 200
    # the worker thread clears between prompts; both figures are read once it has
    await wait_until_async(lambda: len(executor.cache) == 0 and executor.cache.bytes == 0, 240,
                           "the result cache to be emptied")
    assert executor.cache.stats()["entries"] == 0
