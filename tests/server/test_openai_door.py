"""The OpenAI Images door, driven by the real `openai` SDK against a real token-protected server on 127.0.0.1 with
the bundled demo model: images of the requested size, errors the SDK raises as its own exceptions, and runs that
are ordinary queue entries (in /history and /jobs)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

from tests.server.door_helpers import TOKEN, b64_pixels, call, fetch, history_entries, pixels, png, serve
from tests.server.helpers import ThreadedServer

STEPS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    yield from serve(Path(tmp_path_factory.mktemp("openai_door")))


@pytest.fixture
def client(server: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, max_retries=0, timeout=600)


def test_generate_gives_n_images_of_the_requested_size_as_queue_runs(server, client) -> None:
    before = set(history_entries(server))
    answer = client.images.generate(model="dall-e-3", prompt="a small green star", size="48x64", n=2,
                                    extra_body={"seed": 11, "steps": STEPS})
    assert len(answer.data) == 2
    first, second = (Image.open(io.BytesIO(base64.b64decode(d.b64_json or ""))) for d in answer.data)
    assert first.size == second.size == (48, 64)  # width x height, not swapped
    assert not np.array_equal(np.asarray(first), np.asarray(second))  # seeds 11 and 12
    runs = {k: v for k, v in history_entries(server).items() if k not in before}
    assert len(runs) == 2
    queued = sorted(entry["prompt"][2]["3"]["inputs"]["seed"] for entry in runs.values())
    assert queued == [11, 12]
    for run_id, entry in runs.items():
        extra = entry["prompt"][3]["workflow_run"]
        assert extra["name"] == "txt2img" and extra["door"] == "openai"
        assert entry["prompt"][2]["6"]["inputs"]["text"] == "a small green star"
        status, job = call(server, "GET", f"/jobs/{run_id}")
        assert status == 200 and job["status"] == "completed"


def test_url_answers_point_at_the_same_image(server, client) -> None:
    values = {"model": "txt2img", "prompt": "a blue square", "size": "64x64", "extra_body": {"seed": 5, "steps": 1}}
    by_url = client.images.generate(response_format="url", **values).data[0].url
    assert by_url is not None and by_url.startswith(server.url + "/api/view?")
    inline = client.images.generate(response_format="b64_json", **values).data[0].b64_json
    assert np.array_equal(pixels(fetch(server, by_url)), b64_pixels(inline or ""))


@pytest.mark.parametrize("size", ["big", "64x", "10x10", "64x70000"])
def test_a_bad_size_is_an_openai_shaped_400_and_queues_nothing(server, client, size: str) -> None:
    before = set(history_entries(server))
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(prompt="x", size=size, extra_body={"steps": 1})  # type: ignore[arg-type]
    error = raised.value.body
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == "size"
    assert set(history_entries(server)) == before
    assert call(server, "GET", "/queue")[1]["queue_pending"] == []


def test_other_refusals_are_the_sdk_s_exceptions(server, client) -> None:
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="no-such-workflow", prompt="x")
    with pytest.raises(openai.BadRequestError) as raised:  # inpaint has no width/height inputs: refused, not dropped
        client.images.generate(model="inpaint", prompt="x", size="64x64")
    assert raised.value.body["param"] == "size"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(prompt="x", n=0)
    assert raised.value.body["param"] == "n"  # type: ignore[index]
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="not-the-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.images.generate(prompt="x")


def test_models_lists_usable_workflows_and_aliases(client) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"txt2img", "img2img", "inpaint", "dall-e-3", "gpt-image-1"} <= ids


def test_edit_returns_the_requested_size_and_a_mask_picks_the_inpaint_workflow(server, client) -> None:
    before = set(history_entries(server))
    photo = png((32, 32), (200, 30, 30))
    edited = client.images.edit(image=("photo.png", photo, "image/png"), prompt="a red square", size="64x64",
                                extra_body={"seed": 3, "steps": STEPS})
    assert Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json or ""))).size == (64, 64)
    mask = png((32, 32), (0, 0, 0, 0), "RGBA")  # fully transparent: change everything
    masked = client.images.edit(image=("photo.png", photo, "image/png"), mask=("mask.png", mask, "image/png"),
                                prompt="a red square", extra_body={"seed": 3, "steps": STEPS})
    assert Image.open(io.BytesIO(base64.b64decode(masked.data[0].b64_json or ""))).size == (32, 32)
    runs = [e for k, e in history_entries(server).items() if k not in before]
    assert sorted(e["prompt"][3]["workflow_run"]["name"] for e in runs) == ["img2img", "inpaint"]
    assert all(e["prompt"][2]["3"]["inputs"]["seed"] == 3 and e["prompt"][2]["3"]["inputs"]["steps"] == STEPS
               for e in runs)  # the extension fields arrive through multipart too
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.edit(image=("photo.png", b"not an image", "image/png"), prompt="x")
    assert raised.value.body["param"] == "image"  # type: ignore[index]
