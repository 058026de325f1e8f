"""The hosted editor against a live server: first visit lands on txt2img, Run shows the image, re-runs reuse the cache.

Everything the page asks of our server is watched: any 4xx/5xx answer or failed request to it, and any console
error, fails the test.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.server.browser.conftest import keep_screenshot

pytestmark = pytest.mark.browser

RUN_TIMEOUT_MS = 240_000
SAVE_NODE, CHECKPOINT_NODE, POSITIVE_NODE = "9", "4", "6"
TXT2IMG = Path(__file__).resolve().parents[3] / "workflows" / "txt2img.json"
POSITIVE_TEXT = json.loads(TXT2IMG.read_text())[POSITIVE_NODE]["inputs"]["text"]


@dataclass
class PageWatch:
    """What the page did: failed requests to our server, console errors and the WebSocket messages it got."""

    base: str
    failures: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    sockets: list[Any] = field(default_factory=list)  # the page's WebSockets, to wait on their frames

    def attach(self, page: Any) -> None:
        def on_response(response: Any) -> None:
            if response.url.startswith(self.base) and response.status >= 400:
                self.failures.append(f"{response.status} {response.request.method} {response.url}")

        def on_failed(request: Any) -> None:
            if request.url.startswith(self.base):
                self.failures.append(f"{request.failure} {request.method} {request.url}")

        def on_websocket(ws: Any) -> None:
            self.sockets.append(ws)
            ws.on("framereceived", lambda frame: self.messages.append(json.loads(frame))
                  if isinstance(frame, str) else None)

        page.on("response", on_response)
        page.on("requestfailed", on_failed)
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console_errors.append(f"page error: {e}"))
        page.on("websocket", on_websocket)

    def events(self, kind: str, prompt_id: str | None = None) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages
                if m.get("type") == kind and (prompt_id is None or m["data"].get("prompt_id") == prompt_id)]

    def assert_clean(self) -> None:
        assert self.failures == [], f"requests to our server failed: {self.failures}"
        assert self.console_errors == [], f"console errors: {self.console_errors}"


def open_editor(page: Any, url: str, path: str) -> tuple[PageWatch, Any]:
    """Opens the editor at `path` and waits for the txt2img template to be on the canvas."""
    watch = PageWatch(url)
    watch.attach(page)
    response = page.goto(url + path)
    page.wait_for_function("() => window.app?.graph?.nodes?.some(n => n.type === 'SaveImage' && "
                           "n.widgets?.[0]?.value === 'txt2img')", timeout=120_000)
    return watch, response


def _is_success(frame: str | bytes) -> bool:
    return isinstance(frame, str) and json.loads(frame).get("type") == "execution_success"


def run_and_wait_for_image(page: Any, watch: PageWatch) -> str:
    """Presses Run; returns the prompt id once the saved image is loaded and drawn in the SaveImage node."""
    done = len(watch.events("execution_success"))
    # listening before the click: the page's WebSocket may carry execution_success before the image is drawn
    with watch.sockets[-1].expect_event("framereceived", predicate=_is_success, timeout=RUN_TIMEOUT_MS + 30_000):
        with page.expect_response(lambda r: "/view?" in r.url and "filename=txt2img" in r.url,
                                  timeout=RUN_TIMEOUT_MS) as shown:
            page.get_by_role("button", name="Run", exact=True).click()
        assert shown.value.status == 200
        assert shown.value.header_value("content-type") == "image/png"
        page.wait_for_function(f"() => (window.app.graph.getNodeById({SAVE_NODE}).imgs || []).length > 0",
                               timeout=30_000)
    successes = watch.events("execution_success")
    assert len(successes) > done, "execution_success never arrived on the WebSocket"
    return successes[-1]["prompt_id"]


def test_first_visit_runs_txt2img_shows_the_image_and_its_png_reopens(
    live_server: str, browser_page: Any, tmp_path: Path
) -> None:
    page = browser_page
    watch, response = open_editor(page, live_server, "/")
    first = response.request.redirected_from
    assert first is not None and first.url == live_server + "/", "a first visit is sent to the txt2img template"
    assert response.request.url.endswith("/?template=txt2img")
    titles = page.evaluate("() => window.app.graph.nodes.map(n => n.type).sort()")
    # every node of the shipped file, its declared interface (WorkflowInput/Output/Info) included
    shipped = json.loads(TXT2IMG.read_text())
    assert titles == sorted(node["class_type"] for node in shipped.values())
    assert "KSampler" in titles and "WorkflowInput" in titles

    prompt_id = run_and_wait_for_image(page, watch)
    executed = [e for e in watch.events("executed", prompt_id) if e["node"] == SAVE_NODE]
    assert executed and executed[0]["output"]["images"][0]["filename"].startswith("txt2img")

    shot = tmp_path / "editor-txt2img.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    keep_screenshot(shot)

    image = executed[0]["output"]["images"][0]
    query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"], "type": "output"})
    with urllib.request.urlopen(f"{live_server}/api/view?{query}") as answer:
        (tmp_path / "ours.png").write_bytes(answer.read())
    page.evaluate(f"() => {{ window.app.graph.getNodeById({POSITIVE_NODE}).widgets[0].value = 'scratch'; }}")
    page.set_input_files("#comfy-file-input", str(tmp_path / "ours.png"))
    page.wait_for_function(f"() => window.app.graph.getNodeById({POSITIVE_NODE})?.widgets?.[0]?.value"
                           f" === {json.dumps(POSITIVE_TEXT)}", timeout=30_000)
    watch.assert_clean()


def test_changing_only_the_prompt_reuses_the_loaded_checkpoint(live_server: str, browser_page: Any) -> None:
    page = browser_page
    watch, _ = open_editor(page, live_server, "/?template=txt2img")
    run_and_wait_for_image(page, watch)

    page.evaluate(f"""() => {{
        const widget = window.app.graph.getNodeById({POSITIVE_NODE}).widgets.find(w => w.name === 'text');
        widget.value = 'a lighthouse at night, stars';
        window.app.graph.setDirtyCanvas(true, true);
    }}""")
    second = run_and_wait_for_image(page, watch)

    cached = {node for event in watch.events("execution_cached", second) for node in event["nodes"]}
    ran = {e["node"] for e in watch.events("executing", second) if e["node"] is not None}
    assert CHECKPOINT_NODE in cached and CHECKPOINT_NODE not in ran
    assert POSITIVE_NODE in ran and "3" in ran
    history = page.evaluate("async (id) => (await (await fetch(`/api/history/${id}`)).json())", second)
    assert history[second]["prompt"][2][POSITIVE_NODE]["inputs"]["text"] == "a lighthouse at night, stars"
    watch.assert_clean()
