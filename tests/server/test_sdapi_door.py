"""The AUTOMATIC1111 sdapi door against a real token-protected server on 127.0.0.1 with the bundled demo model:
request bodies shaped as SillyTavern, KoboldAI Lite and Open WebUI send them, answers in A1111's shape, A1111
sampler labels mapped onto declared inputs, and the same seed and inputs giving the same pixels through the
OpenAI door, this door and /prompt."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

from tests.server.door_helpers import (
    TOKEN,
    TXT2IMG,
    b64_pixels,
    call,
    history_entries,
    png,
    reference_by_prompt,
    serve,
)
from tests.server.helpers import ThreadedServer

STEPS = 2

# SillyTavern's Stable Diffusion extension, source "SD Web UI" (generateAutoImage / the server's proxy).
SILLYTAVERN = {
    "prompt": "a small green star", "negative_prompt": "lowres, bad anatomy", "sampler_name": "Euler",
    "scheduler": "Automatic", "steps": STEPS, "cfg_scale": 7, "width": 64, "height": 64, "restore_faces": False,
    "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2.0, "hr_additional_modules": [],
    "denoising_strength": 0.7, "hr_second_pass_steps": 0, "seed": 1234, "clip_skip": 1,
    "override_settings": {"CLIP_stop_at_last_layers": 1}, "override_settings_restore_afterwards": True,
    "save_images": True, "send_images": True, "do_not_save_grid": False, "do_not_save_samples": False,
}
# KoboldAI Lite's "A1111 / Forge" image generation.
KOBOLD = {"prompt": "a blue square", "negative_prompt": "", "sampler_name": "Euler a", "batch_size": 2, "n_iter": 1,
          "steps": STEPS, "cfg_scale": 7, "width": 64, "height": 64, "restore_faces": False, "seed": 77,
          "override_settings": {"sd_vae": "Automatic"}, "override_settings_restore_afterwards": True}
# Open WebUI's AUTOMATIC1111 engine.
OPEN_WEBUI = {"prompt": "a red circle", "batch_size": 1, "width": 64, "height": 64, "steps": STEPS,
              "cfg_scale": 7.0, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "negative_prompt": ""}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    yield from serve(Path(tmp_path_factory.mktemp("sdapi_door")))


def runs_since(server: ThreadedServer, before: set[str]) -> list[dict]:
    return sorted((e for k, e in history_entries(server).items() if k not in before),
                  key=lambda e: e["prompt"][2]["3"]["inputs"]["seed"])


def test_sillytavern_txt2img_answers_in_a1111_shape(server) -> None:
    before = set(history_entries(server))
    status, answer = call(server, "POST", "/sdapi/v1/txt2img", SILLYTAVERN)
    assert status == 200, answer
    assert set(answer) == {"images", "parameters", "info"}
    [image] = answer["images"]
    decoded = Image.open(io.BytesIO(base64.b64decode(image)))
    assert decoded.format == "PNG" and decoded.size == (64, 64)
    assert answer["parameters"] == SILLYTAVERN
    info = json.loads(answer["info"])
    assert info["seed"] == 1234 and info["all_seeds"] == [1234] and info["prompt"] == SILLYTAVERN["prompt"]
    assert info["workflow"].startswith("txt2img@")
    # txt2img declares cfg, sampler and scheduler inputs; it has no denoise input, so that field is reported, not
    # silently dropped
    assert "denoising_strength" in info["ignored_parameters"]
    assert not {"cfg_scale", "sampler_name", "scheduler"} & set(info["ignored_parameters"])
    [run] = runs_since(server, before)
    bound = run["prompt"][2]
    assert bound["3"]["inputs"]["seed"] == 1234 and bound["3"]["inputs"]["steps"] == STEPS
    assert bound["7"]["inputs"]["text"] == "lowres, bad anatomy" and run["prompt"][3]["workflow_run"]["door"] == "sdapi"


def test_kobold_batch_gives_one_image_per_seed(server) -> None:
    before = set(history_entries(server))
    status, answer = call(server, "POST", "/sdapi/v1/txt2img", KOBOLD)
    assert status == 200, answer
    assert len(answer["images"]) == 2 and json.loads(answer["info"])["all_seeds"] == [77, 78]
    assert not np.array_equal(*(b64_pixels(i) for i in answer["images"]))
    assert [r["prompt"][2]["3"]["inputs"]["seed"] for r in runs_since(server, before)] == [77, 78]


def test_the_same_seed_through_every_door_and_prompt_gives_the_same_pixels(server) -> None:
    text, seed = "a large red circle on a blue background", 21
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, max_retries=0, timeout=600)
    by_openai = b64_pixels(client.images.generate(model="txt2img", prompt=text, size="64x64",
                                                  extra_body={"seed": seed, "steps": STEPS}).data[0].b64_json or "")
    status, answer = call(server, "POST", "/sdapi/v1/txt2img", {"prompt": text, "seed": seed, "steps": STEPS,
                                                                 "width": 64, "height": 64})
    assert status == 200, answer
    by_sdapi = b64_pixels(answer["images"][0])
    by_prompt = reference_by_prompt(server, seed, STEPS, text)
    assert np.array_equal(by_openai, by_prompt) and np.array_equal(by_sdapi, by_prompt)
    other = reference_by_prompt(server, seed + 1, STEPS, text)
    assert not np.array_equal(other, by_prompt)


def test_a1111_sampler_labels_run_the_comfy_sampler_and_scheduler(server) -> None:
    before = set(history_entries(server))
    payload = {**OPEN_WEBUI, "sampler_name": "DPM++ 2M Karras", "scheduler": None, "seed": 9, "cfg_scale": 5.0}
    status, answer = call(server, "POST", "/sdapi/v1/txt2img", payload)
    assert status == 200, answer
    [run] = runs_since(server, before)
    sampler = run["prompt"][2]["3"]["inputs"]
    assert (sampler["sampler_name"], sampler["scheduler"], sampler["cfg"]) == ("dpmpp_2m", "karras", 5.0)
    assert run["prompt"][3]["workflow_run"]["name"] == "txt2img"
    assert "sampler_name" not in json.loads(answer["info"])["ignored_parameters"]

    def dpmpp_karras(prompt: dict) -> None:
        prompt["3"]["inputs"].update(sampler_name="dpmpp_2m", scheduler="karras", cfg=5.0)

    reference = reference_by_prompt(server, 9, STEPS, OPEN_WEBUI["prompt"], edit=dpmpp_karras)
    assert np.array_equal(b64_pixels(answer["images"][0]), reference)
    assert not np.array_equal(reference, reference_by_prompt(server, 9, STEPS, OPEN_WEBUI["prompt"]))  # euler
    # Open WebUI's separate scheduler field gives the same pair
    status, split = call(server, "POST", "/sdapi/v1/txt2img", {**OPEN_WEBUI, "seed": 9, "cfg_scale": 5.0})
    assert status == 200 and np.array_equal(b64_pixels(split["images"][0]), reference)
    status, refused = call(server, "POST", "/sdapi/v1/txt2img", {**OPEN_WEBUI, "sampler_name": "Nope 3000"})
    assert status == 422 and "Nope 3000" in refused["detail"]


def test_a_lora_tag_in_the_prompt_runs_the_lora_workflow_with_that_weight(server) -> None:
    before = set(history_entries(server))
    body = {"prompt": "a cyan star <lora:latentgraph-demo-style:0.6>", "seed": 4, "steps": STEPS, "width": 64,
            "height": 64}
    status, answer = call(server, "POST", "/sdapi/v1/txt2img", body)
    assert status == 200, answer
    [run] = runs_since(server, before)
    bound = run["prompt"][2]
    assert run["prompt"][3]["workflow_run"]["name"] == "lora" and bound["6"]["inputs"]["text"] == "a cyan star"
    assert bound["10"]["inputs"] == {**bound["10"]["inputs"], "lora_name": "latentgraph-demo-style.safetensors",
                                     "strength_model": 0.6, "strength_clip": 0.6}
    lora = json.loads((TXT2IMG.parent / "lora.json").read_text())

    def as_lora(prompt: dict) -> None:  # the lora workflow, edited by node id
        prompt.clear()
        prompt.update(lora)
        prompt["3"]["inputs"].update(seed=4, steps=STEPS)
        prompt["6"]["inputs"]["text"] = "a cyan star"
        prompt["10"]["inputs"].update(strength_model=0.6, strength_clip=0.6)

    reference = reference_by_prompt(server, 4, STEPS, "", edit=as_lora)
    assert np.array_equal(b64_pixels(answer["images"][0]), reference)
    status, refused = call(server, "POST", "/sdapi/v1/txt2img", {**body, "prompt": "x <lora:nope:1>"})
    assert status == 422 and "nope" in refused["detail"]


def test_img2img_with_denoise_and_with_a_mask(server) -> None:
    before = set(history_entries(server))
    init = base64.b64encode(png((32, 32), (30, 200, 30))).decode()
    body = {"init_images": [init], "prompt": "a green field", "seed": 5, "steps": STEPS, "denoising_strength": 0.5,
            "sampler_name": "Euler", "cfg_scale": 7, "width": 32, "height": 32}
    status, answer = call(server, "POST", "/sdapi/v1/img2img", body)
    assert status == 200, answer
    assert answer["parameters"]["init_images"] is None  # A1111 leaves the input images out of the echo
    mask = base64.b64encode(png((32, 32), (255, 255, 255))).decode()  # white: repaint everything
    status, masked = call(server, "POST", "/sdapi/v1/img2img", {**body, "mask": "data:image/png;base64," + mask})
    assert status == 200, masked
    runs = runs_since(server, before)
    assert sorted(r["prompt"][3]["workflow_run"]["name"] for r in runs) == ["img2img", "inpaint"]
    img2img = next(r for r in runs if r["prompt"][3]["workflow_run"]["name"] == "img2img")
    assert img2img["prompt"][2]["3"]["inputs"]["denoise"] == 0.5
    status, refused = call(server, "POST", "/sdapi/v1/img2img", {"prompt": "x"})
    assert status == 422


def test_listing_options_and_control_routes(server) -> None:
    status, models = call(server, "GET", "/sdapi/v1/sd-models")
    assert status == 200 and [m["title"] for m in models] == ["latentgraph-demo.safetensors"]
    samplers = {s["name"]: s["aliases"] for s in call(server, "GET", "/sdapi/v1/samplers")[1]}
    assert samplers["DPM++ 2M"] == ["dpmpp_2m"] and samplers["Euler a"] == ["euler_ancestral"]
    assert "karras" in {s["name"] for s in call(server, "GET", "/sdapi/v1/schedulers")[1]}
    assert call(server, "GET", "/sdapi/v1/loras")[1][0]["name"] == "latentgraph-demo-style"
    assert call(server, "GET", "/sdapi/v1/embeddings")[1] == {"loaded": {}, "skipped": {}}
    assert call(server, "GET", "/sdapi/v1/upscalers")[0] == 200
    assert call(server, "GET", "/sdapi/v1/options")[1]["sd_model_checkpoint"] == "latentgraph-demo.safetensors"
    assert call(server, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "latentgraph-demo"}) == (200, None)
    assert call(server, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "missing.ckpt"})[0] == 422
    status, progress = call(server, "GET", "/sdapi/v1/progress")
    assert status == 200 and progress["progress"] == 0.0 and "sampling_steps" in progress["state"]
    assert call(server, "POST", "/sdapi/v1/interrupt") == (200, None)


def test_the_doors_are_in_openapi_with_their_request_models(server) -> None:
    status, spec = call(server, "GET", "/openapi.json")
    assert status == 200
    body = spec["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ImageGenerationRequest"}
    assert "seed" in spec["components"]["schemas"]["ImageGenerationRequest"]["properties"]
    assert "cfg_scale" in spec["components"]["schemas"]["Txt2ImgRequest"]["properties"]
    assert "multipart/form-data" in spec["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
