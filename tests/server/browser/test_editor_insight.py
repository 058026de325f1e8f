"""The editor shows what the engine knows, in Chromium against a live server: a readable first view in one tab,
the estimate beside Run before anything runs, a badge per node after a run, and after changing only the seed,
the sampler's badge and tooltip say it ran because `seed` changed while the loader's says cached.

Screenshots of each state are kept (see conftest.keep_screenshot) for the issue's closing note.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.server.browser.conftest import keep_screenshot
from tests.server.browser.test_editor import CHECKPOINT_NODE, open_editor, run_and_wait_for_image

SAMPLER_NODE = "3"
CORE_NODES = ["3", "4", "5", "6", "7", "8", "9"]


def estimate_text(page: Any) -> str:
    return page.evaluate("() => document.querySelector('#latentgraph-estimate')?.textContent ?? ''")


def test_first_view_estimate_badges_and_the_reason_a_node_ran(live_server: str, browser_page: Any,
                                                                 tmp_path: Path) -> None:
    page = browser_page
    watch, _ = open_editor(page, live_server, "/")

    # a first view that reads: node titles are drawn (not the low-quality boxes), and one tab only
    view = page.evaluate("() => ({scale: app.canvas.ds.scale, threshold: app.canvas._lowQualityZoomThreshold,"
                         " low: app.canvas.low_quality})")
    assert view["low"] is False and view["scale"] >= view["threshold"], view
    page.wait_for_function("() => app.extensionManager.workflow.openWorkflows.length === 1", timeout=30_000)
    assert page.evaluate("() => app.extensionManager.workflow.openWorkflows.map(w => w.path)") == [
        "workflows/txt2img.json"]
    shot = tmp_path / "insight-first-view.png"
    page.screenshot(path=str(shot))
    keep_screenshot(shot)

    # the estimate is beside Run before anything ran; with no history its time is unknown
    page.wait_for_function("() => (document.querySelector('#latentgraph-estimate')?.textContent ?? '')"
                           ".startsWith('next run: 7 nodes')", timeout=60_000)
    assert estimate_text(page).endswith("time unknown (no history yet)")
    assert page.evaluate("() => latentgraphInsight.estimate.nodes.map(n => n.class_type)").count("KSampler") == 1

    run_and_wait_for_image(page, watch)
    page.wait_for_function(f"() => {CORE_NODES} .every(id => latentgraphInsight.badgeText(id) !== '')",
                           timeout=30_000)
    badges = page.evaluate(f"() => Object.fromEntries({CORE_NODES}.map(id => [id, latentgraphInsight.badgeText(id)]))")
    assert all(text.startswith("ran ") for text in badges.values()), badges
    page.wait_for_function("() => (document.querySelector('#latentgraph-estimate')?.textContent ?? '')"
                           ".includes('nothing to do')", timeout=30_000)

    page.evaluate(f"""() => {{
        const widget = app.graph.getNodeById({SAMPLER_NODE}).widgets.find(w => w.name === 'seed');
        widget.value = widget.value + 1;
        app.graph.setDirtyCanvas(true, true);
    }}""")
    page.wait_for_function("() => (document.querySelector('#latentgraph-estimate')?.textContent ?? '')"
                           ".startsWith('next run: 3 nodes (KSampler, VAEDecode, SaveImage), ≈')", timeout=30_000)
    shot = tmp_path / "insight-estimate.png"
    page.screenshot(path=str(shot))
    keep_screenshot(shot)

    run_and_wait_for_image(page, watch)
    page.wait_for_function(f"() => latentgraphInsight.badgeText({SAMPLER_NODE}).startsWith('ran ')"
                           f" && latentgraphInsight.badgeText({CHECKPOINT_NODE}) === 'cached'", timeout=30_000)
    reason = page.evaluate(f"() => latentgraphInsight.reasonText({SAMPLER_NODE})")
    assert reason.startswith("ran: seed changed "), reason
    assert page.evaluate("() => latentgraphInsight.badgeText(8)").startswith("ran ")
    assert "parent 3 re-ran" in page.evaluate("() => latentgraphInsight.reasonText(8)")

    # the tooltip on the sampler's title bar
    box = page.evaluate(f"""() => {{
        const node = app.graph.getNodeById({SAMPLER_NODE});
        const rect = app.canvas.canvas.getBoundingClientRect();
        const [x, y] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + 40, node.pos[1] - 12]);
        return [rect.left + x, rect.top + y];
    }}""")
    page.mouse.move(box[0], box[1])
    page.wait_for_selector("#latentgraph-reason-tooltip", state="visible", timeout=10_000)
    assert "seed changed" in page.inner_text("#latentgraph-reason-tooltip")
    shot = tmp_path / "insight-rerun-reason.png"
    page.screenshot(path=str(shot))
    keep_screenshot(shot)
    watch.assert_clean()
