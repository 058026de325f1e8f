"""The rules are enforced: scripts/check_rules.py sees the `latentgraph.*` layout that package-dir maps, so its
contracts can fail, and pyproject's warning filters turn our own DeprecationWarnings into errors.

The import contracts are checked in .ci/run against the real tree; here a miniature repository with the same
mapping shows that a forbidden import is caught (and that a clean tree passes), so a green check means something.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_rules.py"

PYPROJECT = """
[tool.setuptools.package-dir]
"latentgraph" = "latentgraph"
"latentgraph.engine" = "engine"
"latentgraph.server" = "server"

[tool.importlinter]
root_packages = ["latentgraph"]

[[tool.importlinter.contracts]]
name = "engine imports no server"
type = "forbidden"
source_modules = ["latentgraph.engine"]
forbidden_modules = ["latentgraph.server"]
"""


def _mini_repo(root: Path, engine_source: str) -> Path:
    (root / "pyproject.toml").write_text(PYPROJECT)
    for folder, files in {"latentgraph": {"__init__.py": ""},
                          "engine": {"__init__.py": "", "core.py": engine_source},
                          "server": {"__init__.py": "", "app.py": "from latentgraph.engine import core\n"}}.items():
        (root / folder).mkdir()
        for name, text in files.items():
            (root / folder / name).write_text(text)
    return root


def _check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--imports-only", str(repo)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_a_clean_mapped_tree_keeps_the_contract(tmp_path: Path) -> None:
    done = _check(_mini_repo(tmp_path, "VALUE = 1\n"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 1 kept, 0 broken." in done.stdout


def test_an_engine_module_importing_the_server_breaks_it(tmp_path: Path) -> None:
    done = _check(_mini_repo(tmp_path, "def late():\n    from latentgraph.server import app\n    return app\n"))
    assert done.returncode != 0
    assert "latentgraph.engine.core -> latentgraph.server.app" in done.stdout, done.stdout


def _warn_from(module_name: str) -> None:
    """Issues a DeprecationWarning attributed to `module_name`, as a deprecated call made from there would be."""
    code = compile("import warnings\nwarnings.warn('a deprecated call', DeprecationWarning)", "<rules>", "exec")
    exec(code, {"__name__": module_name})


def test_a_deprecation_warning_from_our_code_fails_the_test() -> None:
    with pytest.raises(DeprecationWarning):
        _warn_from("latentgraph.nodes.sd.example")
    with pytest.raises(DeprecationWarning):
        _warn_from("tests.example")


def test_a_deprecation_warning_from_a_dependency_does_not() -> None:
    _warn_from("diffusers.example")  # under pyproject's filters: shown in the summary, not raised
