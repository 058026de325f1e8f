"""Measures the event loop's longest stall while a fresh server answers its first POST /prompt (issue 18, item 3).

Run in a fresh interpreter (nothing imported yet, as after `latentgraph serve`): python -m
tests.server.first_prompt_probe BASE_DIR WORKFLOW.json. Prints one JSON line: the warm-up time, the idle loop's
longest stall (the baseline), the longest stall while the first prompt was answered, and that answer's time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from latentgraph.server.options import ServerOptions
from latentgraph.server.state import STATE

from tests.server.helpers import ThreadedServer
from tests.server.test_hardening import http

TICK_S = 0.002


def main(base_dir: Path, workflow: Path) -> dict[str, float | int]:
    with ThreadedServer(ServerOptions(base_dir=base_dir)) as server:
        lags: list[float] = []

        async def monitor() -> None:
            while True:
                start = time.perf_counter()
                await asyncio.sleep(TICK_S)  # the probe: how late it wakes is the loop's stall
                lags.append(time.perf_counter() - start - TICK_S)

        assert server._loop is not None
        task = asyncio.run_coroutine_threadsafe(monitor(), server._loop)
        start = time.perf_counter()
        assert server.app[STATE].worker.warmed.wait(300), "the warm-up did not finish within 300 s"
        warm_up_s = time.perf_counter() - start
        lags.clear()
        time.sleep(1.0)  # the measuring window of the idle baseline, not a wait for anything
        idle = max(lags)
        lags.clear()
        start = time.perf_counter()
        status, _ = http(server.url, "POST", "/prompt",
                         json.dumps({"prompt": json.loads(workflow.read_text())}).encode())
        answer_s = time.perf_counter() - start
        during = max(lags)
        task.cancel()
    return {"warm_up_s": round(warm_up_s, 3), "idle_max_stall_ms": round(idle * 1000, 2),
            "first_prompt_max_stall_ms": round(during * 1000, 2), "first_prompt_answer_ms": round(answer_s * 1000, 1),
            "status": status}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))), flush=True)
