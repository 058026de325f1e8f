"""Schemathesis over every ComfyUI-compatible route in /openapi.json: generated requests, valid and invalid, never
get a 5xx. The server is a fast one (image nodes only), so valid prompts it queues run in milliseconds; the doors
that run diffusion models (/v1, /sdapi, /mcp) and the workflow routes (tests/server/test_workflow_schemathesis.py)
are left to their own tests, and /ws is a WebSocket. Bounded: a few examples per operation, about a minute."""

from __future__ import annotations

import json
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.server.helpers import ThreadedServer, options_for, write_input_image

LEFT_TO_OTHER_TESTS = ("/v1/", "/sdapi/", "/mcp", "/workflows", "/ws")


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("schemathesis_api")
    write_input_image(base)
    with ThreadedServer(options_for(base, full=False)) as server:
        with urllib.request.urlopen(server.url + "/openapi.json", timeout=30) as answer:
            spec = json.loads(answer.read())
        spec["paths"] = {path: item for path, item in spec["paths"].items()
                         if not path.startswith(LEFT_TO_OTHER_TESTS)}
        for item in spec["paths"].values():
            for operation in item.values():
                if isinstance(operation, dict):
                    operation["parameters"] = [p for p in operation.get("parameters", [])
                                               if p.get("name") != "callback_url"]
        loaded = schemathesis.openapi.from_dict(spec)
        loaded.config.update(base_url=server.url)
        yield loaded


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_routes_never_answer_a_server_error(case) -> None:
    response = case.call(timeout=60)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:500]}"
