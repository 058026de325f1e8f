"""POST /free empties what it says: the result cache (free_memory) and the loaded models (unload_models), checked
in the server's own executor after a real txt2img run on the bundled model, not by the status code alone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from latentgraph.nodes.sd.services import model_manager
from latentgraph.server.state import STATE

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "txt2img.json"


async def _until(predicate, timeout: float = 240.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_free_empties_the_cache_and_unloads_the_models(client) -> None:
    state = client.server.app[STATE]
    await asyncio.to_thread(state.worker.warmed.wait, 120)
    prompt = {k: v for k, v in json.loads(WORKFLOW.read_text()).items() if not v["class_type"].startswith("Workflow")}
    prompt["3"]["inputs"]["steps"] = 2
    answer = await (await client.post("/prompt", json={"prompt": prompt})).json()
    prompt_id = answer["prompt_id"]

    async def completed() -> bool:
        history = await (await client.get(f"/history/{prompt_id}")).json()
        return bool(history.get(prompt_id, {}).get("status", {}).get("completed"))

    deadline = asyncio.get_running_loop().time() + 240
    while not await completed():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    executor = state.executor
    models = model_manager(executor.env)
    assert len(executor.cache) > 0 and models.keys()

    assert (await client.post("/free", json={"free_memory": False, "unload_models": True})).status == 200
    await _until(lambda: not models.keys())
    assert len(executor.cache) > 0  # unloading models keeps the cached results

    assert (await client.post("/free", json={"free_memory": True})).status == 200
    # the worker thread clears between prompts; both figures are read once it has
    await _until(lambda: len(executor.cache) == 0 and executor.cache.bytes == 0)
    assert executor.cache.stats()["entries"] == 0
