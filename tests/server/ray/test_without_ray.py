"""Without `--ray` nothing changes: a server runs prompts in its own worker thread, /workers describes that one
worker, and Ray is never imported (it is an optional extra). Checked in a fresh interpreter, where no other test
has imported Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = """
import json, sys, tempfile, urllib.request
from pathlib import Path
from tests.server.helpers import ThreadedServer, options_for
with ThreadedServer(options_for(Path(tempfile.mkdtemp()), full=False)) as server:
    with urllib.request.urlopen(server.url + "/workers", timeout=30) as answer:
        view = json.loads(answer.read())
print(json.dumps({"view": view, "ray_imported": "ray" in sys.modules}))
"""


def test_a_server_without_ray_uses_its_thread_and_never_imports_ray() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["ray_imported"] is False
    view = found["view"]
    assert view["backend"] == "thread" and view["ready"] and [w["id"] for w in view["workers"]] == [0]
