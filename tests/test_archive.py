"""The archive library and `validate`/`inspect`: every rejection is one line naming where, exit 1."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import sys
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli import app
from core.archive import (
    DeflatedPart,
    PartDeflater,
    SnapshotReader,
    SnapshotWriter,
    dump_hit,
    parse_hit,
    safe_target_path,
)
from core.errors import CorruptArchive, DamagedMember, UnsafePath
from core.model import Version
from core.validate import validate_archive
from pipelines.inspect import inspect_archive
from pipelines.sample.archive import write_sample_archive
from pipelines.sample.generate import ManagerSpec

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent

META_33 = {"has_cloudify_events": False, "snapshot_version": "3.3"}
HIT = {
    "_index": "cloudify_storage",
    "_type": "blueprint",
    "_id": "bp1",
    "_score": 0.0,
    "_source": {"id": "bp1", "plan": {}, "description": "déploiement ✓"},
}


def raw_zip(path: Path, members: dict[str, bytes | str]) -> Path:
    """A zip written with the standard library only, so tests can craft what our writer refuses."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def good_members(**extra: bytes | str) -> dict[str, bytes | str]:
    members: dict[str, bytes | str] = {
        "metadata.json": json.dumps(META_33),
        "es_data": dump_hit(HIT) + "\n",
        "agents.json": "{}",
    }
    members.update(extra)
    return members


def run_validate(path: Path) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["validate", str(path)])
    return result.exit_code, [line for line in result.output.splitlines() if line]


# ---------------------------------------------------------------------------- validate: rejects
def test_valid_archive_passes(tmp_path: Path) -> None:
    code, lines = run_validate(raw_zip(tmp_path / "ok.zip", good_members()))
    assert code == 0
    assert lines == [f"valid: {tmp_path / 'ok.zip'}"]


def test_truncated_zip(tmp_path: Path) -> None:
    whole = raw_zip(tmp_path / "whole.zip", good_members()).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole[: len(whole) // 2])
    code, lines = run_validate(cut)
    assert code == 1
    assert lines[0].startswith(f"{cut}: not a readable zip archive (truncated or corrupt")
    assert lines[-1] == f"invalid: {cut}: 1 problem"


def test_non_json_line_names_its_line(tmp_path: Path) -> None:
    es_data = dump_hit(HIT) + "\n" + dump_hit({**HIT, "_id": "bp2"}) + "\n{not json\n"
    code, lines = run_validate(raw_zip(tmp_path / "a.zip", good_members(es_data=es_data)))
    assert code == 1
    assert lines[0] == "es_data:3: not valid JSON (Expecting property name enclosed in double quotes)"


def test_line_without_type(tmp_path: Path) -> None:
    no_type = {k: v for k, v in HIT.items() if k != "_type"}
    code, lines = run_validate(raw_zip(tmp_path / "a.zip", good_members(es_data=dump_hit(no_type) + "\n")))
    assert code == 1
    assert lines[0] == "es_data:1: missing or non-string _type"


def test_unknown_snapshot_version(tmp_path: Path) -> None:
    meta = json.dumps({"has_cloudify_events": False, "snapshot_version": "4.0.1"})
    code, lines = run_validate(raw_zip(tmp_path / "a.zip", good_members(**{"metadata.json": meta})))
    assert code == 1
    assert lines[0] == "metadata.json: unsupported snapshot_version 4.0.1 (known: 3.2, 3.3, 3.4.x)"


def test_missing_metadata(tmp_path: Path) -> None:
    members = good_members()
    del members["metadata.json"]
    code, lines = run_validate(raw_zip(tmp_path / "a.zip", members))
    assert code == 1
    assert lines[0] == "metadata.json: metadata.json is missing"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("blueprints/../../evil.sh", "'..' escapes the archive root"),
        ("/etc/cron.d/evil", "absolute path escapes the archive root"),
    ],
)
def test_entries_escaping_the_root(tmp_path: Path, name: str, reason: str) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in good_members().items():
            zf.writestr(member, data)
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # ZipInfo() would strip a leading '/'; set the raw name like an attacker
        zf.writestr(info, b"#!/bin/sh\nrm -rf /\n")
    code, lines = run_validate(path)
    assert code == 1
    assert lines[0] == f"{name}: {reason}"


def test_symlink_entry(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in good_members().items():
            zf.writestr(member, data)
        info = zipfile.ZipInfo("blueprints/bp1/link")
        info.external_attr = (0o120777) << 16
        zf.writestr(info, "/etc/passwd")
    code, lines = run_validate(path)
    assert code == 1
    assert lines[0] == "blueprints/bp1/link: symbolic link entry"


def test_manifest_checksum_mismatch(tmp_path: Path) -> None:
    good = tmp_path / "good.zip"
    with SnapshotWriter(good) as w:
        w.write_json("metadata.json", META_33)
        w.write_hits([HIT])
        w.write_json("agents.json", {})
        w.write_bytes("blueprints/bp1/blueprint.yaml", b"tosca_definitions_version: cloudify_dsl_1_2\n")
    # rebuild the same archive with one member's bytes changed but the manifest kept
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "blueprints/bp1/blueprint.yaml":
                data = b"tosca_definitions_version: cloudify_dsl_1_3\n"
            dst.writestr(info.filename, data)
    assert run_validate(good)[0] == 0
    code, lines = run_validate(bad)
    assert code == 1
    assert lines[0] == "blueprints/bp1/blueprint.yaml: sha256 does not match manifest.json"


def test_duplicate_documents_named_with_lines(tmp_path: Path) -> None:
    es_data = "".join(dump_hit(h) + "\n" for h in [HIT, {**HIT, "_id": "bp2"}, HIT])
    code, lines = run_validate(raw_zip(tmp_path / "a.zip", good_members(es_data=es_data)))
    assert code == 1
    assert lines[0] == "es_data:3: duplicate document cloudify_storage/blueprint/bp1 (first at line 1)"


def test_validate_never_prints_a_traceback_for_a_missing_file(tmp_path: Path) -> None:
    """A path that is not there is a usage error (exit 2), one line, as for every command."""
    missing = tmp_path / "nope.zip"
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "validate", str(missing)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (f"error: Invalid value for 'ARCHIVE': File '{missing}' does not exist. "
                          "(see `cfysnap validate --help`)\n")


# ----------------------------------------------------------------------------- library contracts
def test_parse_hit_errors_carry_the_line() -> None:
    with pytest.raises(CorruptArchive) as err:
        parse_hit(b'{"_index": "i", "_type": "t", "_id": "x", "_source": []}', 7)
    assert (err.value.member, err.value.line, err.value.reason) == ("es_data", 7, "missing or non-object _source")


def test_writer_is_atomic_on_error(tmp_path: Path) -> None:
    out = tmp_path / "out.zip"
    with pytest.raises(RuntimeError, match="boom"), SnapshotWriter(out) as w:
        w.write_json("metadata.json", META_33)
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_unsafe_names(tmp_path: Path) -> None:
    with pytest.raises(UnsafePath), SnapshotWriter(tmp_path / "x.zip") as w:
        w.write_bytes("../x", b"")
    assert not (tmp_path / "x.zip").exists()


def test_credentials_members_are_owner_only(tmp_path: Path) -> None:
    out = tmp_path / "k.zip"
    with SnapshotWriter(out) as w:
        w.write_bytes("snapshot-credentials/dep1_vm/agent_key", b"-----BEGIN FAKE KEY-----\n")
        w.write_bytes("blueprints/bp1/blueprint.yaml", b"x: 1\n")
    with zipfile.ZipFile(out) as zf:
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in zf.infolist()}
    assert modes["snapshot-credentials/dep1_vm/agent_key"] == 0o600
    assert modes["blueprints/bp1/blueprint.yaml"] == 0o644


def test_safe_target_path(tmp_path: Path) -> None:
    assert safe_target_path(tmp_path, "blueprints/a/b.yaml") == (tmp_path / "blueprints/a/b.yaml").resolve()
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(UnsafePath):
            safe_target_path(tmp_path, bad)


def test_writer_manifest_lists_members_and_counts(tmp_path: Path) -> None:
    out = tmp_path / "m.zip"
    with SnapshotWriter(out) as w:
        w.write_json("metadata.json", META_33)
        w.write_hits([HIT, {**HIT, "_id": "bp2"}])
    with SnapshotReader(out) as snap:
        manifest = snap.manifest()
    assert manifest is not None
    assert manifest["documents"] == {"cloudify_storage/blueprint": 2}
    assert sorted(manifest["members"]) == ["es_data", "metadata.json"]
    assert manifest["members"]["metadata.json"]["size"] == len(json.dumps(META_33))


class _Kept(io.BytesIO):
    """A BytesIO whose bytes outlive its close (PartDeflater closes its target)."""

    def close(self) -> None:
        self.kept = self.getvalue()
        super().close()


def _deflated(chunks: list[bytes]) -> tuple[DeflatedPart, bytes]:
    target = _Kept()
    deflater = PartDeflater(target)
    for chunk in chunks:
        deflater.write(chunk)
    return deflater.close(), target.kept


_CHUNK = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda n, b: b * n, st.integers(0, 50_000), st.sampled_from([b"a", b'{"x": 1}\n'])),
)


@settings(max_examples=40, deadline=None)
@given(parts=st.lists(st.lists(_CHUNK, max_size=4), max_size=4))
def test_a_member_of_deflated_parts_is_their_bytes_in_order(
    tmp_path_factory: pytest.TempPathFactory, parts: list[list[bytes]]
) -> None:
    out = tmp_path_factory.mktemp("parts") / "p.zip"
    deflated = [_deflated(chunks) for chunks in parts]
    with SnapshotWriter(out) as w:
        w.write_deflated("es_data", [d for d, _ in deflated], lambda i: io.BytesIO(deflated[i][1]))
        w.write_bytes("after", b"next member")
    whole = b"".join(b"".join(chunks) for chunks in parts)
    with zipfile.ZipFile(out) as z:
        assert z.testzip() is None  # every member's CRC-32 checks
        assert z.read("es_data") == whole
        assert z.getinfo("es_data").file_size == len(whole)
        assert z.read("after") == b"next member"
        manifest = json.loads(z.read("manifest.json"))
        info = z.getinfo("es_data")
    # the member's deflate stream is whole: it ends with a final block (zipfile does not check)
    with open(out, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        f.seek(name_len + extra_len, 1)
        inflate = zlib.decompressobj(-15)
        assert inflate.decompress(f.read(info.compress_size)) == whole
        assert inflate.eof and not inflate.unused_data
    assert manifest["members"]["es_data"] == {
        "size": len(whole), "sha256": hashlib.sha256(whole).hexdigest()
    }


def test_a_deflated_part_records_its_own_bytes() -> None:
    data = b'{"_id": "a"}\n' * 1000
    part, stored = _deflated([data[:5000], data[5000:]])
    assert (part.size, part.compressed) == (len(data), len(stored))
    assert part.crc32 == zlib.crc32(data)
    assert part.sha256 == hashlib.sha256(data).hexdigest()
    # a sync-flushed raw deflate stream: all of it inflates, and it has no final block
    inflate = zlib.decompressobj(-15)
    assert inflate.decompress(stored) == data and not inflate.eof
    assert stored.endswith(b"\x00\x00\xff\xff")


@settings(max_examples=30, deadline=None)
@given(data=_CHUNK, read=st.integers(1, 70_000))
def test_a_deflated_member_reads_as_zipfile_reads_it(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, read: int
) -> None:
    """SnapshotReader inflates deflated members with ISA-L (`_InflatedMember`), not zipfile's
    zlib: the same bytes, read in any size."""
    path = tmp_path_factory.mktemp("inflate") / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("es_data", data)
        z.writestr("metadata.json", json.dumps(META_33))
    with SnapshotReader(path) as snap, snap.open("es_data") as member:
        chunks = iter(lambda: member.read(read), b"")
        assert b"".join(chunks) == data


def test_a_deflated_member_failing_its_crc_is_named(tmp_path: Path) -> None:
    path = tmp_path / "crc.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("es_data", b'{"x": 1}\n' * 5000)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("es_data")
    data = bytearray(path.read_bytes())
    for at in (info.header_offset + 14, data.rindex(b"PK\x01\x02") + 16):  # both CRC fields
        data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with SnapshotReader(path) as snap, snap.open("es_data") as member:
        with pytest.raises(DamagedMember, match="Bad CRC-32 for file 'es_data'"):
            member.read()


# ---------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("version", list(Version))
def test_round_trip_keeps_members_and_lines(tmp_path: Path, version: Version) -> None:
    spec = ManagerSpec.sized(version, 600, seed=3)
    original = tmp_path / "orig.zip"
    write_sample_archive(spec, original)
    copy = tmp_path / "copy.zip"
    with SnapshotReader(original) as snap, SnapshotWriter(copy) as w:
        for name in snap.file_names():
            if name in ("es_data", "manifest.json"):
                continue
            with snap.open(name) as src:
                w.write_stream(name, src)
        w.write_hits(hit for _, hit in snap.iter_hits())
    with SnapshotReader(original) as a, SnapshotReader(copy) as b:
        assert sorted(a.file_names()) == sorted(b.file_names())
        for name in a.file_names():
            if name not in ("es_data", "manifest.json"):
                assert a.open(name).read() == b.open(name).read(), name
        lines_a = Counter(line for _, line in a.iter_lines())
        lines_b = Counter(line for _, line in b.iter_lines())
        assert lines_a == lines_b
        assert len(lines_a) > 100
    assert validate_archive(copy) == []


def test_inspect_reports_counts_from_es_data(tmp_path: Path) -> None:
    spec = ManagerSpec.sized(Version.V3_2, 300, seed=1)
    path = tmp_path / "s.zip"
    write_sample_archive(spec, path)
    report = inspect_archive(path)
    with SnapshotReader(path) as snap:
        expected = Counter((h["_index"], h["_type"]) for _, h in snap.iter_hits())
    assert report.documents == dict(expected)
    assert report.snapshot_version == "3.2"
    assert report.has_cloudify_events is True
    assert ("cloudify_events", "cloudify_event") in report.documents
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["total_documents"] == sum(expected.values())
    assert data["snapshot_version"] == "3.2"


# ------------------------------------------------------------------------ review regressions
def test_duplicate_entry_names_are_reported(tmp_path: Path) -> None:
    """A second `metadata.json` entry (no manifest to catch it) shadows the first one: invalid."""
    path = tmp_path / "a.zip"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "w") as zf:
        for member, data in good_members().items():
            zf.writestr(member, data)
        zf.writestr("metadata.json", json.dumps({**META_33, "has_cloudify_events": True}))
    code, lines = run_validate(path)
    assert code == 1
    assert lines == ["metadata.json: entry appears twice in the archive", f"invalid: {path}: 1 problem"]


def test_writer_removes_its_temporary_file_when_commit_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.archive as archive_mod

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archive_mod.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"), SnapshotWriter(tmp_path / "out.zip") as w:
        w.write_json("metadata.json", META_33)
    assert list(tmp_path.iterdir()) == []


def test_written_archive_is_owner_only(tmp_path: Path) -> None:
    """Archives carry broker passwords and agent keys: the file itself is 0600 whatever the umask."""
    import os

    out = tmp_path / "k.zip"
    old = os.umask(0o022)
    try:
        with SnapshotWriter(out) as w:
            w.write_json("metadata.json", META_33)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o600


def test_es_data_page_is_each_hits_line_and_reserialises_sources_spanning_lines() -> None:
    import msgspec

    from core.archive import dump_hit, es_data_line, es_data_page
    from core.search import RawHit

    compact = RawHit("cloudify_storage", "node", "n\u00e9 1", msgspec.Raw(b'{"id": "n1", "x": [1, 2]}'))
    pretty = RawHit("cloudify_storage", "node", "n2", msgspec.Raw(b'{\n  "id": "n2",\r\n  "y": "a\\nb"\n}'))
    event = RawHit("logstash-2015.12.01", "cloudify_event", "e1", msgspec.Raw(b'{"message": {"text": "t"}}'))

    plain = es_data_page([compact, event])
    assert plain == (
        b'{"_index": "cloudify_storage", "_type": "node", "_id": "n\\u00e9 1", "_score": 0.0, '
        b'"_source": {"id": "n1", "x": [1, 2]}}\n'
        b'{"_index": "logstash-2015.12.01", "_type": "cloudify_event", "_id": "e1", "_score": 0.0, '
        b'"_source": {"message": {"text": "t"}}}\n'
    )
    mixed = es_data_page([compact, pretty, event])
    assert mixed.splitlines() == [
        es_data_line(h.index, str(h.type), h.id, h.source) for h in (compact, pretty, event)
    ]
    hit = {"_index": "cloudify_storage", "_type": "node", "_id": "n2", "_score": 0.0,
           "_source": {"id": "n2", "y": "a\nb"}}
    assert mixed.splitlines()[1] == dump_hit(hit).encode()
    assert es_data_page([]) == b""


# ------------------------------------------------------------ validate: es_data in two parts
_SPLIT = r"""
import json, os, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import core.archive, core.validate as V
from core.forked import Forked
from core.model import Version
from pipelines.restore import check_archive
CAP = core.archive.MAX_LINE_BYTES
forks = []
_fork = Forked._fork
def counted(self):
    _fork(self); forks.append(self.forked)
Forked._fork = counted
_later = V._later_part
def later_part(*args):  # which process checks the second part: the child, never here
    with open(sys.argv[3], "a") as f:
        f.write(f"{os.getpid()}\n")
    return _later(*args)
V._later_part = later_part
def both(path):
    core.archive.MAX_LINE_BYTES = 300  # a line over the cap, without writing 64 MiB
    V.SPLIT_BYTES = 10**12
    one = [str(p) for p in V.validate_archive(path)]
    V.SPLIT_BYTES = 1  # every es_data: two parts, split at half its bytes
    before = len(forks)
    two = [str(p) for p in V.validate_archive(path, split=True)]
    return {"one": one, "two": two, "forked": forks[before:]}
def plans(path):
    core.archive.MAX_LINE_BYTES, out, calls = CAP, [], []
    meanwhile = lambda: calls.append(os.getpid())
    for size in (10**12, 1):  # one pass, then two (this process's share a sixteenth: meanwhile)
        V.SPLIT_BYTES = size
        with tempfile.TemporaryDirectory() as d:
            try:
                ctx, plan = check_archive(Path(path), Version.V3_4, Path(d) / "c", None,
                                          Path(d), meanwhile=meanwhile)
            except Exception as exc:
                out.append(f"{type(exc).__name__}: {exc}")
                continue
            out.append([sorted([*k, n] for k, n in plan.expected.items()), plan.blueprint_ids,
                        plan.deployment_ids, plan.agents_matched])
    return {"one": out[0], "two": out[1], "meanwhile": calls == [os.getpid()], "forked": forks}
cases = json.loads(sys.argv[1])
out = {name: (plans(path) if name.startswith("plan") else both(path)) for name, path in cases.items()}
print(json.dumps({**out, "main": os.getpid()}))
"""


def _lines(n: int, **replace: str) -> list[str]:
    lines = [dump_hit({**HIT, "_id": f"bp{i}", "_source": {"id": f"bp{i}", "n": "x" * 20}})
             for i in range(1, n + 1)]
    for lineno, text in replace.items():
        lines[int(lineno[1:]) - 1] = text
    return lines


def test_a_check_in_two_parts_finds_what_one_pass_finds(tmp_path: Path) -> None:
    """`validate_archive(split=True)`: the second half of es_data checked in a forked child.
    For each kind of problem, in either half, across the halves (a duplicate, the manifest's
    sha256), the same problems in the same order as one pass; a pass that cannot go on (a line
    over the cap, a stream failing its CRC) stops where one pass stops; and a restore's plan
    gathered in two parts is the plan of one pass, its `meanwhile` work done once, here."""
    def archive(name: str, lines: list[str], **members: bytes | str) -> str:
        return str(raw_zip(tmp_path / f"{name}.zip",
                           good_members(es_data="\n".join(lines) + "\n", **members)))

    cases = {
        "valid": archive("valid", _lines(40)),
        "bad lines": archive("bad", _lines(40, l3="{not json", l36='{"_index": "x"}')),
        "duplicate across": archive("dup", _lines(40, l38=_lines(2)[1])),
        "long line late": archive("long", _lines(40, l30="[" + " " * 400 + "]", l35="{bad")),
        "long line early": archive("early", _lines(40, l5="[" + " " * 400 + "]", l35="{bad")),
    }
    # the manifest's sha256 of es_data, which only the second part reads to the end
    with SnapshotWriter(tmp_path / "signed.zip") as w:
        w.write_json("metadata.json", META_33)
        w.write_hits([json.loads(line) for line in _lines(40)])
        w.write_json("agents.json", {})
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(tmp_path / "signed.zip") as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data.replace(b'"bp40"', b'"bq40"') if info.filename == "es_data" else data)
    cases["signed"], cases["tampered"] = str(tmp_path / "signed.zip"), str(tampered)
    # a bit flipped in a stored es_data: every line parses, the CRC fails at the end
    crc = tmp_path / "crc.zip"
    with zipfile.ZipFile(crc, "w", zipfile.ZIP_STORED) as z:
        z.writestr("metadata.json", json.dumps(META_33))
        z.writestr("es_data", "\n".join(_lines(40)) + "\n")
    data = crc.read_bytes()
    at = data.index(b'"bp20"')
    crc.write_bytes(data[:at] + b'"bq20"' + data[at + 6:])
    cases["crc"] = str(crc)
    cases["plan"] = str(write_sample(tmp_path / "plan.zip", Version.V3_2))
    # an event the restore cannot place, in the second half: the plan's refusal comes from there
    no_time = dump_hit({"_index": "logstash-2015.12.01", "_type": "cloudify_event", "_id": "e9",
                        "_source": {"timestamp": "soon"}})
    cases["plan refused"] = archive("refused", _lines(40, l38=no_time))
    pids = tmp_path / "second-part-pids"
    run = subprocess.run([sys.executable, "-c", _SPLIT, json.dumps(cases), str(ROOT), str(pids)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    main = out.pop("main")
    for name, got in out.items():
        assert got["one"] == got["two"], name
    assert all(out[name]["forked"] == [True] for name in cases if not name.startswith("plan"))
    assert out["plan"]["forked"][-1] is True
    second = [int(pid) for pid in pids.read_text().split()]
    assert len(second) == len(cases) and main not in second  # children's, every one
    assert out["plan refused"]["two"] == (
        "CorruptArchive: es_data:38: event cloudify_event/e9 has no parseable @timestamp or timestamp")
    assert out["valid"]["two"] == [] and out["signed"]["two"] == []
    assert out["bad lines"]["two"] == ["es_data:3: not valid JSON (Expecting property name enclosed in double quotes)",
                                       "es_data:36: missing or non-string _type"]
    assert out["duplicate across"]["two"] == [
        "es_data:38: duplicate document cloudify_storage/blueprint/bp2 (first at line 2)"]
    assert out["long line late"]["two"] == ["es_data:30: line longer than 0 MiB"]
    assert out["long line early"]["two"] == ["es_data:5: line longer than 0 MiB"]
    assert out["tampered"]["two"] == ["es_data: sha256 does not match manifest.json"]
    # (the whole member inflates in one read here: no line is known to have been read)
    assert out["crc"]["two"] == ["es_data: cannot be read to the end (Bad CRC-32 for file 'es_data')"]
    assert out["plan"]["meanwhile"] is True  # called once, here, only by the split check
    expected, blueprints, deployments, matched = out["plan"]["two"]
    assert matched > 0 and blueprints and deployments and sum(n for *_, n in expected) > 100


def write_sample(path: Path, version: Version) -> Path:
    write_sample_archive(ManagerSpec(version=version, events=30, logs=30), path)
    return path


@pytest.mark.parametrize("case", ["problems", "long line", "stored crc", "deflate damage"])
def test_a_split_at_any_byte_finds_what_one_pass_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """The boundary, exhaustively: with 64-byte blocks (so skipping, lines and damage span
    blocks), a split at 60 offsets across es_data, the second part run in this process (not
    forked, to try every offset), finds exactly what one pass finds."""
    import core.archive
    import core.forked
    import core.validate as V

    monkeypatch.setattr(core.archive, "COPY_CHUNK", 64)
    monkeypatch.setattr(V, "COPY_CHUNK", 64)
    monkeypatch.setattr(core.archive, "MAX_LINE_BYTES", 300)
    monkeypatch.setattr(core.forked, "fork_is_safe", lambda: False)
    noise = random.Random(7)  # sources that deflate poorly: damage lands mid-stream, past
    lines = [dump_hit({**HIT, "_id": f"bp{i}", "_source": {"id": f"bp{i}",  # zipfile's first read
                       "n": f"{noise.getrandbits(480):0120x}"}}) for i in range(1, 61)]
    lines[2], lines[43], lines[52] = "{not json", '{"_index": "x"}', lines[1]
    if case == "long line":
        lines[47] = "[" + " " * 400 + "]"
    es_data = ("\n".join(lines) + "\n").encode()
    path = tmp_path / "a.zip"
    stored = zipfile.ZIP_STORED if case == "stored crc" else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", stored) as z:
        z.writestr("metadata.json", json.dumps(META_33))
        z.writestr("es_data", es_data)
    if case in ("stored crc", "deflate damage"):
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("es_data")
        data = bytearray(path.read_bytes())
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        middle = start + info.compress_size // 2
        if case == "stored crc":  # a digit of a payload: every line still parses
            at = data.index(b'"n": "', middle) + 10
            data[at] = ord("a") if data[at] != ord("a") else ord("b")
        else:
            data[middle : middle + 8] = bytes(255 - b for b in data[middle : middle + 8])
        path.write_bytes(bytes(data))
    one = [str(p) for p in V.validate_archive(path)]
    for at in range(1, len(es_data) + 2, len(es_data) // 60):
        monkeypatch.setattr(V, "_split_point", lambda *_, at=at: at)
        assert [str(p) for p in V.validate_archive(path, split=True)] == one, at
    bad = ["es_data:3: not valid JSON (Expecting property name enclosed in double quotes)",
           "es_data:44: missing or non-string _type"]
    if case == "problems":
        assert one == [*bad, "es_data:53: duplicate document cloudify_storage/blueprint/bp2 "
                             "(first at line 2)"]
    elif case == "long line":  # the pass stops there: nothing after it is listed
        assert one == [*bad, "es_data:48: line longer than 0 MiB"]
    elif case == "stored crc":  # every line parses; the CRC fails once the end is read (the
        # read runs ahead of the lines checked: reported at the first line not yet checked)
        assert one[:2] == bad and len(one) == 3
        assert one[2].endswith(": cannot be read to the end (Bad CRC-32 for file 'es_data')")
    else:  # the stream fails part way (what it inflates to past there varies): lines before
        assert one[0] == bad[0] and int(one[-1].split(":")[1]) > 3, one  # it were checked
