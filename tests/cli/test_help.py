"""`--help` of every command and sub-command: exit code 0, a usage line, and a description for every option."""

from __future__ import annotations

import argparse

import pytest
from latentgraph.cli.main import build_parser, main


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path the parser knows (`run`, `train lora`, ...), read from the parser itself."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found.extend(_commands(sub, (*prefix, name)))
    return found


COMMANDS = _commands(build_parser())


def test_the_command_list_is_read_from_the_parser() -> None:
    assert {("run",), ("check",), ("serve",), ("train", "lora"), ("workflows",), ("mcp",)} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_exits_0_and_describes_every_option(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: latentgraph " + " ".join(command))
    parser = build_parser()
    for part in command:  # the sub-parser of this command, to list its options
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[part]
    for action in parser._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            assert action.help, f"{' '.join(command)} {action.option_strings[0]} has no help text"
            assert action.option_strings[-1] in text


def test_an_unknown_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "workflow.json", "--no-such-option"])
    assert exited.value.code == 2
    assert "--no-such-option" in capsys.readouterr().err
