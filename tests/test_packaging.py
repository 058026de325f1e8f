"""The built wheel installs everything under `latentgraph.` and ships its data, so it can sit beside ComfyUI.

ComfyUI and its custom nodes import top-level `nodes` and `server` modules; a wheel that installed such names
would shadow them (or be shadowed). This builds the wheel from a copy of the working tree, lists its files,
installs it into a fresh virtual environment beside a tiny package that ships top-level `nodes`/`server`
modules, and imports both from a folder outside the repository.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Top-level names the wheel may install: the package and its metadata, nothing else.
ALLOWED_TOP = {"latentgraph"}


def _run(command: list[str], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _source_copy(dest: Path) -> Path:
    """The files a build reads (pyproject, README, LICENSE and every mapped package folder), without caches."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in set(config["tool"]["setuptools"]["package-dir"].values()):
        shutil.copytree(REPO / folder, dest / folder, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = _source_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
          str(source)], cwd=out)
    (built,) = out.glob("latentgraph-*.whl")
    return built


def test_the_wheel_installs_only_the_latentgraph_namespace_and_ships_its_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == ALLOWED_TOP, sorted(tops)
    assert not [n for n in names if n.split("/")[0] in ("engine", "nodes", "server", "cli", "training")]
    files = set(names)
    for package in ("engine", "nodes", "nodes/sd", "server", "cli", "training"):
        assert f"latentgraph/{package}/__init__.py" in files, package
    assert "latentgraph/api.py" in files and "latentgraph/py.typed" in files
    assert "latentgraph/nodes/sd/assets/checkpoints/latentgraph-demo.safetensors" in files
    configs = [n for n in names if n.startswith("latentgraph/nodes/sd/configs/")]
    assert any(n.endswith(".json") for n in configs), "the shipped model configs are missing"
    for repo_config in (REPO / "nodes" / "sd" / "configs").rglob("*"):
        if repo_config.is_file() and "__pycache__" not in repo_config.parts:
            relative = repo_config.relative_to(REPO / "nodes").as_posix()
            assert f"latentgraph/nodes/{relative}" in files, relative
    assert "latentgraph/server/editor_default_workflow.js" in files
    shipped = sorted(f"latentgraph/workflows/{p.name}" for p in (REPO / "workflows").glob("*.json"))
    assert shipped and set(shipped) <= files, "the shipped workflows (editor templates, the library) are missing"


COMFY_LIKE_SETUP = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "comfy-like"
version = "1.0"

[tool.setuptools]
py-modules = ["nodes", "server"]
"""

PROBE = """
import importlib.util, json, sys
import nodes, server
import latentgraph, latentgraph.api, latentgraph.engine.executor, latentgraph.nodes, latentgraph.server.app
from latentgraph.api import Node
from latentgraph.server.routes_templates import template_names
spec = lambda name: importlib.util.find_spec(name)
print(json.dumps({
    "nodes": [nodes.WHO, nodes.__file__], "server": [server.WHO, server.__file__],
    "latentgraph": latentgraph.__file__, "engine": latentgraph.engine.executor.__file__,
    "lg_nodes": latentgraph.nodes.__file__, "lg_server": latentgraph.server.app.__file__,
    "top_engine": None if spec("engine") is None else spec("engine").origin,
    "top_cli": None if spec("cli") is None else spec("cli").origin,
    "top_training": None if spec("training") is None else spec("training").origin,
    "node_base": Node.__module__, "registry": len(latentgraph.nodes.load_registry().names()),
    "templates": template_names(),
}))
"""


def test_the_wheel_sits_beside_a_package_with_top_level_nodes_and_server(wheel: Path, tmp_path: Path) -> None:
    comfy = tmp_path / "comfy_like"
    comfy.mkdir()
    (comfy / "pyproject.toml").write_text(COMFY_LIKE_SETUP)
    (comfy / "nodes.py").write_text('WHO = "comfy-like nodes"\n')
    (comfy / "server.py").write_text('WHO = "comfy-like server"\n')
    venv = tmp_path / "venv"
    # System site-packages keep torch and friends from being installed again; the wheel's own files must win.
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    # ... and so does the test's own environment (a venv on a bare interpreter lacks aiohttp and friends): its
    # site-packages as a plain path, so its .pth files (the editable install's finder) are not run
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp_path).strip())
    (purelib / "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
          str(comfy)], cwd=tmp_path)
    (comfy_wheel,) = tmp_path.glob("comfy_like-*.whl")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(comfy_wheel), str(wheel)], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"  # not the repository: nothing may be imported from the working tree
    elsewhere.mkdir()
    found = json.loads(_run([str(python), "-c", textwrap.dedent(PROBE)], cwd=elsewhere).strip().splitlines()[-1])
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=elsewhere).strip())

    assert found["nodes"][0] == "comfy-like nodes" and Path(found["nodes"][1]).parent == site
    assert found["server"][0] == "comfy-like server" and Path(found["server"][1]).parent == site
    for key in ("latentgraph", "engine", "lg_nodes", "lg_server"):
        assert Path(found[key]).is_relative_to(site / "latentgraph"), (key, found[key])
    for key in ("top_engine", "top_cli", "top_training"):
        assert found[key] is None or not Path(found[key]).is_relative_to(site), (key, found[key])
    assert found["node_base"] == "latentgraph.engine.node"
    assert found["registry"] > 20  # the stock nodes load from the installed wheel
    assert "txt2img" in found["templates"]  # the editor's first-visit template ships with it
