"""A queue that loses nothing: a server process killed with SIGKILL mid-run and started again finishes the
pending prompts, reports the killed one in history as failed with the reason, and keeps all history."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

from tests.server.helpers import slow_prompt
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240


class ServerProcess:
    def __init__(self, base_dir: Path, *command: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("LATENTGRAPH_TOKEN", None)
        args = list(command) or ["-m", "tests.server.server_process", str(base_dir)]
        self.process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.url = ""
        ready = threading.Event()

        def read() -> None:
            for line in self.process.stdout:
                self.lines.append(line)
                if "listening on " in line and not self.url:
                    self.url = line.split("listening on ")[1].split()[0]
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(START_TIMEOUT_S)
        assert self.url, "server did not start:\n" + "".join(self.lines)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(60)


def test_sigkill_mid_run_then_restart_loses_nothing(tmp_path):
    first = ServerProcess(tmp_path)
    try:
        ids = [first.post("/prompt", {"prompt": slow_prompt(steps=40, delay_ms=20, prefix=f"p{i}", value=i / 10)}
                          )["prompt_id"] for i in range(5)]
        wait_until(lambda: first.get("/queue")["queue_running"], 120, "the first prompt to run")
        running = first.get("/queue")["queue_running"][0][1]
        assert running == ids[0]
        wait_until(lambda: "progress" in first.get(f"/jobs/{running}"), 120, f"progress of {running}")
    finally:
        first.stop(signal.SIGKILL)

    second = ServerProcess(tmp_path)
    try:
        wait_until(lambda: second.get("/prompt")["exec_info"]["queue_remaining"] == 0, 120,
                   "the restarted server to finish the recovered queue")
        history = second.get("/history")
        assert set(history) == set(ids), "a prompt was lost"
        killed = history[ids[0]]["status"]
        assert killed["status_str"] == "error" and killed["completed"] is False
        error = dict(killed["messages"])["execution_error"]
        assert "killed or crashed" in error["exception_message"]
        for prompt_id in ids[1:]:
            assert history[prompt_id]["status"]["status_str"] == "success", prompt_id
            assert history[prompt_id]["outputs"]["2"]["images"]
        assert second.get(f"/jobs/{ids[0]}")["status"] == "failed"

        again = second.post("/prompt", {"prompt": history[ids[0]]["prompt"][2]})["prompt_id"]
        wait_until(lambda: second.get(f"/history/{again}")[again]["status"]["status_str"] == "success", 120,
                   f"the re-queued prompt {again} to succeed")
    finally:
        assert second.stop(signal.SIGTERM) == 0

    third = ServerProcess(tmp_path)
    try:
        assert len(third.get("/history")) == 6, "history survives a clean restart"
    finally:
        third.stop()
