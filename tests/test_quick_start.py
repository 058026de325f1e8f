"""The README's quick start is what a new user on a fresh Debian/Ubuntu machine can type: both commands create and
use a virtual environment with `python3` (no `python` there, and PEP 668 refuses a system-wide pip install), the
test command is the one `.ci/run` runs verbatim, and `.ci/run` checks the Python version pyproject requires."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = "python3 -m venv .venv && . .venv/bin/activate && "


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, flags=re.S)


def test_both_commands_start_in_a_virtual_environment_made_by_python3() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2
    for command in commands:
        assert "\n" not in command and command.startswith(VENV), command
        assert "sudo" not in command and "--break-system-packages" not in command
    assert commands[0].endswith("latentgraph run workflows/txt2img.json")
    assert commands[1].endswith("python -m pytest")


def test_ci_runs_the_readme_test_command_and_checks_the_python_version() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert quick_start_commands()[1] in script.splitlines()
    required = re.search(r'^requires-python = ">=(\d+)\.(\d+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert required is not None
    major, minor = required.groups()
    assert f"sys.version_info < ({major}, {minor})" in script
