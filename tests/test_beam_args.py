"""A job command's extra arguments are Beam's flags; a misspelt option of the command is a usage
error, never a flag Beam drops with a warning nobody sees (`cli.beam_args`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from core.model import Version
from pipelines.sample.archive import write_sample_archive
from pipelines.sample.generate import ManagerSpec

REPO = Path(__file__).resolve().parent.parent
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens there: a job that started would fail on it


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archive") / "snap.zip"
    write_sample_archive(ManagerSpec(version=Version.V3_3, events=5, logs=5), path)
    return path


def _jobs(archive: Path, work: Path) -> dict[str, list[str]]:
    """Each job command, given what it needs to start (a server nobody answers at)."""
    return {
        "create": ["create", "--es", UNREACHABLE, "--fs-root", str(work), "--output",
                   str(work / "out.zip")],
        "convert": ["convert", str(archive), str(work / "out.zip"), "--to", "3.4"],
        "restore": ["restore", str(archive), "--es", UNREACHABLE, "--fs-root", str(work / "fs"),
                    "--credentials-dir", str(work / "creds")],
        "snapshots restore": ["snapshots", "restore", "snap", "--es", UNREACHABLE, "--fs-root",
                              str(work / "fs"), "--credentials-dir", str(work / "creds")],
        "export": ["export", str(work / "parquet"), "--archive", str(archive)],
    }


@pytest.mark.parametrize(
    ("job", "typo", "meant"),
    [
        ("create", "--forc", "--force"),
        ("convert", "--forc", "--force"),
        ("restore", "--forc", "--force"),
        ("snapshots restore", "--forc", "--force"),
        ("export", "--formt", "--format"),
    ],
)
def test_a_misspelt_option_stops_every_job_before_it_starts(
    job: str, typo: str, meant: str, archive: Path, tmp_path: Path
) -> None:
    args = _jobs(archive, tmp_path)[job]
    out = cli(*args, typo)
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    assert out.stderr == (
        f"error: No such option: {typo} (did you mean {meant}?) (see `cfysnap {job} --help`)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--exclude-evnets"], "No such option: --exclude-evnets (did you mean --exclude-events?)"),
        (["--outptu=x.zip"], "No such option: --outptu (did you mean --output?)"),
        # a hyphenated name is never Beam's, wherever it is given
        (["--", "--direct-num-workers=2"], "No such option: --direct-num-workers (not this "
         "command's, nor Beam's: its flags go after `--`, spelt with underscores)"),
        (["-x"], "No such option: -x (not this command's, nor Beam's: its flags go after `--`, "
         "spelt with underscores)"),
    ],
)
def test_the_error_names_the_option_and_what_was_meant(
    extra: list[str], message: str, tmp_path: Path
) -> None:
    out = cli("create", "--es", UNREACHABLE, "--fs-root", str(tmp_path), "--output",
              str(tmp_path / "out.zip"), *extra)
    assert (out.returncode, out.stderr) == (2, f"error: {message} (see `cfysnap create --help`)\n")


@pytest.mark.parametrize(
    "extra",
    [
        ["--", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
        ["--", "--runner", "FlinkRunner", "--parallelism=2", "--maxBundleSize=10"],  # Java's camelCase
        ["--", "--direct_num_workers", "-1"],  # a value, not an option
        ["--direct_num_workers=1"],  # before `--` too, as Click hands it over
    ],
)
def test_beams_flags_pass(extra: list[str], archive: Path, tmp_path: Path) -> None:
    """A dry run reads its flags and runs nothing: the command gets past `beam_args`."""
    result = CliRunner().invoke(
        app, ["convert", str(archive), str(tmp_path / "out.zip"), "--to", "3.4", "--dry-run", *extra]
    )
    assert result.exit_code == 0, result.output
    assert "No such option" not in result.output
    assert not (tmp_path / "out.zip").exists()
