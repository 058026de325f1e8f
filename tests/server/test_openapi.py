"""/openapi.json is generated from the routes' declared pydantic models: valid OpenAPI 3.1, every served route in
it and nothing else, and real answers match the models they declare."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from latentgraph.server.api_models import ErrorBody
from latentgraph.server.app import create_app
from latentgraph.server.openapi import PATH_PARAM, api_path, build_spec
from latentgraph.server.operations import operation_of
from latentgraph.server.routes_static import frontend_dir
from openapi_spec_validator import validate as validate_openapi
from pydantic import TypeAdapter

from tests.server.helpers import finished, image_prompt, options_for, receive_until

# Served, but not part of the HTTP API (each for the reason given): everything else must be in the spec.
NOT_API = {
    "/": "the editor's page",
    "/user.css": "the editor's user stylesheet",
    "/latentgraph/default-workflow.js": "an editor extension script",
    "/latentgraph/insight.js": "an editor extension script",
    "/ws": "the WebSocket, described in info.description",
    "/templates/{name}": "the editor's template browser files",
}
NOT_API_PREFIXES = ("/internal/",)  # the editor's internal routes, as in ComfyUI (not mirrored under /api)
EDITOR_FILES = {f"/{entry.name}" for entry in (frontend_dir() or Path("/nonexistent")).glob("*") if entry.is_file()}


def _served(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every API route the app answers, /api mirrors folded together."""
    served = set()
    for route in app.router.routes():
        path = api_path(route)
        if path is None or route.method == "HEAD" or path in NOT_API or path in EDITOR_FILES \
                or path.startswith(NOT_API_PREFIXES):
            continue  # None: the editor's static folders
        served.add((route.method.lower(), path))
    return served


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + PATH_PARAM.sub("[^/]+", re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))
                      + "$")


def _covered(method: str, path: str, pairs: set[tuple[str, str]]) -> bool:
    """`path` is in `pairs` as written, or is an instance of one of its templates, or the reverse (a workflow's
    own run path in the spec instantiates the served template `/workflows/{name}/runs`)."""
    return any(m == method and (p == path or _template_regex(p).match(path) or _template_regex(path).match(p))
               for m, p in pairs)


@pytest.fixture
async def spec(client) -> dict[str, Any]:
    answer = await client.get("/api/openapi.json")
    assert answer.status == 200
    return await answer.json()


async def test_the_spec_is_valid_openapi_3_1_with_prefix_items_for_tuples(client, spec: dict[str, Any]) -> None:
    validate_openapi(build_spec(client.server.app))  # the routes' own part, then the whole served document
    validate_openapi(spec)
    assert spec["openapi"] == "3.1.0"
    queue_item = spec["components"]["schemas"]["QueueListing"]["properties"]["queue_running"]["items"]
    assert [s.get("type") for s in queue_item["prefixItems"]] == ["number", "string", "object", "object", "array"]
    assert '"items": [' not in str(spec).replace("'", '"')  # no draft-4 style item tuples anywhere


async def test_every_served_route_is_in_the_spec_and_every_spec_operation_is_served(client, spec) -> None:
    served = _served(client.server.app)
    documented = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert {("post", "/prompt"), ("get", "/userdata/{file}"), ("get", "/settings")} <= served  # the check sees routes
    missing = sorted(pair for pair in served if not _covered(*pair, documented))
    assert not missing, f"served but not in /openapi.json (add an @operation): {missing}"
    unserved = sorted(pair for pair in documented if not _covered(*pair, served))
    assert not unserved, f"in /openapi.json but not served: {unserved}"
    raw = {(r.method.lower(), r.resource.canonical) for r in client.server.app.router.routes() if r.resource}
    not_mirrored = sorted((method, path) for method, path in documented
                          if not (_covered(method, path, raw) and _covered(method, "/api" + path, raw)))
    assert not not_mirrored, f"documented but not served at both / and /api: {not_mirrored}"


def test_an_undeclared_route_is_left_out_so_the_coverage_check_catches_it(base_dir: Path) -> None:
    app = create_app(options_for(base_dir))

    async def undeclared(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/undeclared", undeclared)
    served, spec = _served(app), build_spec(app)
    assert ("get", "/undeclared") in served and "/undeclared" not in spec["paths"]


def _declared(app: web.Application, method: str, path: str) -> Any:
    for route in app.router.routes():
        if route.method == method and api_path(route) == path and operation_of(route.handler) is not None:
            return operation_of(route.handler)
    raise AssertionError(f"no declared operation for {method} {path}")


async def test_real_answers_match_their_declared_response_models(client, base_dir: Path) -> None:
    """Each answer is validated with the very model /openapi.json was generated from."""
    app = client.server.app
    ws = await client.ws_connect("/ws?clientId=spec-test")
    queued = await client.post("/prompt", json={"prompt": image_prompt(), "client_id": "spec-test"})
    prompt_id = (await queued.json())["prompt_id"]
    await receive_until(ws, finished({prompt_id}))  # history and jobs have a finished entry from here on
    await ws.close()
    (base_dir / "user").mkdir(exist_ok=True)
    assert (await client.post("/userdata/a.json?full_info=true", data=b"{}")).status == 200
    checks = [("POST", "/prompt", queued), ("GET", "/prompt", None), ("GET", "/queue", None),
              ("GET", "/history", None), ("GET", "/history/{prompt_id}", f"/history/{prompt_id}"),
              ("GET", "/jobs", None), ("GET", "/jobs/{job_id}", f"/jobs/{prompt_id}"),
              ("GET", "/object_info", None), ("GET", "/object_info/{node_class}", "/object_info/SaveImage"),
              ("GET", "/system_stats", None), ("GET", "/embeddings", None), ("GET", "/extensions", None),
              ("GET", "/features", None), ("GET", "/models", None), ("GET", "/models/{folder}", "/models/loras"),
              ("GET", "/experiment/models", None), ("GET", "/experiment/models/{folder}", "/experiment/models/loras"),
              ("GET", "/users", None), ("GET", "/userdata", "/userdata?full_info=true"),
              ("GET", "/settings", None), ("GET", "/settings/{id}", "/settings/x"), ("GET", "/i18n", None),
              ("GET", "/latentgraph/timings", None),
              ("POST", "/prompt/estimate", await client.post("/prompt/estimate", json={"prompt": image_prompt()}))]
    for method, template, target in checks:
        answer = target if isinstance(target, object) and hasattr(target, "status") else \
            await client.request(method, "/api" + (target or template))
        assert answer.status == 200, (template, await answer.text())
        TypeAdapter(_declared(app, method, template).response).validate_python(await answer.json())
    bad = await client.post("/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})
    assert bad.status == 400
    ErrorBody.model_validate(await bad.json())
    listing = await (await client.get("/jobs")).json()
    jobs = TypeAdapter(_declared(app, "GET", "/jobs").response).validate_python(listing)
    assert [job.id for job in jobs.jobs] == [prompt_id] and jobs.jobs[0].status == "completed"


PROMPT_FIELD_ERRORS = [  # (body change, message): what a client has always been told, now from the declared model
    ({"prompt": None}, "No prompt provided"),
    ({"prompt": ["not", "an", "object"]}, "No prompt provided"),
    ({"client_id": 5}, "Invalid client_id"),
    ({"extra_data": []}, "Invalid extra_data"),
    ({"extra_data": None}, "Invalid extra_data"),
    ({"prompt_id": "has spaces"}, "Invalid prompt_id"),
    ({"prompt_id": "x" * 129}, "Invalid prompt_id"),
    ({"number": True}, "Invalid number"),
    ({"number": "1"}, "Invalid number"),
    ({"number": 2**53}, "Invalid number"),
    ({"front": "yes"}, "Invalid front"),
    ({"front": None}, "Invalid front"),
    ({"partial_execution_targets": ["1", 2]}, "Invalid partial_execution_targets"),
]


async def test_prompt_bodies_are_checked_by_the_declared_model_with_the_known_messages(client) -> None:
    for change, message in PROMPT_FIELD_ERRORS:
        answer = await client.post("/prompt", json={"prompt": image_prompt(), **change})
        body = await answer.json()
        assert answer.status == 400 and body["error"]["message"] == message, (change, body)
        assert body["error"]["type"] == "invalid_prompt" and body["node_errors"] == {}
        ErrorBody.model_validate(body)
    queued = await client.post("/prompt", json={"prompt": image_prompt(), "number": 7, "front": False,
                                                "prompt_id": "id.1:a-b", "partial_execution_targets": None})
    answer = await queued.json()
    assert queued.status == 200 and answer["prompt_id"] == "id.1:a-b"
    assert answer["number"] == 7 and isinstance(answer["number"], int)  # sent as an integer, kept one


async def test_interrupt_and_free_bodies_are_checked_by_their_models(client) -> None:
    for path, body, message in [("/interrupt", {"prompt_id": 1}, "prompt_id must be a string"),
                                ("/free", {"unload_models": "yes"}, "unload_models and free_memory must be true or "
                                                                    "false"),
                                ("/free", {"free_memory": None}, "unload_models and free_memory must be true or "
                                                                 "false")]:
        answer = await client.post(path, json=body)
        assert answer.status == 400 and (await answer.json())["error"]["message"] == message, (path, body)
    assert (await client.post("/free", json={"unload_models": True, "ignored": 1})).status == 200
    assert (await client.post("/interrupt", json={"prompt_id": None})).status == 200
