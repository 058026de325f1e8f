"""The rules of ARCHITECTURE.md, checked: the import contracts (pyproject's `[tool.importlinter]`) and mypy over
the engine. Exit status 0 when both hold; .ci/run calls this before the tests.

import-linter (through grimp) and mypy find a package by walking the folder of its `__init__.py`, but latentgraph
maps the repository's top-level folders (`engine/`, `nodes/`, ...) into the `latentgraph.` namespace with
setuptools' `package-dir`, which an editable install serves through an import hook neither tool can see. So this
builds the installed layout as a tree of symbolic links in a temporary folder, read from that same `package-dir`
table, and runs both tools against it. Usage: `python scripts/check_rules.py [--imports-only] [REPO]`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
TYPED_PACKAGES = ["latentgraph.engine"]  # mypy-clean, and kept so by this check


def package_dirs(repo: Path) -> dict[str, Path]:
    """{dotted package: folder} from pyproject's `[tool.setuptools.package-dir]`."""
    config = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {package: (repo / folder).resolve() for package, folder in mapping.items()}


def build_layout(repo: Path, dest: Path) -> None:
    """Links each mapped folder at its dotted place under `dest`, shallowest package first.

    The root package (`latentgraph`) becomes a real folder holding links to its own files, so that its mapped
    subpackages can be linked inside it without writing into the repository.
    """
    mapping = package_dirs(repo)
    for package in sorted(mapping, key=lambda name: name.count(".")):
        source, target = mapping[package], dest.joinpath(*package.split("."))
        has_mapped_children = any(other.startswith(package + ".") for other in mapping)
        if has_mapped_children:
            target.mkdir(parents=True, exist_ok=True)
            for entry in source.iterdir():
                if entry.name != "__pycache__" and not (target / entry.name).exists():
                    (target / entry.name).symlink_to(entry)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source, target_is_directory=True)


def _run(tool: list[str], scratch: str, repo: Path) -> int:
    # Run from the scratch folder so the layout, not the editable install or the repository, is imported.
    env = {**os.environ, "PYTHONPATH": scratch, "MYPYPATH": scratch}
    return subprocess.run([sys.executable, *tool], cwd=scratch, env=env, check=False).returncode


def main(argv: list[str]) -> int:
    imports_only = "--imports-only" in argv
    paths = [a for a in argv if a != "--imports-only"]
    repo = Path(paths[0]).resolve() if paths else REPO
    config = str(repo / "pyproject.toml")
    with tempfile.TemporaryDirectory(prefix="latentgraph-rules-") as scratch:
        build_layout(repo, Path(scratch))
        status = _run(["-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
                       config, "--no-cache"], scratch, repo)
        if not imports_only:
            packages = [arg for package in TYPED_PACKAGES for arg in ("-p", package)]
            status |= _run(["-m", "mypy", "--config-file", config, "--cache-dir", os.path.join(scratch, ".mypy"),
                            *packages], scratch, repo)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
