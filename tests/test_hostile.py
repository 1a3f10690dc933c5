"""Hostile archives (issue 14): zip bombs and absurd members, lines too long, JSON too deep,
invalid UTF-8, credentials entries escaping their folder. `validate`, `inspect`, `convert` and
`restore` refuse each one with one typed line, before anything is written (a bomb without being
inflated); and a property: any mutation of a valid archive (truncated, bytes flipped, members
dropped or renamed, lines corrupted) validates and restores, or is refused that way and leaves
the target exactly as it was."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import core.archive
from cli import app
from core.archive import ArchiveLimits, SnapshotReader, SnapshotWriter
from core.errors import CfysnapError, CorruptArchive
from core.model import Version
from core.search import SearchClient
from core.validate import validate_archive
from pipelines import convert, restore, verify
from pipelines.inspect import inspect_archive
from pipelines.sample.archive import write_sample_archive
from pipelines.sample.generate import ManagerSpec
from tests.conftest import fresh_manager
from transforms.restore import Batching

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
BOMB_MEMBER = "blueprints/bomb/zeros.bin"
GiB = 2**30


# ------------------------------------------------------------------------------- archives
def sample(path: Path, version: Version = Version.V3_4) -> Path:
    write_sample_archive(ManagerSpec(version=version, events=20, logs=20), path)
    return path


def rewrite(source: Path, path: Path, *, drop: tuple[str, ...] = (), **add: bytes) -> Path:
    """`source`'s members (less `drop`) plus `add` (name with `/` for `__`), written by cfysnap's
    own writer: a consistent manifest, so only what the test plants is wrong."""
    extra = {name.replace("__", "/"): data for name, data in add.items()}
    with SnapshotReader(source) as snap, SnapshotWriter(path) as out:
        for name in snap.file_names():
            if name in drop or name in extra or name == "manifest.json":
                continue
            with snap.open(name) as f:
                out.write_stream(name, f)
        for name, data in extra.items():
            out.write_bytes(name, data)
    return path


def raw_rewrite(source: Path, path: Path, replace: dict[str, bytes]) -> Path:
    """`source` with members replaced byte for byte by the standard library's zipfile (the
    manifest kept as it was: what a hand-edited or forged archive looks like)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, replace.get(info.filename, src.read(info)))
    return path


def es_data_with(source: Path, line: bytes) -> bytes:
    """The source's es_data with `line` appended."""
    with zipfile.ZipFile(source) as z:
        return z.read("es_data") + line + b"\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample(tmp_path_factory.mktemp("base") / "snap-3.4.zip")


@pytest.fixture(scope="module")
def bomb(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 3.4 snapshot whose blueprints/ holds one member of 3 GiB of zeros (~3 MB
    deflated), listed in a consistent manifest: only its size and ratio give it away."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    zeros = bytes(64 << 20)
    with SnapshotReader(base) as snap, SnapshotWriter(path) as out:
        for name in snap.file_names():
            if name != "manifest.json":
                with snap.open(name) as f:
                    out.write_stream(name, f)
        with out.open_member(BOMB_MEMBER) as f:
            for _ in range(48):
                f.write(zeros)
    assert path.stat().st_size < 8 << 20
    return path


@pytest.fixture
def opened_members(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the members any zipfile opens for reading during the test."""
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if mode == "r":
            opened.append(name if isinstance(name, str) else name.filename)
        return real_open(self, name, mode, *args, **kw)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    return opened


def one_line_error(run: Any) -> CfysnapError:
    """The typed error `run()` raises; its message is one line."""
    with pytest.raises(CfysnapError) as info:
        run()
    assert "\n" not in str(info.value) and str(info.value)
    return info.value


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


# --------------------------------------------------------------------------------- zip bombs
def test_a_zip_bomb_is_refused_in_seconds_without_being_inflated(
    bomb: Path, tmp_path: Path, opened_members: list[str]
) -> None:
    started = time.monotonic()
    problems = validate_archive(bomb)
    assert [str(p) for p in problems] == [
        f"{BOMB_MEMBER}: compressed 1,028:1 (3.0 MiB to 3.0 GiB), more than the 100:1 allowed "
        "(a zip bomb?)"
    ]
    error = one_line_error(lambda: inspect_archive(bomb))
    assert isinstance(error, CorruptArchive) and error.member == BOMB_MEMBER
    output = tmp_path / "out" / "converted.zip"
    error = one_line_error(lambda: convert.run(convert.ConvertConfig(bomb, output, Version.V3_4)))
    assert error.member == BOMB_MEMBER
    assert not (tmp_path / "out").exists()  # not even the output's folder
    assert time.monotonic() - started < 5
    assert BOMB_MEMBER not in opened_members


def test_the_command_line_names_the_bomb_in_one_line_and_exits_1(bomb: Path, tmp_path: Path) -> None:
    checked = cli("validate", str(bomb))
    assert checked.returncode == 1
    assert checked.stderr.splitlines() == [
        f"{BOMB_MEMBER}: compressed 1,028:1 (3.0 MiB to 3.0 GiB), more than the 100:1 allowed "
        "(a zip bomb?)",
        f"invalid: {bomb}: 1 problem",
    ]
    converted = cli("convert", str(bomb), str(tmp_path / "x.zip"), "--to", "3.4")
    assert converted.returncode == 1 and len(converted.stderr.splitlines()) == 1
    assert converted.stderr.startswith(f"error: {bomb}: {BOMB_MEMBER}: compressed 1,028:1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.server
def test_restore_refuses_the_bomb_before_anything_and_the_target_stays_as_it_was(
    bomb: Path, target: SearchClient, tmp_path: Path
) -> None:
    before = target_state(target, tmp_path)
    started = time.monotonic()
    restored = cli("restore", str(bomb), "--es", target.url, "--fs-root", str(tmp_path / "fs"),
                   "--credentials-dir", str(tmp_path / "creds"))
    assert time.monotonic() - started < 5  # the whole command, interpreter and imports included
    assert restored.returncode == 1, restored.stderr
    assert restored.stderr.splitlines() == [
        f"error: {bomb}: {BOMB_MEMBER}: compressed 1,028:1 (3.0 MiB to 3.0 GiB), more than the "
        "100:1 allowed (a zip bomb?)"
    ]
    assert target_state(target, tmp_path) == before


def test_limits_are_options_raised_or_lowered(base: Path, tmp_path: Path) -> None:
    # 2 MiB of zeros: 1,000:1, refused by default, allowed when the ratio is raised
    zeros = rewrite(base, tmp_path / "zeros.zip", blueprints__bp__zeros=bytes(2 << 20))
    assert validate_archive(zeros)[0].reason.startswith("compressed 1,0")
    assert validate_archive(zeros, limits=ArchiveLimits(ratio=5000)) == []
    assert cli("validate", str(zeros), "--max-ratio", "5000").returncode == 0
    # a member past --max-member-size; every member together past --max-total-size
    small = cli("validate", str(base), "--max-member-size", "1KiB")
    assert small.returncode == 1 and "es_data: " in small.stderr
    assert "more than the 1.0 KiB allowed" in small.stderr
    total = cli("validate", str(base), "--max-total-size", "10KB")
    assert total.returncode == 1
    assert f"{base}: " in total.stderr and "uncompressed in all, more than the 9.8 KiB allowed" in total.stderr
    bad = cli("validate", str(base), "--max-member-size", "lots")
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("error: Invalid value: 'lots' is not a size (e.g. 512MiB, 3GiB, "
                                  "100MB, 1048576) (see `cfysnap validate --help`)")


def test_a_member_declaring_another_size_than_the_manifest_is_refused_before_reading(
    base: Path, tmp_path: Path, opened_members: list[str]
) -> None:
    with zipfile.ZipFile(base) as z:
        blueprint = next(n for n in z.namelist() if n.startswith("blueprints/"))
        grown = z.read(blueprint) + b"# one more line\n"
    forged = raw_rewrite(base, tmp_path / "forged.zip", {blueprint: grown})
    opened_members.clear()
    problems = validate_archive(forged)
    size = len(grown)
    assert [str(p) for p in problems] == [
        f"{blueprint}: the zip says {size:,} bytes, manifest.json says {size - 16:,} bytes"
    ]
    assert opened_members == ["manifest.json"]


# ------------------------------------------------------------------------------- bad lines
def noise(n: int) -> bytes:
    """`n` bytes of printable noise (base64 of random bytes): compresses ~1.3:1."""
    return base64.b64encode(os.urandom(n * 3 // 4 + 3))[:n]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            b'{"_index": "cloudify_storage", "_type": "node", "_id": "deep", "_source": {"x": '
            + b"[" * 10_000 + b"]" * 10_000 + b"}}",
            "JSON nested deeper than 200 levels",
        ),
        (
            b'{"_index": "cloudify_storage", "_type": "node", "_id": "utf", "_source": {"x": "\xff\xfe"}}',
            "invalid UTF-8 at byte 80",  # the offset of \xff in the line
        ),
        (
            b'{"_index": "cloudify_storage", "_type": "node", "_id": "long", "_source": {"x": "'
            + noise(2 << 20) + b'"}}',
            "line longer than 1 MiB",
        ),
    ],
    ids=["10000-deep", "invalid-utf8", "too-long"],
)
def test_an_absurd_es_data_line_is_named_by_its_number(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: bytes, reason: str
) -> None:
    monkeypatch.setattr(core.archive, "MAX_LINE_BYTES", 1 << 20)  # the 100 MiB cap, scaled down
    es_data = es_data_with(base, line)
    lineno = es_data.count(b"\n")
    path = rewrite(base, tmp_path / "bad.zip", es_data=es_data)
    assert [str(p) for p in validate_archive(path)] == [f"es_data:{lineno}: {reason}"]
    error = one_line_error(lambda: inspect_archive(path))
    assert isinstance(error, CorruptArchive) and (error.member, error.line) == ("es_data", lineno)


def test_json_members_nested_too_deep_are_refused(base: Path, tmp_path: Path) -> None:
    deep = b'{"d": {"n": {"i": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}}"
    path = rewrite(base, tmp_path / "deep-agents.zip", **{"agents.json": deep})
    assert [str(p) for p in validate_archive(path)] == [
        "agents.json: JSON nested deeper than 200 levels"
    ]


@pytest.mark.parametrize(
    "name",
    [
        "snapshot-credentials/dep_vm/nested/agent_key",
        "snapshot-credentials/agent_key",
        "snapshot-credentials/dep_vm/id_rsa",
        "snapshot-credentials/./agent_key",
    ],
)
def test_credentials_entries_must_be_a_folder_and_its_agent_key(
    base: Path, tmp_path: Path, name: str
) -> None:
    path = rewrite(base, tmp_path / "creds.zip", **{name: b"KEY"})
    assert [str(p) for p in validate_archive(path)] == [
        f"{name}: not snapshot-credentials/<deployment>_<node>/agent_key"
    ]


@pytest.mark.server
def test_restore_refuses_each_absurd_archive_and_writes_nothing(
    base: Path, target: SearchClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core.archive, "MAX_LINE_BYTES", 1 << 20)
    deep = b'{"_index": "cloudify_storage", "_type": "node", "_id": "d", "_source": {"x": ' + (
        b"[" * 300 + b"]" * 300 + b"}}"
    )
    archives = {
        "deep": rewrite(base, tmp_path / "deep.zip", es_data=es_data_with(base, deep)),
        "key": rewrite(base, tmp_path / "key.zip", **{"snapshot-credentials/x/y/agent_key": b"K"}),
        "zeros": rewrite(base, tmp_path / "zeros.zip", blueprints__bp__zeros=bytes(2 << 20)),
    }
    before = target_state(target, tmp_path)
    for kind, archive in archives.items():
        error = one_line_error(lambda archive=archive: restore.run(restore_config(tmp_path, archive, target)))
        assert isinstance(error, CorruptArchive), kind
        assert target_state(target, tmp_path) == before, kind


# ------------------------------------------------------------------------- the property
MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 0.999)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0.0, 0.999), st.integers(1, 255)),
                                        min_size=1, max_size=4)),
    st.tuples(st.just("drop"), st.integers(0, 1000)),
    st.tuples(st.just("rename"), st.integers(0, 1000),
              st.sampled_from(["../escape", "/etc/cron.d/x", "blueprints/../../x", "es_data.bak",
                               "snapshot-credentials/a/b/agent_key", "blueprints/renamed.yaml",
                               "metadata.json", "C:\\evil"])),
    st.tuples(st.just("line"), st.integers(0, 1000),
              st.sampled_from([b"", b"{", b"null", b'{"_index": "cloudify_storage"}', b"\xff\xfe",
                               b'{"_index": "x", "_type": "y", "_id": "z", "_source": 5}',
                               b"[" * 5000, b'{"_index": "cloudify_storage", "_type": "node", '
                               b'"_id": "n", "_source": {"a": NaN}}'])),
)


def mutate(source: Path, path: Path, mutation: tuple[Any, ...]) -> Path:
    kind = mutation[0]
    data = bytearray(source.read_bytes())
    if kind == "truncate":
        path.write_bytes(bytes(data[: int(len(data) * mutation[1])]))
    elif kind == "flip":
        for where, bits in mutation[1]:
            data[int(len(data) * where)] ^= bits
        path.write_bytes(bytes(data))
    else:
        with zipfile.ZipFile(source) as src:
            infos = src.infolist()
            members = [(i.filename, src.read(i)) for i in infos]
        victim = mutation[1] % len(members)
        if kind == "drop":
            del members[victim]
        elif kind == "rename":
            members[victim] = (mutation[2], members[victim][1])
        else:  # replace one es_data line
            lines = dict(members)["es_data"].split(b"\n")
            lines[mutation[1] % len(lines)] = mutation[2]
            members = [(n, b"\n".join(lines) if n == "es_data" else d) for n, d in members]
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
            for name, member in members:
                dst.writestr(name, member)
    return path


@pytest.mark.filterwarnings("ignore:Duplicate name")  # a rename onto metadata.json: intended
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=MUTATIONS)
def test_any_mutated_archive_validates_or_is_refused_in_one_typed_line(
    base: Path, tmp_path: Path, mutation: tuple[Any, ...]
) -> None:
    path = mutate(base, tmp_path / "mutated.zip", mutation)
    problems = validate_archive(path)  # never raises
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == (1 if problems else 0), result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    for problem in problems:
        assert "\n" not in str(problem)
    out = tmp_path / "converted.zip"
    out.unlink(missing_ok=True)  # one tmp_path for every example: start each without an output
    try:
        convert.run(convert.ConvertConfig(path, out, Version.V3_4, force=True, progress=False))
    except CfysnapError as exc:
        assert problems or not isinstance(exc, CorruptArchive), exc
        assert "\n" not in str(exc)
        assert not out.exists()
    else:
        assert not problems


@pytest.mark.server
@pytest.mark.filterwarnings("ignore:Duplicate name")
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=MUTATIONS)
def test_any_mutated_archive_restores_or_changes_nothing(
    base: Path, target: SearchClient, tmp_path: Path, mutation: tuple[Any, ...]
) -> None:
    # hypothesis runs every example in one call of the test: `target` is one fresh manager,
    # made fresh again after an example that restored
    work = tmp_path / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    path = mutate(base, tmp_path / "mutated.zip", mutation)
    before = target_state(target, work)
    try:
        summary = restore.run(restore_config(work, path, target))
    except CfysnapError as exc:
        assert "\n" not in str(exc) and str(exc)
        assert target_state(target, work) == before
    else:
        assert summary.loaded == summary.expected
        report = verify.run(verify.VerifyConfig(archive=path, target=target.url,
                                                fs_root=work / "fs", credentials_dir=work / "creds"))
        assert report.ok, report.render()
        fresh_manager(target)


# ------------------------------------------------------------------------------- helpers
def restore_config(work: Path, archive: Path, target: SearchClient) -> restore.RestoreConfig:
    return restore.RestoreConfig(archive=archive, target=target.url, fs_root=work / "fs",
                                 credentials_dir=work / "creds", progress=False,
                                 batching=Batching(batch_docs=50))


def target_state(target: SearchClient, work: Path) -> dict[str, Any]:
    """What a restore could change: every document with its source, every file under `work`
    but the archives."""
    target.refresh()
    docs = {}
    for (index, doc_type), _ in target.logical_indices("*").items():
        for hit in target.scan(index, [doc_type]):
            docs[(index, doc_type, hit["_id"])] = json.dumps(hit["_source"], sort_keys=True)
    files = {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*"))
             if p.is_file() and p.suffix != ".zip"}
    return {"docs": docs, "files": files}
