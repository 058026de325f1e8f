"""What the door tests share: a real token-protected server with the bundled demo model, and plain HTTP calls."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from latentgraph.server.state import STATE
from PIL import Image

from tests.server.helpers import ThreadedServer, finished, options_for, write_input_image

TOKEN = "door-token"
ROOT = Path(__file__).resolve().parents[2]
TXT2IMG = ROOT / "workflows" / "txt2img.json"


def serve(base_dir: Path) -> Iterator[ThreadedServer]:
    """A real server on 127.0.0.1 with a token, once its start-up warm-up has finished (a request validating
    during the warm-up races it on diffusers' lazy import, a known problem outside the doors)."""
    write_input_image(base_dir)
    with ThreadedServer(options_for(base_dir, token=TOKEN, preview_interval_s=0.0)) as server:
        assert server.app[STATE].worker.warmed.wait(180)
        yield server


def call(server: ThreadedServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A JSON request with the token; (status, decoded answer)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def fetch(server: ThreadedServer, url: str) -> bytes:
    request = urllib.request.Request(url if url.startswith("http") else server.url + url,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return answer.read()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def b64_pixels(text: str) -> np.ndarray:
    return pixels(base64.b64decode(text))


def png(size: tuple[int, int], color: tuple[int, ...], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def history_entries(server: ThreadedServer) -> dict[str, Any]:
    status, history = call(server, "GET", "/history")
    assert status == 200
    return history


def reference_by_prompt(server: ThreadedServer, seed: int, steps: int, text: str, width: int = 64,
                        height: int = 64, edit: Any = None) -> np.ndarray:
    """The image of the shipped txt2img workflow edited by node id and queued on /prompt: the independent
    reference the doors' answers are compared with."""
    prompt = json.loads(TXT2IMG.read_text())
    prompt["3"]["inputs"].update(seed=seed, steps=steps)
    prompt["6"]["inputs"]["text"] = text
    prompt["5"]["inputs"].update(width=width, height=height)
    if edit is not None:
        edit(prompt)
    with server.socket("reference", headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        status, queued = call(server, "POST", "/prompt", {"prompt": prompt, "client_id": "reference"})
        assert status == 200, queued
        prompt_id = queued["prompt_id"]
        ws.receive_until(finished({prompt_id}), timeout=600)  # sent once its record is in history
    status, entry = call(server, "GET", f"/history/{prompt_id}")
    assert status == 200 and entry[prompt_id]["status"]["completed"], f"/prompt run {prompt_id} failed: {entry}"
    image = entry[prompt_id]["outputs"]["9"]["images"][0]
    query = "&".join(f"{k}={v}" for k, v in image.items())
    return pixels(fetch(server, f"/api/view?{query}"))
