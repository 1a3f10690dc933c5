"""A job command's arguments after `--` are Beam's flags; anything before `--` that is not the
command's own is a usage error naming it, never a flag Beam drops with a warning nobody sees
(`cli.BeamCommand`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

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


CREATE_HELP = " (see `cfysnap create --help`)\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--exclude-evnets"], "No such option: --exclude-evnets (did you mean --exclude-events?)"),
        # named before create's own "give exactly one of --output and --snapshot-id"
        (["--outptu", "x.zip"], "No such option: --outptu (did you mean --output?)"),
        (["--outptu=x.zip"], "No such option: --outptu (did you mean --output?)"),
        # Beam's flags, before `--`: refused too, with where they go
        (["--direct_num_workers=2"], "No such option: --direct_num_workers (Beam's flags go after `--`)"),
        (["-x", "--", "--direct_num_workers=2"], "No such option: -x (Beam's flags go after `--`)"),
        (["stray"], "unexpected extra argument 'stray'"),
    ],
)
def test_the_error_names_the_argument_and_what_was_meant(
    extra: list[str], message: str, tmp_path: Path
) -> None:
    fs_root = tmp_path / "fs"
    fs_root.mkdir()
    output = [] if extra[0].startswith("--outptu") else ["--output", str(tmp_path / "out.zip")]
    out = cli("create", "--es", UNREACHABLE, "--fs-root", str(fs_root), *output, *extra)
    assert (out.returncode, out.stdout, out.stderr) == (2, "", f"error: {message}{CREATE_HELP}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fs"]


def test_a_misspelt_required_option_is_named_before_it_is_missed(archive: Path, tmp_path: Path) -> None:
    out = cli("convert", str(archive), str(tmp_path / "out.zip"), "--too", "3.4")
    assert (out.returncode, out.stderr) == (
        2, "error: No such option: --too (did you mean --to?) (see `cfysnap convert --help`)\n"
    )
    missing = cli("convert", str(archive), str(tmp_path / "out.zip"))  # no typo: Click's own
    assert missing.returncode == 2 and "Missing option '--to'" in missing.stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
        ["--runner", "FlinkRunner", "--parallelism=2", "--maxBundleSize=10"],  # Java's camelCase
        ["--streaming", "--job-server-timeout=5"],  # near --staging; Beam's own hyphenated spelling
        ["--direct_num_workers", "-1", "--experiments=-x"],
    ],
)
def test_everything_after_the_dashes_goes_to_beam_untouched(
    extra: list[str], archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.convert

    seen: list[list[str]] = []

    def run(config: object, flags: list[str]) -> SimpleNamespace:  # the job's entry, stubbed
        seen.append(list(flags))
        return SimpleNamespace(render=lambda: "converted (stub)")

    monkeypatch.setattr(pipelines.convert, "run", run)
    result = CliRunner().invoke(
        app, ["convert", str(archive), str(tmp_path / "out.zip"), "--to", "3.4", "--", *extra]
    )
    assert (result.exit_code, result.output, seen) == (0, "converted (stub)\n", [extra])
