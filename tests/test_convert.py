"""`convert` at archive level: golden pairs, one test per rule, the transforms, the CLI.

The per-document step rules are tested in tests/test_versions.py; here whole archives go through
the Beam job (FnApiRunner, and 2 processes where it matters).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to
from typer.testing import CliRunner

from cli import app
from core.archive import MANIFEST, SnapshotReader
from core.errors import CorruptArchive, JobFailed
from core.model import Version
from core.options import beam_options, spreads_work
from core.validate import validate_archive
from pipelines.convert import ConvertConfig, ConvertSummary, DryRunReport, dry_run, run
from pipelines.sample.archive import write_sample_archive
from pipelines.sample.generate import ManagerSpec
from tests.test_versions import CREATE_AMQP, INSTALL_NEW_AGENTS, VALIDATE_AMQP, table_gaps
from transforms.shards import Shard, SplitEsDataIntoShards, WriteShards, read_shard
from transforms.upgrade import (
    DeduplicateShards,
    LineUpgrade,
    keep_one,
    key_digest,
    repeated_digests,
    upgraded_in_full,
    upgraded_line,
)
from transforms.versions import STEPS, DowngradeRefused, Step, plan, upgrade_hit

GOLDEN = Path(__file__).parent / "golden" / "archives"
PAIRS = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())
TWO_PROCESSES = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")


# ------------------------------------------------------------------------------- helpers
def zip_tree(folder: Path, path: Path, *, directories: bool = False) -> Path:
    """A zip of every file under `folder` (sorted), optionally with directory entries (3.4.2)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        if directories:
            for d in sorted({p.relative_to(folder).parent for p in files} - {Path(".")}):
                z.writestr(d.as_posix() + "/", b"")
        for f in files:
            z.write(f, f.relative_to(folder).as_posix())
    return path


def write_archive(path: Path, meta: dict[str, Any], hits: list[dict[str, Any]], **members: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps(meta))
        z.writestr("es_data", "".join(json.dumps(h) + "\n" for h in hits))
        for name, data in members.items():
            z.writestr(name.replace("__", "/"), data)
    return path


def members(path: Path) -> dict[str, bytes]:
    """Every member but manifest.json and es_data, name → bytes (directories as b"")."""
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist() if n not in (MANIFEST, "es_data")}


def documents(path: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """es_data as key → hit; fails on a duplicated key."""
    docs: dict[tuple[str, str, str], dict[str, Any]] = {}
    with SnapshotReader(path) as snap:
        for _, hit in snap.iter_hits():
            key = (hit["_index"], hit["_type"], hit["_id"])
            assert key not in docs, f"duplicate {key}"
            docs[key] = hit
    return docs


def es_lines(path: Path) -> Counter[bytes]:
    with SnapshotReader(path) as snap:
        return Counter(line for _, line in snap.iter_lines())


def convert(source: Path, output: Path, target: Version, *beam_args: str, **kw: Any) -> ConvertSummary:
    result = run(ConvertConfig(source, output, target, progress=False, **kw), beam_args)
    assert isinstance(result, ConvertSummary)
    return result


def leftovers(folder: Path, *keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def event(index: str, doc_id: str, stamp: str, text: str = "x") -> dict[str, Any]:
    return {
        "_index": index,
        "_type": "cloudify_event",
        "_id": doc_id,
        "_source": {"type": "cloudify_event", "@timestamp": stamp, "message": {"text": text}},
    }


META_32 = {"has_cloudify_events": True, "snapshot_version": "3.2"}
CREATE = "cloudify.interfaces.cloudify_agent.create_amqp"
VALIDATE = "cloudify.interfaces.cloudify_agent.validate_amqp"


@pytest.fixture(scope="module")
def sample32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "sample-3.2.zip"
    write_sample_archive(ManagerSpec.sized(Version.V3_2, 3000, seed=7), path)
    return path


# ---------------------------------------------------------------------------- golden pairs
@pytest.mark.parametrize("pair", PAIRS)
def test_golden_pair(pair: str, tmp_path: Path) -> None:
    folder = GOLDEN / pair
    target = Version(pair.split("_to_v")[1].replace("_", "."))
    source = zip_tree(folder / "input", tmp_path / "in.zip")
    output = tmp_path / "out.zip"
    summary = convert(source, output, target)

    expected_tree = folder / "expected"
    expected = {
        p.relative_to(expected_tree).as_posix(): p.read_bytes()
        for p in expected_tree.rglob("*")
        if p.is_file() and p.name != "es_data"
    }
    got = members(output)
    assert sorted(got) == sorted(expected)
    for name in ("metadata.json", "agents.json"):
        assert json.loads(got[name]) == json.loads(expected[name]), name
    for name in set(expected) - {"metadata.json", "agents.json"}:
        assert got[name] == expected[name], f"{name} not carried over byte for byte"

    want = [json.loads(line) for line in (expected_tree / "es_data").read_text().splitlines()]
    got_docs = documents(output)
    assert len(got_docs) == len(want)
    for hit in want:  # document by document
        assert got_docs[(hit["_index"], hit["_type"], hit["_id"])] == hit
    assert summary.documents_read == summary.documents_written == len(want)
    assert summary.duplicates_dropped == 0
    assert validate_archive(output) == []


@pytest.mark.parametrize("beam_args", [(), TWO_PROCESSES], ids=["1-worker", "2-processes"])
def test_output_lines_are_exactly_what_a_plain_loop_writes(
    sample32: Path, tmp_path: Path, beam_args: tuple[str, ...]
) -> None:
    """Lines as 3.x wrote them (json.dumps): every output line is `json.dumps(upgraded hit)`,
    whether it was kept, had its `_index` replaced or was re-serialised; and in the source's
    order, however many workers upgraded its shards."""
    steps = plan(Version.V3_2, Version.V3_4)
    with SnapshotReader(sample32) as snap:
        expected = [json.dumps(upgrade_hit(hit, steps)).encode() for _, hit in snap.iter_hits()]
    output = tmp_path / "out.zip"
    summary = convert(sample32, output, Version.V3_4, *beam_args, lines_per_shard=700)
    with SnapshotReader(output) as snap:
        assert [line for _, line in snap.iter_lines()] == expected
    assert len(expected) > 4 * 700  # more than 4 shards
    with SnapshotReader(sample32) as snap:
        unchanged = sum(1 for _, hit in snap.iter_hits() if upgrade_hit(hit, steps) is hit)
    assert summary.documents_changed == summary.documents_read - unchanged


def test_golden_pairs_cover_every_step_and_the_whole_chain() -> None:
    assert PAIRS == ["v3_2_to_v3_3", "v3_2_to_v3_4", "v3_3_to_v3_4"]


# ------------------------------------------------------------------------------ the rules
def test_metadata_and_agents_are_upgraded(tmp_path: Path) -> None:
    source = zip_tree(GOLDEN / "v3_2_to_v3_4" / "input", tmp_path / "in.zip")
    convert(source, tmp_path / "out.zip", Version.V3_4)
    with SnapshotReader(tmp_path / "out.zip") as snap:
        assert snap.metadata() == {"has_cloudify_events": False, "snapshot_version": "3.4.0"}
        agent = snap.agents()["dep1"]["vm"]["vm_a1b2c"]
        assert "broker_user" not in agent and agent["broker_config"]["broker_port"] == 5672
        assert snap.agents()["dep1"]["vm"]["vm_zzzzz"] == {}


def test_events_move_to_the_day_of_their_own_timestamp(tmp_path: Path) -> None:
    source = zip_tree(GOLDEN / "v3_2_to_v3_3" / "input", tmp_path / "in.zip")
    convert(source, tmp_path / "out.zip", Version.V3_3)
    index_of = {k[2]: k[0] for k in documents(tmp_path / "out.zip")}
    assert index_of["AVFxEvent0000000001"] == "logstash-2015.11.30"
    assert index_of["AVFxEvent0000000002"] == "logstash-2015.11.30"  # 23:59:59.999Z, not the local +0200 day
    assert index_of["AVFxLog00000000000001"] == "logstash-2015.11.30"  # only `timestamp`, 01:30+0200
    assert index_of["AVFxLog00000000000002"] == "logstash-2015.12.01"
    assert not [i for i in index_of.values() if i == "cloudify_events"]


@pytest.mark.parametrize("beam_args", [(), TWO_PROCESSES], ids=["1-worker", "2-processes"])
def test_duplicates_made_by_the_upgrade_are_dropped_deterministically(
    tmp_path: Path, beam_args: tuple[str, ...]
) -> None:
    hits = [
        event("cloudify_events", "same", "2015-12-01T10:00:00.000Z"),  # identical once moved
        event("logstash-2015.12.01", "same", "2015-12-01T10:00:00.000Z"),
        event("cloudify_events", "differs", "2015-12-01T11:00:00.000Z", "b-version"),
        event("logstash-2015.12.01", "differs", "2015-12-01T11:00:00.000Z", "a-version"),
        event("cloudify_events", "alone", "2015-12-02T11:00:00.000Z"),
        event("logstash-2015.12.01", "other-day", "2015-12-01T11:00:00.000Z"),
    ]
    source = write_archive(tmp_path / "in.zip", META_32, hits)
    output = tmp_path / "out.zip"
    summary = convert(source, output, Version.V3_3, *beam_args, lines_per_shard=2)

    docs = documents(output)
    assert sorted(k[2] for k in docs) == ["alone", "differs", "other-day", "same"]
    kept = docs[("logstash-2015.12.01", "cloudify_event", "differs")]
    assert kept["_source"]["message"]["text"] == "a-version"  # canonical form sorts first
    assert (summary.duplicates_dropped, summary.duplicates_differing) == (2, 1)
    assert summary.documents_read == 6 and summary.documents_written == 4
    assert "duplicates dropped   2 (1 differed in content)" in summary.render()
    assert validate_archive(output) == []


def test_unknown_members_and_directories_are_carried_over_byte_for_byte(tmp_path: Path) -> None:
    folder = GOLDEN / "v3_3_to_v3_4" / "input"
    source = zip_tree(folder, tmp_path / "in.zip", directories=True)
    output = tmp_path / "out.zip"
    convert(source, output, Version.V3_4)
    before, after = members(source), members(output)
    assert sorted(after) == sorted(before)
    changed = sorted(n for n in before if before[n] != after[n])
    assert changed == ["metadata.json"]
    with zipfile.ZipFile(output) as z:
        assert z.getinfo("notes/").is_dir() and z.getinfo("blueprints/bp1/scripts/").is_dir()
    assert after["notes/operator notes.txt"] == (folder / "notes" / "operator notes.txt").read_bytes()


def test_converting_to_the_version_it_has_changes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "in-3.4.zip"
    write_sample_archive(ManagerSpec.sized(Version.V3_4, 2000, seed=3), source)
    output = tmp_path / "out.zip"
    summary = convert(source, output, Version.V3_4)
    assert summary.steps == ("3.4 restore defaults",) and summary.documents_changed == 0
    assert es_lines(output) == es_lines(source)  # the very same lines
    assert members(output) == members(source)


def test_a_3_3_archive_of_legacy_blueprints_gets_the_whole_3_4_table(tmp_path: Path) -> None:
    """Blueprints importing 3.2's types.yaml and nodes restored on 3.3.0: what a 3.4.2 restore
    adds (the 3.3 and 3.3.1 columns included), convert adds, on every document that lacks it."""
    spec = replace(ManagerSpec(version=Version.V3_3, blueprints=2, deployments_per_blueprint=4,
                               compute_nodes=2, instances_per_node=1, events=2, logs=2),
                   legacy_types=True)
    source, output = tmp_path / "legacy-3.3.zip", tmp_path / "out-3.4.zip"
    write_sample_archive(spec, source)
    convert(source, output, Version.V3_4)
    before, after = documents(source), documents(output)
    storage = [k for k in after if k[0] == "cloudify_storage"]
    lacking = {k for k in storage if table_gaps(k[1], before[k]["_source"], Version.V3_3)}
    # 8 deployments without install_new_agents, 16 Compute nodes without an amqp operation
    assert Counter(k[1] for k in lacking) == {"deployment": 8, "node": 16}
    for key in storage:
        assert table_gaps(key[1], after[key]["_source"], Version.V3_4) == [], key
    for key in lacking:
        doc = after[key]["_source"]
        if key[1] == "deployment":
            assert doc["workflows"]["install_new_agents"] == INSTALL_NEW_AGENTS
        else:
            assert {op: doc["operations"][op] for op in (CREATE, VALIDATE)} == {
                CREATE: CREATE_AMQP, VALIDATE: VALIDATE_AMQP}


def test_one_jump_equals_the_chain_on_a_generated_archive(sample32: Path, tmp_path: Path) -> None:
    direct, via, hop = tmp_path / "direct.zip", tmp_path / "via.zip", tmp_path / "hop-3.3.zip"
    convert(sample32, direct, Version.V3_4)
    convert(sample32, hop, Version.V3_3)
    convert(hop, via, Version.V3_4)
    assert es_lines(direct) == es_lines(via)
    assert members(direct) == members(via)
    assert validate_archive(direct) == [] and validate_archive(via) == []


def test_generated_archive_converts_in_two_processes_and_validates(sample32: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one.zip", tmp_path / "two.zip"
    s1 = convert(sample32, one, Version.V3_4)
    s2 = convert(sample32, two, Version.V3_4, *TWO_PROCESSES, lines_per_shard=500)
    assert es_lines(one) == es_lines(two)
    assert s1.documents == s2.documents
    assert s2.documents_read == s2.documents_written == sum(s2.documents.values())
    assert validate_archive(two) == []


def test_an_invalid_archive_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    source = tmp_path / "in.zip"
    with zipfile.ZipFile(source, "w") as z:
        z.writestr("metadata.json", json.dumps(META_32))
        z.writestr("es_data", json.dumps(event("cloudify_events", "a", "2015-12-01T10:00:00Z")) + "\n{oops\n")
    out_dir = tmp_path / "out"
    with pytest.raises(CorruptArchive) as err:
        convert(source, out_dir / "out.zip", Version.V3_4)
    assert (err.value.member, err.value.line) == ("es_data", 2)
    assert not out_dir.exists()


def test_an_invalid_archive_the_pipeline_could_convert_is_still_refused_and_leaves_nothing(tmp_path: Path) -> None:
    """Validation runs alongside the pipeline; a source that converts fine but does not validate
    (here: a key twice, which the dedupe would quietly drop) must still leave no output."""
    doc = {"_index": "cloudify_storage", "_type": "execution", "_id": "e1", "_source": {}}
    source = write_archive(tmp_path / "in.zip", {"snapshot_version": "3.3"}, [doc, doc])
    out_dir = tmp_path / "new" / "folder"
    with pytest.raises(CorruptArchive, match="duplicate document cloudify_storage/execution/e1") as err:
        convert(source, out_dir / "out.zip", Version.V3_4)
    assert (err.value.member, err.value.line) == ("es_data", 2)
    assert leftovers(tmp_path) == ["in.zip"]  # no output, partial, staging, nor the folders made for it


def test_a_downgrade_is_refused_with_a_typed_error(tmp_path: Path) -> None:
    source = zip_tree(GOLDEN / "v3_3_to_v3_4" / "input", tmp_path / "in.zip")
    with pytest.raises(DowngradeRefused, match="cannot convert a 3.3 snapshot to 3.2"):
        convert(source, tmp_path / "out.zip", Version.V3_2)
    assert leftovers(tmp_path) == ["in.zip"]


def test_an_event_without_time_fails_the_job_and_leaves_nothing(tmp_path: Path) -> None:
    bad = {"_index": "cloudify_events", "_type": "cloudify_event", "_id": "nt", "_source": {"type": "cloudify_event"}}
    source = write_archive(tmp_path / "in.zip", META_32, [event("cloudify_events", "a", "2015-12-01T10:00:00Z"), bad])
    with pytest.raises(CorruptArchive, match="cloudify_event/nt has no parseable") as err:
        convert(source, tmp_path / "out.zip", Version.V3_3)
    assert "while running" not in str(err.value)
    assert leftovers(tmp_path) == ["in.zip"]  # no output, no partial file, no staging folder


def test_an_event_without_time_fails_in_two_processes_too(tmp_path: Path) -> None:
    bad = {"_index": "cloudify_events", "_type": "cloudify_event", "_id": "nt", "_source": {}}
    source = write_archive(tmp_path / "in.zip", META_32, [bad])
    with pytest.raises(JobFailed, match="has no parseable"):
        convert(source, tmp_path / "out.zip", Version.V3_3, *TWO_PROCESSES)
    assert leftovers(tmp_path) == ["in.zip"]


def test_an_existing_output_is_kept_unless_forced(tmp_path: Path) -> None:
    source = zip_tree(GOLDEN / "v3_3_to_v3_4" / "input", tmp_path / "in.zip")
    output = tmp_path / "out.zip"
    output.write_bytes(b"precious")
    with pytest.raises(JobFailed, match="exists"):
        convert(source, output, Version.V3_4)
    assert output.read_bytes() == b"precious"
    convert(source, output, Version.V3_4, force=True)
    assert validate_archive(output) == []
    with pytest.raises(JobFailed, match="is the source"):
        convert(source, source, Version.V3_4, force=True)


# --------------------------------------------------------------------------------- dry run
def test_dry_run_counts_changes_per_type_and_step_and_writes_nothing(tmp_path: Path) -> None:
    source = zip_tree(GOLDEN / "v3_2_to_v3_4" / "input", tmp_path / "in.zip")
    report = dry_run(ConvertConfig(source, tmp_path / "out.zip", Version.V3_4, dry_run=True, progress=False))
    assert isinstance(report, DryRunReport)
    assert [s.name for s in report.steps] == ["3.2 -> 3.3", "3.3 -> 3.4", "3.4 restore defaults"]
    assert report.documents == {
        "blueprint": 1, "deployment": 1, "node": 2, "node_instance": 2, "execution": 1,
        "deployment_modification": 1, "my_custom_type": 1, "cloudify_event": 2, "cloudify_log": 2,
    }
    assert report.changes == {  # the documents' defaults all come from the §6.2 table
        "blueprint": (0, 0, 1), "deployment": (0, 0, 1), "node": (0, 0, 2),
        "node_instance": (0, 0, 2), "execution": (1, 0, 0), "deployment_modification": (0, 0, 0),
        "my_custom_type": (0, 0, 0), "cloudify_event": (2, 0, 0), "cloudify_log": (2, 0, 0),
    }
    assert report.metadata_changes and report.agents_changes and report.duplicates_to_drop == 0
    assert "3.2 -> 3.3" in report.render()
    assert leftovers(tmp_path) == ["in.zip"]


def test_dry_run_counts_the_duplicates_a_run_drops(tmp_path: Path) -> None:
    hits = [event("cloudify_events", "d", "2015-12-01T10:00:00Z"), event("logstash-2015.12.01", "d", "2015-12-01T10:00:00Z")]
    source = write_archive(tmp_path / "in.zip", META_32, hits)
    report = dry_run(ConvertConfig(source, tmp_path / "o.zip", Version.V3_3, progress=False))
    assert report.duplicates_to_drop == 1


# ------------------------------------------------------------------------ transforms, pure parts
STEPS_32_34 = plan(Version.V3_2, Version.V3_4)
MOVED = {"_index": "cloudify_events", "_type": "cloudify_event", "_id": "e", "_source": {
    "@timestamp": "2015-12-01T10:00:00Z", "message": {"text": "caf\u00e9 \"_index\": x"}}}


@pytest.mark.parametrize(
    ("line", "spliced"),
    [
        # as 3.x wrote it: only the _index value is replaced, which is json.dumps(upgraded)
        (json.dumps(MOVED).replace("caf\\u00e9", "cafe").encode(), True),
        # non-ASCII text escaped as 3.x wrote it (\\u00e9): still only the _index value replaced
        (json.dumps(MOVED).encode(), True),
        # an escape of a letter could spell a second key: re-serialised
        (json.dumps(MOVED).replace("caf\\u00e9", "\\u0063afe").encode(), False),
        # other separators after the first key: the rest is kept as it was
        (b'{"_index": "cloudify_events", "_type":"cloudify_event","_id":"e",'
         b'"_source":{"@timestamp":"2015-12-01T10:00:00Z"}}', True),
        # compact from the start: re-serialised
        (json.dumps(MOVED, separators=(",", ":")).encode(), False),
        # a second _index key (json keeps the last): re-serialised
        (b'{"_index": "cloudify_events", "_type": "t", "_id": "e", "_source": {"@timestamp":'
         b' "2015-12-01T10:00:00Z"}, "_index": "cloudify_events"}', False),
        # the same, spelled with an escape: re-serialised
        (b'{"_index": "cloudify_events", "_type": "t", "_id": "e", "_source": {"@timestamp":'
         b' "2015-12-01T10:00:00Z"}, "\\u005findex": "cloudify_events"}', False),
        # _index inside _source: re-serialised
        (b'{"_index": "cloudify_events", "_type": "t", "_id": "e", "_source": {"@timestamp":'
         b' "2015-12-01T10:00:00Z", "_index": "x"}}', False),
        # _index not first: re-serialised
        (b'{"_type": "t", "_index": "cloudify_events", "_id": "e", "_source": {"@timestamp":'
         b' "2015-12-01T10:00:00Z"}}', False),
    ],
    ids=["canonical", "non-ascii", "letter-escape", "other-separators", "compact", "key-twice", "escaped-key", "nested", "not-first"],
)
def test_upgraded_line_moves_events_exactly(line: bytes, spliced: bool) -> None:
    upgraded = upgrade_hit(json.loads(line), STEPS_32_34)
    new, key, changed = upgraded_line(line, 7, STEPS_32_34)
    assert changed and key == ("logstash-2015.12.01", upgraded["_type"], "e")
    assert json.loads(new) == upgraded  # always the upgraded document
    if spliced:
        assert new == line.replace(b"cloudify_events", b"logstash-2015.12.01", 1)
    else:
        assert new == json.dumps(upgraded).encode()


def test_upgraded_line_keeps_unchanged_lines_byte_for_byte_and_names_bad_lines() -> None:
    line = b'{"_index":"cloudify_storage","_type":"mine","_id":"u","_source":{"f":1.50}}'
    assert upgraded_line(line, 3, STEPS_32_34) == (line, ("cloudify_storage", "mine", "u"), False)
    with pytest.raises(CorruptArchive) as err:
        upgraded_line(b'{"_index": "cloudify_events", "_type": "e", "_id": "x", "_source": {}}', 9, STEPS_32_34)
    assert (err.value.member, err.value.line) == ("es_data", 9)


_EVENT = b'{"_index": "cloudify_events", "_type": "cloudify_event", "_id": "e1", "_score": 0.0, "_source": '
TRICKY_LINES = [
    _EVENT + b'{"@timestamp": "2015-12-01T23:59:59.999Z", "message": {"text": "x"}}}',
    # compact separators: the event is re-serialised
    b'{"_index":"cloudify_events","_type":"cloudify_log","_id":"e2","_source":{"@timestamp":"2015-12-01T01:00:00Z"}}',
    # the last of repeated keys counts, in the source and at the top level
    _EVENT + b'{"@timestamp": "2015-12-01T10:00:00Z", "@timestamp": "2016-01-02T10:00:00Z"}}',
    _EVENT + b'{"@timestamp": "2015-12-01T10:00:00Z"}, "_id": "e3", "_type": "cloudify_log"}',
    # a nested @timestamp is not the event's; its own zoned timestamp is
    _EVENT + b'{"context": {"@timestamp": "2015-01-01T00:00:00Z"}, "timestamp": "2015-12-01 23:30:00.000-0200"}}',
    # an escape spelling @timestamp, or another key of the line
    _EVENT + b'{"\\u0040timestamp": "2015-12-01T10:00:00Z"}}',
    _EVENT + b'{"@timestamp": "2015-12-01T10:00:00Z"}, "\\u005findex": "cloudify_events"}',
    # what msgspec refuses and Python's json takes (NaN, 1e400, integers past 64 bits)
    _EVENT + b'{"@timestamp": "2015-12-01T10:00:00Z", "v": NaN}}',
    _EVENT + b'{"@timestamp": "2015-12-01T10:00:00Z", "v": 1e400, "w": 123456789012345678901234567890}}',
    _EVENT + b'{"@timestamp": 1448964000000, "timestamp": "2015-12-01 10:00:00.000+0000"}}',
    # events that cannot be placed, and lines that are not hits
    _EVENT + b'{"timestamp": "2015-12-01 10:00:00"}}',
    _EVENT + b'{"message": "no time"}}',
    _EVENT + b'["2015-12-01T10:00:00Z"]}',
    _EVENT + b'{"@timestamp": "2015-12-01T10:00:00Z", "m": "\xff"}}',
    _EVENT + b'{"@timestamp": "2015-12-01T10:00:00Z", "d": ' + b"[" * 300 + b"]" * 300 + b"}}",
    b'{"_index": "cloudify_events", "_type": "", "_id": "e4", "_source": {"@timestamp": "2015-12-01T10:00:00Z"}}',
    b'{"_index": "cloudify_events", "_type": "cloudify_event", "_id": 5, "_source": {}}',
    b'{"_index": "cloudify_events", "_type": "cloudify_event", "_id": "e6", "_source": {"@timestamp": "2015-12-01T10:00:00Z"}',
    # events already in their day, storage documents kept or changed by a step
    b'{"_index": "logstash-2015.12.01", "_type": "cloudify_log", "_id": "l1", "_source": {"x": 1.50}}',
    b'{"_index": "logstash-2015.12.01", "_type": "cloudify_log", "_id": "l2", "_source": {"x": NaN}}',
    b'{"_index": "logstash-2015.12.01", "_type": "cloudify_log", "_id": "l3", "_source": "text"}',
    b'{"_index": "cloudify_storage", "_type": "execution", "_id": "x1", "_source": {"status": "terminated"}}',
    b'{"_index": "cloudify_storage", "_type": "node_instance", "_id": "n1", "_source": {"id": "n1"}}',
    b'{"_index": "cloudify_storage", "_type": "widget", "_id": "w1", "_source": {"f": 1.50}}',
]


def _answer(upgrade: Any, line: bytes, lineno: int) -> Any:
    """What `upgrade(line, lineno)` gives, or the error it raises, as a comparable value."""
    try:
        return upgrade(line, lineno)
    except CorruptArchive as exc:
        return ("refused", exc.member, exc.line, exc.reason)


def _generated_lines() -> list[bytes]:
    from pipelines.sample.generate import snapshot_hits

    return [
        json.dumps(h).encode()
        for version in (Version.V3_2, Version.V3_3)
        for h in snapshot_hits(ManagerSpec(version=version, events=40, logs=40))
    ]


_STAMPED = Step(
    Version.V3_3, Version.V3_4, "stamps logstash events", "stamps logstash events",
    lambda h: {**h, "_source": {**h["_source"], "stamped": True}} if h["_index"] != "cloudify_storage" else h,
    lambda m: m, lambda a: a, touches=lambda index, doc_type: index != "cloudify_storage",
)
"""A later step that touches where 3.2's events land: the first step's move alone is not the
answer for them then."""


@pytest.mark.parametrize(
    "steps",
    [plan(Version.V3_2, Version.V3_4), plan(Version.V3_2, Version.V3_3), plan(Version.V3_3, Version.V3_4),
     plan(Version.V3_4, Version.V3_4), [STEPS[0], _STAMPED]],
    ids=["3.2-3.4", "3.2-3.3", "3.3-3.4", "3.4-3.4", "later-step-touches-the-day"],
)
def test_line_upgrade_gives_the_full_ways_answer_for_every_line(steps: list[Step], monkeypatch: Any) -> None:
    """The short ways of `LineUpgrade` (a line kept, an event moved) give exactly what parsing
    the line and applying every step gives, the same bytes, key and flag, or the same error
    naming the same line; and they are taken, not just present."""
    import transforms.upgrade as upgrade_module

    lines = TRICKY_LINES + _generated_lines()
    expected = [_answer(lambda ln, n: upgraded_in_full(ln, n, steps), line, n) for n, line in enumerate(lines)]
    full_calls: list[bytes] = []

    def full(line: bytes, lineno: int | None, steps_: Any) -> Any:
        full_calls.append(line)
        return upgraded_in_full(line, lineno, steps_)

    monkeypatch.setattr(upgrade_module, "upgraded_in_full", full)
    upgrade = LineUpgrade(steps)
    assert [_answer(upgrade, line, n) for n, line in enumerate(lines)] == expected
    widget, logstash_log = (next(ln for ln in TRICKY_LINES if f'"_id": "{i}"'.encode() in ln) for i in ("w1", "l1"))
    assert widget not in full_calls  # a type no step touches: kept after its keys' decode
    assert (logstash_log in full_calls) == (steps[-1] is _STAMPED)
    generated_events = [ln for ln in lines[len(TRICKY_LINES):] if b'"cloudify_storage"' not in ln[:40]]
    short = [ln for ln in generated_events if ln not in full_calls]
    if steps[-1] is _STAMPED:
        assert short == []
    else:  # every generated event and log takes a short way: moved (3.2's, by a 3.2 plan) or kept
        assert short == generated_events and len(short) == 2 * (40 + 40)


def test_line_upgrade_moves_an_event_by_its_own_time_splicing_only_the_index() -> None:
    line = TRICKY_LINES[0]
    assert LineUpgrade(STEPS_32_34)(line, 1) == (
        line.replace(b'"cloudify_events"', b'"logstash-2015.12.01"', 1),
        ("logstash-2015.12.01", "cloudify_event", "e1"),
        True,
    )
    # the last @timestamp counts, as in the parsed document
    assert LineUpgrade(STEPS_32_34)(TRICKY_LINES[2], 2)[1] == ("logstash-2016.01.02", "cloudify_event", "e1")
    # a zoned local time is placed in its UTC day
    assert LineUpgrade(STEPS_32_34)(TRICKY_LINES[4], 3)[1] == ("logstash-2015.12.02", "cloudify_event", "e1")


def test_keep_one_is_order_independent() -> None:
    a = b'{"_id": "x", "_source": {"v": 1}}\n'
    b = b'{"_source": {"v": 2}, "_id": "x"}\n'
    same_as_a = b'{"_source": {"v": 1}, "_id": "x"}\n'
    assert keep_one([a, b]) == keep_one([b, a]) == (a, 1, 1)
    kept, dropped, differing = keep_one([same_as_a, a])
    assert (dropped, differing) == (1, 0)


def test_repeated_digests() -> None:
    import numpy as np

    blob1 = np.array([5, 1, 9], dtype="<i8").tobytes()
    blob2 = np.array([9, 2, 5, 5], dtype="<i8").tobytes()
    assert repeated_digests([blob1, blob2]) == [5, 9]
    assert repeated_digests([]) == [] and repeated_digests([b""]) == []
    assert key_digest(("i", "t", "a")) == key_digest(("i", "t", "a")) != key_digest(("i", "ta", ""))


def test_deduplicate_shards_keeps_one_line_per_key(tmp_path: Path) -> None:
    staging = str(tmp_path)
    one = event("logstash-2015.12.01", "a", "2015-12-01T10:00:00Z", "1")
    two = event("logstash-2015.12.01", "a", "2015-12-01T10:00:00Z", "2")
    other = event("logstash-2015.12.01", "b", "2015-12-01T10:00:00Z")
    hits = [one, two, other, other]
    digests = np.array([key_digest((h["_index"], h["_type"], h["_id"])) for h in hits], dtype="<i8")
    with BeamPipeline(options=beam_options()) as p:
        infos = p | "Hits" >> beam.Create(hits) | WriteShards(staging, "t")
        blobs = p | "Digests" >> beam.Create([(0, digests.tobytes())])
        unique = (blobs, infos) | DeduplicateShards(staging)
        docs = unique | beam.FlatMap(lambda info: read_shard_lines(info.path))
        assert_that(docs, equal_to([one, other]))


def test_work_is_spread_over_workers_unless_there_is_one() -> None:
    assert not spreads_work(beam_options())
    assert not spreads_work(beam_options(["--direct_num_workers=1"]))
    assert not spreads_work(beam_options(["--runner=DirectRunner"]))  # mapped to the FnApiRunner
    assert spreads_work(beam_options(list(TWO_PROCESSES)))
    assert spreads_work(beam_options(["--direct_num_workers=0"]))  # one per core
    assert spreads_work(beam_options(["--runner=PortableRunner", "--job_endpoint=localhost:1"]))


class _StagedWhenFirstSeen(beam.DoFn):
    """Emits, for the first shard it receives, how many shard files were staged by then."""

    def __init__(self, staging: str) -> None:
        self._staging = staging

    def start_bundle(self) -> None:
        self._seen = False

    def process(self, shard: Shard) -> Any:
        if not self._seen:
            self._seen = True
            yield len(list(Path(self._staging).glob("in-*.jsonl")))


@pytest.mark.parametrize("spread", [True, False])
def test_without_spreading_the_next_step_starts_before_the_split_ends(
    tmp_path: Path, spread: bool
) -> None:
    """One worker (spread=False): the step after the split takes the first shard while es_data is
    still being split (nothing waits for the whole archive); spread over workers, a Reshuffle
    stands between them and the first shard arrives once all 12 are staged. The shards are the
    same either way."""
    archive = tmp_path / "a.zip"
    write_sample_archive(ManagerSpec.sized_snapshot(Version.V3_2, 1200, seed=3), archive)
    staging = tmp_path / "staging"
    staging.mkdir()
    with BeamPipeline(options=beam_options()) as p:
        shards = (
            p
            | beam.Create([str(archive)])
            | SplitEsDataIntoShards(str(staging), lines_per_shard=100, spread=spread)
        )
        first = shards | beam.ParDo(_StagedWhenFirstSeen(str(staging)))
        assert_that(first, equal_to([12] if spread else [1]), label="staged when first seen")
        lines = shards | beam.Map(lambda shard: (shard.first_line, Path(shard.path).read_bytes()))
        with SnapshotReader(archive) as snap:
            es_data = [line + b"\n" for _, line in snap.iter_lines()]
        expected = [(1 + 100 * n, b"".join(es_data[100 * n : 100 * (n + 1)])) for n in range(12)]
        assert_that(lines, equal_to(expected), label="shards")


def read_shard_lines(path: str) -> list[dict[str, Any]]:
    from transforms.shards import Shard

    return list(read_shard(Shard(path, 1)))


# ------------------------------------------------------------------------------------- CLI
def test_cli_versions_and_help() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["versions"])
    assert result.exit_code == 0, result.output
    assert "3.2 -> 3.3" in result.output and "3.3 -> 3.4" in result.output
    for command in (["versions", "--help"], ["convert", "--help"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0 and "Example: cfysnap" in result.output


def test_cli_convert_dry_run_and_downgrade(tmp_path: Path) -> None:
    runner = CliRunner()
    source = zip_tree(GOLDEN / "v3_3_to_v3_4" / "input", tmp_path / "in.zip")
    output = tmp_path / "out.zip"
    result = runner.invoke(app, ["convert", str(source), str(output), "--to", "3.4", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["changes"]["node"] == {"3.3 -> 3.4": 0, "3.4 restore defaults": 1}
    assert not output.exists()

    result = runner.invoke(app, ["convert", str(source), str(output), "--to", "3.4", "--json", "--", "--direct_num_workers=1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["documents_written"] == 10 and output.exists()

    result = runner.invoke(app, ["convert", str(output), str(tmp_path / "back.zip"), "--to", "3.3"])
    assert result.exit_code == 1
    assert "error: cannot convert a 3.4 snapshot to 3.3" in result.output


def test_a_truncated_archive_is_one_line_naming_it_once(tmp_path: Path) -> None:
    whole = tmp_path / "whole.zip"
    write_sample_archive(ManagerSpec.sized(Version.V3_2, 200), whole)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole.read_bytes()[:4000])
    result = CliRunner().invoke(app, ["convert", str(cut), str(tmp_path / "out.zip"), "--to", "3.4"])
    assert result.exit_code == 1
    assert result.output == (
        f"error: {cut}: not a readable zip archive (truncated or corrupt: File is not a zip file)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.zip", "whole.zip"]


def test_worker_processes_keep_quiet_unless_debug(tmp_path: Path) -> None:
    """A multi-process convert prints its summary and nothing of Beam's SDK harness (issue 15);
    --debug brings the workers' log lines back."""
    import subprocess
    import sys

    source = tmp_path / "s.zip"
    write_sample_archive(ManagerSpec(version=Version.V3_2, events=50, logs=50), source)
    args = [sys.executable, str(Path(__file__).resolve().parent.parent / "cli.py")]
    job = ["convert", str(source), str(tmp_path / "o.zip"), "--to", "3.4", "--force", "--",
           "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    quiet = subprocess.run([*args, *job], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert quiet.stdout.startswith(f"converted {source} (3.2) -> ")
    # started by a process that had quieted its own workers (as a cfysnap command run in-process
    # leaves its environment): --debug still wins, in the main process and in the workers
    site = str(Path(__file__).resolve().parent.parent / "core" / "worker_site")
    inherited = {**os.environ, "PYTHONPATH": site, "CFYSNAP_WORKER_LOG_LEVEL": "ERROR"}
    loud = subprocess.run([*args, "--debug", *job], capture_output=True, text=True, timeout=300,
                          env=inherited)
    assert loud.returncode == 0
    assert "DEBUG" in loud.stderr
    assert "sdk_worker" in loud.stderr or "SDK" in loud.stderr


def test_the_validation_child_starts_before_beam_is_imported(tmp_path: Path) -> None:
    """`run` starts the source's validation first, so its child overlaps the parent's import of
    Beam: importing the job and reaching the validation's start loads no Beam."""
    import subprocess
    import sys

    source = tmp_path / "s.zip"
    write_sample_archive(ManagerSpec(version=Version.V3_2, events=5, logs=5), source)
    probe = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
import pipelines.convert as convert
seen = []
real = convert._ConcurrentValidation.__init__
def spy(self, *args):
    seen.append("apache_beam" in sys.modules)
    real(self, *args)
convert._ConcurrentValidation.__init__ = spy
config = convert.ConvertConfig(source=convert.Path({str(source)!r}), output=convert.Path({str(tmp_path / "o.zip")!r}),
                               target=convert.Version.V3_4, progress=False)
convert.run(config)
print(seen, "apache_beam" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "[False] True"  # no Beam at the start; Beam for the job
    assert (tmp_path / "o.zip").exists()
