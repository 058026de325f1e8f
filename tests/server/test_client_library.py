"""Published ComfyUI clients against `latentgraph serve`, used as a new user would, without changes to them:
comfy-api-simplified (PyPI) queues the shipped txt2img workflow and gets the image back; plain HTTP (what curl
does) queues the same workflow and fetches the image through /view."""

from __future__ import annotations

import io
import json
import signal
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.server.test_persistence import ServerProcess
from tests.waiting import wait_until

comfy_api_simplified = pytest.importorskip("comfy_api_simplified")

ROOT = Path(__file__).resolve().parents[2]
TXT2IMG = ROOT / "workflows" / "txt2img.json"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`latentgraph serve` itself, as a subprocess on 127.0.0.1 with a free port."""
    base = tmp_path_factory.mktemp("serve")
    server = ServerProcess(base, "-m", "latentgraph.cli", "serve", "--base-dir", str(base), "--port", "0")
    yield server
    assert server.stop(signal.SIGTERM) == 0


def small(workflow: dict) -> None:
    """Fewer steps and pixels, so the test stays quick on a CPU; the graph is the shipped one."""
    workflow.set_node_param("KSampler", "steps", 2)
    workflow.set_node_param("Empty Latent Image", "width", 64)
    workflow.set_node_param("Empty Latent Image", "height", 64)


def test_comfy_api_simplified_gets_the_image(served):
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    api = ComfyApiWrapper(served.url)
    workflow = ComfyWorkflowWrapper(str(TXT2IMG))
    small(workflow)
    workflow.set_node_param("Save Image", "filename_prefix", "library")
    images = api.queue_and_wait_images(workflow, "Save Image")
    assert len(images) == 1
    name, data = next(iter(images.items()))
    assert name.startswith("library_")
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    assert api.get_queue() == {"queue_running": [], "queue_pending": []}
    assert "KSampler" in api.get_object_info("KSampler")


def test_plain_http_like_curl(served):
    from comfy_api_simplified import ComfyWorkflowWrapper

    workflow = ComfyWorkflowWrapper(str(TXT2IMG))
    small(workflow)
    request = urllib.request.Request(served.url + "/prompt", data=json.dumps({"prompt": workflow}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        prompt_id = json.loads(response.read())["prompt_id"]

    def ended() -> dict | None:
        entry = served.get(f"/history/{prompt_id}")[prompt_id]
        return entry if entry["status"]["completed"] or entry["status"]["status_str"] == "error" else None

    entry = wait_until(ended, 300, f"prompt {prompt_id} to end on the server process", interval=0.1)
    assert entry["status"]["status_str"] == "success", entry["status"]
    image = entry["outputs"]["9"]["images"][0]
    with urllib.request.urlopen(served.url + "/view?" + urllib.parse.urlencode(image), timeout=30) as response:
        assert Image.open(io.BytesIO(response.read())).size == (64, 64)


def test_comfy_api_simplified_with_a_token(tmp_path):
    """The library's user/password option sends HTTP Basic auth (also on the WebSocket); the token is the password."""
    from comfy_api_simplified import ComfyApiWrapper
    from comfy_api_simplified.exceptions import ComfyApiError

    from tests.server.helpers import ThreadedServer, image_prompt, options_for, write_input_image

    write_input_image(tmp_path)
    with ThreadedServer(options_for(tmp_path, full=False, token="library-token")) as server:
        with pytest.raises(ComfyApiError):
            ComfyApiWrapper(server.url).queue_prompt(image_prompt("denied"))
        api = ComfyApiWrapper(server.url, user="me", password="library-token")
        images = api.queue_and_wait_images(image_prompt("token"), "Save Image")
        assert [Image.open(io.BytesIO(data)).size for data in images.values()] == [(24, 12)]
