"""A live `latentgraph serve` on loopback with the tiny checkpoint, and Debian's chromium driven by Playwright.

The server runs as a real subprocess (as a user runs it); the browser is the system's chromium, never a
downloaded one. Both are stopped when the tests that use them end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = Path(os.environ.get("LATENTGRAPH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT_DIR = Path(os.environ.get("LATENTGRAPH_SCREENSHOT_DIR",
                                     Path(tempfile.gettempdir()) / "latentgraph-browser-tests"))
STARTUP_TIMEOUT_S = 180


def _require_browser_stack() -> None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("the browser tests need Playwright: pip install -e .[test]")
    if not CHROMIUM.exists():
        pytest.fail(f"the browser tests need chromium at {CHROMIUM}: apt-get install -y chromium")
    from latentgraph.server.routes_static import frontend_dir

    if frontend_dir() is None:
        pytest.fail("the browser tests need the editor: pip install -e .[editor]")


def _checkpoint_name() -> str:
    prompt = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    return next(n["inputs"]["ckpt_name"] for n in prompt.values() if n["class_type"] == "CheckpointLoaderSimple")


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a fresh server (new base directory, so the editor sees a first-time user)."""
    _require_browser_stack()
    from latentgraph.nodes.sd.tiny import write_tiny_checkpoint

    base = tmp_path_factory.mktemp("base")
    write_tiny_checkpoint(base / "models" / "checkpoints" / _checkpoint_name())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "latentgraph.cli.main", "serve", "--base-dir", str(base), "--port", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    found: list[str] = []
    lines: list[str] = []
    started_or_ended = threading.Event()  # set at the "listening on" line, or when the output ends (it exited)

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            match = re.search(r"listening on (http://\S+)", line)
            if match and not found:
                found.append(match.group(1))
                started_or_ended.set()
        started_or_ended.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        started_or_ended.wait(STARTUP_TIMEOUT_S)
        if not found:
            pytest.fail("the server did not start:\n" + "".join(lines[-40:]))
        yield found[0]
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        reader.join(timeout=5)


@pytest.fixture
def browser_page() -> Iterator[object]:
    """A Playwright page in headless chromium; closed with its browser after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            yield page
        finally:
            browser.close()


def keep_screenshot(path: Path) -> Path:
    """Copies a screenshot to a stable folder (printed, so a person can look at it after the run)."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOT_DIR / path.name
    shutil.copyfile(path, target)
    print(f"screenshot: {path} (copy: {target})")
    return target
