"""Every command has --help with an example and is documented in the README (sqlite-utils style)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
runner = CliRunner()


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        if hasattr(command, "commands"):  # a group (typer vendors click: duck-type it)
            found.extend(_commands(command, path))
        else:
            found.append(path)
    return found


COMMANDS = _commands(typer.main.get_command(app))  # type: ignore[arg-type]


def test_there_are_commands() -> None:
    assert ("inspect",) in COMMANDS and ("validate",) in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_command_help_has_an_example_and_describes_each_option(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    command = typer.main.get_command(app)
    for part in path:
        command = command.commands[part]  # type: ignore[attr-defined]
    for param in command.params:
        if param.param_type_name == "option" and param.name not in ("help",):
            assert param.help, f"cfysnap {' '.join(path)} {param.opts[0]} has no help text"


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_command_is_in_readme(path: tuple[str, ...]) -> None:
    assert re.search(rf"cfysnap {re.escape(' '.join(path))}\b", README), f"README lacks `cfysnap {' '.join(path)}`"


def test_without_a_terminal_progress_is_a_log_line_every_few_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Output redirected to a file still shows progress: done/total, size, rate, time left."""
    import logging

    from core.progress import Progress, report

    with caplog.at_level(logging.INFO, logger="cfysnap"), Progress(
        "create", total=1000, interval=0.0
    ) as progress:
        report(250, 3 * 2**20)
        assert progress.line(now=progress.started + 2.0) == (
            "create: 250/1,000 documents (25%), 3.0 MiB, 125 docs/s, about 6 s left"
        )
    [record] = caplog.records
    assert record.getMessage().startswith("create: 250/1,000 documents (25%), 3.0 MiB, ")
    report(10)  # no active progress once it is closed: nothing happens
    assert len(caplog.records) == 1
