"""A library workflow as one node in the hosted editor: `Workflow: txt2img` is in the node list with its declared
inputs as widgets, and a graph of that node plus a SaveImage runs and shows the image, with no failed request and
no console error. The inner nodes run under ids `OUTER:INNER`, as the editor's own subgraphs do."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.browser.test_editor import RUN_TIMEOUT_MS, open_editor

pytestmark = pytest.mark.browser


def test_a_saved_workflow_is_a_node_that_runs_in_the_editor(live_server: str, browser_page: Any) -> None:
    page = browser_page
    watch, _ = open_editor(page, live_server, "/?template=txt2img")
    widgets = page.evaluate("""() => {
        const graph = window.app.graph;
        graph.clear();
        const inner = window.LiteGraph.createNode("Workflow: txt2img");
        graph.add(inner);
        inner.pos = [100, 100];
        const save = window.LiteGraph.createNode("SaveImage");
        graph.add(save);
        save.pos = [700, 100];
        save.widgets.find(w => w.name === "filename_prefix").value = "as_node";
        inner.connect(0, save, 0);
        inner.widgets.find(w => w.name === "steps").value = 2;
        graph.setDirtyCanvas(true, true);
        return inner.widgets.map(w => w.name);
    }""")
    assert [w for w in widgets if w != "control_after_generate"] == [
        "prompt", "negative", "seed", "steps", "width", "height", "checkpoint", "cfg", "sampler_name", "scheduler"]
    with page.expect_response(lambda r: "/view?" in r.url and "filename=as_node" in r.url,
                              timeout=RUN_TIMEOUT_MS) as shown:
        page.get_by_role("button", name="Run", exact=True).click()
    assert shown.value.status == 200 and shown.value.header_value("content-type") == "image/png"
    ran = {e["node"] for e in watch.events("executing") if e["node"] is not None}
    assert any(node.endswith(":3") for node in ran), ran  # the inner KSampler, expanded inline
    watch.assert_clean()
