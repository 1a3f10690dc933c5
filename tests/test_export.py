"""`export`: pure row rules, then real exports of generated archives and a loaded manager, read
back with pyarrow.dataset AND DuckDB and compared with the source row by row (exact values)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli import app
from core.archive import SnapshotReader
from core.errors import JobFailed, UnsafePath
from core.model import EVENT_TYPES, Version
from core.search import SearchClient
from pipelines.export import ExportConfig, parse_types, run
from pipelines.sample.archive import write_sample_archive
from pipelines.sample.generate import ManagerSpec, snapshot_hits
from pipelines.sample.load import load_manager
from tests.conftest import wipe
from transforms.parquet import COLUMNS, export_row, parse_timestamp

MULTI = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
TYPED = ("event_type", "level", "deployment_id", "execution_id", "workflow_id", "node_id", "message")


# ------------------------------------------------------------------------------------ oracle
def expected_row(hit: dict[str, Any]) -> dict[str, Any]:
    """What one exported row must hold, written out independently of transforms.parquet."""
    src = hit["_source"]
    ctx = src.get("context") or {}
    if hit["_type"] in EVENT_TYPES:
        stamp = datetime.strptime(src["@timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
    elif "created_at" in src:
        stamp = datetime.strptime(src["created_at"], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
        stamp = stamp.replace(microsecond=stamp.microsecond // 1000 * 1000)
    else:
        stamp = None
    message = src.get("message")
    return {
        "type": hit["_type"],
        "day": stamp.date().isoformat() if stamp else "none",
        "timestamp": stamp,
        "event_type": src.get("event_type"),
        "level": src.get("level"),
        "deployment_id": ctx.get("deployment_id", src.get("deployment_id")),
        "execution_id": ctx.get("execution_id", src.get("execution_id")),
        "workflow_id": ctx.get("workflow_id", src.get("workflow_id")),
        "node_id": ctx.get("node_id", src.get("node_id")),
        "message": message.get("text") if isinstance(message, dict) else message,
        "_index": hit["_index"],
        "_id": hit["_id"],
        "doc": src,
    }


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["type"], row["_index"], row["_id"])


def expected_rows(hits: Any, types: tuple[str, ...] | None) -> dict[tuple[str, str, str], dict]:
    rows = [expected_row(h) for h in hits if types is None or h["_type"] in types]
    table = {_key(r): r for r in rows}
    assert len(table) == len(rows), "ids are unique in the sample"
    return table


def _normalise(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["doc"] = json.loads(row["doc"])
    row["day"] = str(row["day"])
    if row["timestamp"] is not None:
        row["timestamp"] = row["timestamp"].astimezone(UTC)
    return row


def read_pyarrow(out: Path) -> dict[tuple[str, str, str], dict]:
    dataset = ds.dataset(out, format="parquet", partitioning="hive")
    assert dataset.schema.field("timestamp").type.tz == "UTC"
    assert str(dataset.schema.field("timestamp").type.unit) == "ms"
    rows = [_normalise(r) for r in dataset.to_table().to_pylist()]
    table = {_key(r): r for r in rows}
    assert len(table) == len(rows)
    return table


def read_duckdb(out: Path) -> dict[tuple[str, str, str], dict]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rel = con.sql(
        f"SELECT * FROM read_parquet('{out}/**/*.parquet', hive_partitioning = true, "
        "hive_types_autocast = false)"
    )
    names = rel.columns
    rows = [_normalise(dict(zip(names, values, strict=True))) for values in rel.fetchall()]
    table = {_key(r): r for r in rows}
    assert len(table) == len(rows)
    return table


def assert_same_rows(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, want in expected.items():
        assert actual[key] == want, key


@pytest.fixture(scope="module")
def archive_33(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "sample-3.3.zip"
    write_sample_archive(ManagerSpec.sized(Version.V3_3, 1500, seed=11), path)
    return path


def archive_hits(path: Path) -> list[dict[str, Any]]:
    with SnapshotReader(path) as snap:
        return [hit for _, hit in snap.iter_hits()]


# ------------------------------------------------------------------------------- pure rules
def test_parse_timestamp_reads_every_cloudify_time_format_as_utc_milliseconds() -> None:
    ms = 1448968272345  # 2015-12-01T11:11:12.345Z
    assert parse_timestamp("2015-12-01T11:11:12.345Z") == ms
    assert parse_timestamp("2015-12-01 11:11:12.345+0000") == ms
    assert parse_timestamp("2015-12-01 12:11:12.345+0100") == ms
    assert parse_timestamp("2015-12-01 11:11:12.345999") == ms  # naive = UTC, truncated
    assert parse_timestamp("yesterday") is None
    assert parse_timestamp(None) is None
    assert parse_timestamp(12) is None


def test_export_row_of_an_event_a_log_and_storage_documents() -> None:
    event = {
        "_index": "logstash-2015.12.01", "_type": "cloudify_event", "_id": "e1",
        "_source": {"event_type": "task_started", "@timestamp": "2015-12-01T23:59:59.999Z",
                    "timestamp": "2015-12-02 00:59:59.999+0100",
                    "context": {"deployment_id": "d1", "execution_id": "x1", "workflow_id": "install",
                                "node_id": "vm_1"},
                    "message": {"text": "Task started ✓", "arguments": None}},
    }
    partition, row = export_row(event)
    assert partition == ("cloudify_event", "2015-12-01")
    assert dict(zip(COLUMNS, row, strict=True)) == {
        "timestamp": 1449014399999, "event_type": "task_started", "level": None,
        "deployment_id": "d1", "execution_id": "x1", "workflow_id": "install", "node_id": "vm_1",
        "message": "Task started ✓", "_index": "logstash-2015.12.01", "_id": "e1",
        "doc": json.dumps(event["_source"], ensure_ascii=False, separators=(",", ":")),
    }
    log = {"_index": "cloudify_events", "_type": "cloudify_log", "_id": "l1",
           "_source": {"level": "info", "timestamp": "2015-12-02 10:00:00.000+0000",
                       "message": {"text": "hi"}, "context": {}}}
    assert export_row(log)[0] == ("cloudify_log", "2015-12-02")
    instance = {"_index": "cloudify_storage", "_type": "node_instance", "_id": "vm_1",
                "_source": {"id": "vm_1", "node_id": "vm", "deployment_id": "d1"}}
    partition, row = export_row(instance)
    assert partition == ("node_instance", "none")
    assert row[:8] == (None, None, None, "d1", None, None, "vm", None)
    execution = {"_index": "cloudify_storage", "_type": "execution", "_id": "x1",
                 "_source": {"workflow_id": "install", "created_at": "2016-03-14 10:00:00.123456",
                             "deployment_id": None}}
    partition, row = export_row(execution)
    assert partition == ("execution", "2016-03-14")
    assert row[0] == 1457949600123 and row[5] == "install" and row[3] is None


def test_export_row_refuses_a_type_that_is_not_a_safe_folder_name() -> None:
    with pytest.raises(UnsafePath):
        export_row({"_index": "i", "_type": "../../etc", "_id": "1", "_source": {}})


def test_parse_types() -> None:
    assert parse_types("events,logs") == ("cloudify_event", "cloudify_log")
    assert parse_types("events, execution") == ("cloudify_event", "execution")
    assert parse_types("all") is None
    with pytest.raises(ValueError):
        parse_types(" , ")


# ------------------------------------------------------------------------ archive → Parquet
def test_events_and_logs_of_an_archive_read_back_exactly(archive_33: Path, tmp_path: Path) -> None:
    out = tmp_path / "events"
    summary = run(ExportConfig(output=out, archive=archive_33, progress=False))
    expected = expected_rows(archive_hits(archive_33), EVENT_TYPES)
    assert summary.rows == {
        t: sum(1 for k in expected if k[0] == t) for t in EVENT_TYPES
    }
    assert summary.documents_skipped > 0
    assert_same_rows(read_pyarrow(out), expected)
    assert_same_rows(read_duckdb(out), expected)
    days = sorted(p.name for p in (out / "type=cloudify_event").iterdir())
    assert days and all(d.startswith("day=2015-12-") for d in days)
    assert not list(tmp_path.glob(".events.staging-*"))


def test_all_types_multi_process_small_row_groups(archive_33: Path, tmp_path: Path) -> None:
    out = tmp_path / "all"
    summary = run(
        ExportConfig(output=out, archive=archive_33, types=None, rows_per_group=100,
                     lines_per_shard=300, progress=False),
        MULTI,
    )
    expected = expected_rows(archive_hits(archive_33), None)
    assert sum(summary.rows.values()) == len(expected)
    assert summary.documents_skipped == 0
    assert_same_rows(read_pyarrow(out), expected)
    assert_same_rows(read_duckdb(out), expected)
    assert (out / "type=node_instance" / "day=none").is_dir()
    groups = [pq.ParquetFile(f).metadata for f in out.glob("type=*/day=*/part-*.parquet")]
    assert max(m.num_rows / m.num_row_groups for m in groups) <= 100
    assert sum(m.num_rows for m in groups) == len(expected)


def test_a_non_empty_output_is_refused_and_a_failed_export_leaves_nothing(
    archive_33: Path, tmp_path: Path
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(JobFailed, match="not an empty folder"):
        run(ExportConfig(output=taken, archive=archive_33, progress=False))
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]

    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(archive_33) as src, zipfile.ZipFile(broken, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "es_data":
                lines = data.splitlines(keepends=True)
                lines[700] = b'{"_index": "logstash-2015.12.01", "_type": \n'
                data = b"".join(lines)
            dst.writestr(info, data)
    out = tmp_path / "out"
    with pytest.raises(Exception) as failed:
        run(ExportConfig(output=out, archive=broken, lines_per_shard=200, progress=False))
    assert "701" in str(failed.value)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.staging-*"))


# ------------------------------------------------------------------------- server → Parquet
@pytest.mark.server
@pytest.mark.es8
@pytest.mark.parametrize("version", [Version.V3_2, Version.V3_3])
def test_export_from_a_live_manager_matches_its_documents(
    search: SearchClient, tmp_path: Path, version: Version
) -> None:
    spec = replace(ManagerSpec.sized(version, 800, seed=2), keys_dir=str(tmp_path / "keys"))
    wipe(search)
    load_manager(spec, search, tmp_path / "fs")
    out = tmp_path / "from-es"
    summary = run(ExportConfig(output=out, target=search.url, progress=False), MULTI)
    expected = expected_rows(snapshot_hits(spec), EVENT_TYPES)
    assert sum(summary.rows.values()) == len(expected) > 300
    assert_same_rows(read_pyarrow(out), expected)
    assert_same_rows(read_duckdb(out), expected)


# ---------------------------------------------------------------------------------------- CLI
def test_cli_export_help_and_run(archive_33: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    help_text = runner.invoke(app, ["export", "--help"]).output
    assert "Example: cfysnap export" in help_text and "--types" in help_text
    out = tmp_path / "cli"
    result = runner.invoke(
        app, ["export", str(out), "--archive", str(archive_33), "--types", "logs", "--",
              "--direct_num_workers=1"]
    )
    assert result.exit_code == 0, result.output
    assert "cloudify_log:" in result.output
    assert [p.name for p in out.iterdir()] == ["type=cloudify_log"]
    again = runner.invoke(app, ["export", str(out), "--archive", str(archive_33)])
    assert again.exit_code == 1 and "not an empty folder" in again.output
    assert runner.invoke(app, ["export", str(out)]).exit_code == 2  # no archive, no --es
    both = runner.invoke(app, ["export", str(out), "--archive", str(archive_33), "--es", "http://x"])
    assert both.exit_code == 2 and "give exactly one of --archive and --es" in both.output


# ------------------------------------------------------------------------ review regressions
def test_cli_export_of_a_damaged_archive_is_one_line_naming_it(
    archive_33: Path, tmp_path: Path
) -> None:
    """es_data whose deflated bytes are damaged (central directory intact): one stderr line that
    names the archive and the member, exit 1, no traceback, nothing written."""
    import subprocess
    import sys

    damaged = tmp_path / "damaged.zip"
    data = bytearray(archive_33.read_bytes())
    with zipfile.ZipFile(archive_33) as zf:
        info = zf.getinfo("es_data")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for k in range(64):  # the stored (uncompressed) tail of a deflate block: the CRC catches it
        data[start + info.compress_size - 200 + k] ^= 0x55
    damaged.write_bytes(bytes(data))
    out = tmp_path / "out"
    cli = Path(sys.executable).parent / "cfysnap"
    proc = subprocess.run(
        [str(cli), "export", str(out), "--archive", str(damaged)], capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {damaged}: es_data: cannot be read to the end (Bad CRC-32 for file 'es_data'; ")
    assert lines[0].endswith(" lines read)")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.zip"]
