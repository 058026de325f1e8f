"""Schemathesis against the workflow routes as /openapi.json describes them (list, one workflow, a typed run
operation per workflow, a run's status): cases generated from those schemas, valid and invalid, never get a 5xx.

The server is a fast one (image nodes only) with one declared workflow whose every valid input is cheap (choices,
no sizes), so the valid bodies schemathesis generates really queue and run without making huge images. The
`callback` parameter is left out: generated URLs would be called in the background.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from latentgraph.nodes import workflow_nodes

from tests.server.helpers import ThreadedServer, options_for, write_input_image
from tests.server.test_workflow_routes import write_user_workflow

CHEAP = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
    "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": 16,
                                                 "height": 0, "crop": "disabled"}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fuzz"}},
    "10": {"class_type": "WorkflowInput", "inputs": {"name": "source", "target": "1.image"}},
    "11": {"class_type": "WorkflowInput", "inputs": {"name": "method", "target": "2.upscale_method"}},
    "12": {"class_type": "WorkflowInput", "inputs": {"name": "crop", "target": "2.crop"}},
    "13": {"class_type": "WorkflowOutput", "inputs": {"name": "image", "source": "3"}},
}


@pytest.fixture(scope="module")
def workflow_schema(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("schemathesis")
    write_input_image(base)
    write_user_workflow(base, "cheap", CHEAP)
    options = options_for(base, full=False)
    for cls in (workflow_nodes.WorkflowInput, workflow_nodes.WorkflowOutput, workflow_nodes.WorkflowInfo):
        options.registry.register(cls)
    with ThreadedServer(options) as server:
        with urllib.request.urlopen(server.url + "/openapi.json", timeout=30) as answer:
            spec = json.loads(answer.read())
        spec["paths"] = {path: item for path, item in spec["paths"].items() if path.startswith("/workflows")}
        assert "/workflows/cheap/runs" in spec["paths"]
        for item in spec["paths"].values():
            for operation in item.values():
                operation["parameters"] = [p for p in operation.get("parameters", []) if p["name"] != "callback"]
        loaded = schemathesis.openapi.from_dict(spec)
        loaded.config.update(base_url=server.url + "/api")
        yield loaded


schema = schemathesis.pytest.from_fixture("workflow_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_workflow_routes_never_answer_a_server_error(case) -> None:
    response = case.call(timeout=120)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:500]}"
