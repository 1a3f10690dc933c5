"""Every command has --help with an example and is documented in the README (sqlite-utils style);
every command line of the README parses, and its error examples are what the commands print."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cli import app
from core.search import SearchClient
from core.text import plural
from tests.conftest import wipe

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


def test_plural_changes_only_the_last_word() -> None:
    assert [plural(n, "file-server entry") for n in (1, 2)] == [
        "1 file-server entry", "2 file-server entries"]
    assert [plural(n, w) for n, w in ((3, "more problem"), (1200, "index"), (0, "box"))] == [
        "3 more problems", "1,200 indices", "0 boxes"]


# ----------------------------------------------------------------- the README's command lines
def _readme_command_lines() -> list[str]:
    """Every cfysnap command line of the README: in code blocks (continuations joined), after a
    `$ ` prompt, and in inline code spans; Beam's options (after ` -- `) cut off."""
    text = README.replace("\\\n", " ")
    lines = []
    for block in re.findall(r"```(?:bash|text)?\n(.*?)```", text, re.DOTALL):
        lines += [line.strip().removeprefix("$ ") for line in block.splitlines()]
    lines += [line.strip() for line in text.splitlines() if line.startswith("    cfysnap ")]
    lines += re.findall(r"`(cfysnap [^`]+)`", text)
    found = []
    for line in lines:
        line = line.split(" # ")[0].replace("\\|", "|")
        if line.startswith("cfysnap ") and line not in found:
            found.append(line.split(" -- ")[0].strip())
    return found


README_COMMANDS = _readme_command_lines()


def _words(line: str) -> list[str]:
    """The words of a command line; `[--json]`, `(A | B)` and `…` are the README's notation."""
    return [w.strip("[]()") for w in shlex.split(line.replace("…", "")) if w.strip("[]()|")]


def test_the_readme_shows_each_command_with_its_options() -> None:
    assert len(README_COMMANDS) > 30
    assert "cfysnap restore s.zip --es http://127.0.0.1:9 --fs-root fs --credentials-dir keys" in README_COMMANDS
    assert any(c.startswith("cfysnap snapshots list --es URL --fs-root DIR") for c in README_COMMANDS)


def _options(command: Any) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


@pytest.mark.parametrize("line", README_COMMANDS)
def test_a_readme_command_line_names_a_command_and_only_its_options(line: str) -> None:
    """The command exists, its --help works, and every option the line uses is one of its own."""
    words = _words(line)[1:]
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    options = _options(command)
    for word in words:
        if word.startswith("-"):
            assert word.split("=")[0] in options, f"`{line}`: {word} is not an option of cfysnap {' '.join(path)}"
        elif hasattr(command, "commands") and word in command.commands:
            command = command.commands[word]
            path.append(word)
            options = _options(command)
        elif hasattr(command, "commands"):
            pytest.fail(f"`{line}`: {word} is not a command of cfysnap {' '.join(path)}")
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, f"`{line}`: {result.output}"


# ------------------------------------------------------------- the README's error examples
def _examples(marker: str) -> list[tuple[str, list[str]]]:
    """The `$ command` + output pairs of the README's ```text block holding `marker`."""
    [block] = [b for b in re.findall(r"```text\n(.*?)```", README, re.DOTALL) if marker in b]
    examples = []
    for chunk in block.strip().split("\n\n"):
        command, *output = chunk.splitlines()
        assert command.startswith("$ cfysnap "), chunk
        examples.append((command.removeprefix("$ "), output))
    return examples


def _run_examples(examples: list[tuple[str, list[str]]], cwd: Path, url: str = "") -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CFYSNAP_")}
    for command, expected in examples:
        if url:
            command = command.replace("http://127.0.0.1:9200", url)
            expected = [line.replace("http://127.0.0.1:9200", url) for line in expected]
        args = [sys.executable, str(ROOT / "cli.py"), *shlex.split(command)[1:]]
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert (done.stdout + done.stderr).splitlines() == expected, command
        failed = expected[-1].startswith(("error:", "invalid:"))
        assert (done.returncode != 0) == failed, (command, done.returncode)


def _error_fixtures(folder: Path) -> None:
    """s.zip, cut.zip, bad.zip and bomb.zip, as the README describes them."""
    sample = folder / "s.zip"
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "sample", "archive", str(sample),
                    "--version", "3.2", "--documents", "200"], check=True, capture_output=True)
    (folder / "cut.zip").write_bytes(sample.read_bytes()[:3000])
    with zipfile.ZipFile(sample) as source, zipfile.ZipFile(folder / "bad.zip", "w", zipfile.ZIP_DEFLATED) as bad, \
            zipfile.ZipFile(folder / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as bomb:
        for info in source.infolist():
            if info.filename == "manifest.json":  # its checksums would name the change first
                continue
            data = source.read(info)
            bomb.writestr(info, data)
            if info.filename == "es_data":
                lines = data.split(b"\n")
                lines[2] = lines[2][:40]
                data = b"\n".join(lines)
            bad.writestr(info, data)
        bomb.writestr("blueprints/x/zeros.bin", bytes(20 * 2**20))


def test_the_readme_error_examples_are_what_the_commands_print(tmp_path: Path) -> None:
    _error_fixtures(tmp_path)
    examples = _examples("cut.zip")
    assert len(examples) == 6
    _run_examples(examples, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip", "bomb.zip", "cut.zip", "s.zip"]


@pytest.mark.server
def test_the_readme_refusals_are_what_restore_prints(search_url: str, tmp_path: Path) -> None:
    _error_fixtures(tmp_path)
    with SearchClient(search_url) as client:
        wipe(client)
    examples = _examples("127.0.0.1:9200")
    assert len(examples) == 3
    _run_examples(examples, tmp_path, search_url)
    assert not (tmp_path / "keys").exists()
