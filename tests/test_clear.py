"""pipelines.clear and `cfysnap clear` on a real search server with a loaded sample manager."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from core.errors import UnsafePath
from core.model import FILE_FOLDERS, STORAGE_INDEX, Version, is_event_index
from core.search import SearchClient
from pipelines.clear import ClearConfig, plan, run
from pipelines.sample.generate import ManagerSpec, manager_hits
from pipelines.sample.load import load_manager
from tests.conftest import answering, configured_url, wipe

pytestmark = pytest.mark.server
runner = CliRunner()
KEPT = {"provider_context", "snapshot"}


@pytest.fixture(scope="module", params=["es1", "es8"])
def search(request: pytest.FixtureRequest) -> Iterator[SearchClient]:
    """One client for the module on a server wiped once: creating indices is the slow part of
    loading a manager, so tests reset documents instead of deleting indices. Clearing runs on
    Elasticsearch 1.7 (the 1.x delete-by-query) and on Elasticsearch 8 (its `<index>-<type>`
    layout)."""
    with SearchClient(answering(configured_url(request.param))) as client:
        wipe(client)
        yield client


@pytest.fixture
def manager(search: SearchClient, tmp_path: Path) -> tuple[ManagerSpec, Path]:
    """A freshly loaded 3.4 manager (every folder, every type, logstash-* event indices)."""
    for index in (STORAGE_INDEX, "cloudify_events", "logstash-*"):
        search.delete_by_query(index, None)
    spec = ManagerSpec(
        version=Version.V3_4,
        blueprints=1,
        deployments_per_blueprint=2,
        events=4,
        logs=4,
        keys_dir=str(tmp_path / "keys"),
    )
    fs_root = tmp_path / "fs"
    load_manager(spec, search, fs_root)
    assert len(all_keys(search)) == sum(1 for _ in manager_hits(spec))
    return spec, fs_root


def all_keys(client: SearchClient) -> set[tuple[str, str, str]]:
    client.refresh()
    keys = set()
    for index in (STORAGE_INDEX, "cloudify_events", "logstash-*"):
        keys |= {(h["_index"], h["_type"], h["_id"]) for h in client.scan(index)}
    return keys


def kept_keys(spec: ManagerSpec) -> set[tuple[str, str, str]]:
    return {(h["_index"], h["_type"], h["_id"]) for h in manager_hits(spec) if h["_type"] in KEPT}


def deleted_counts(spec: ManagerSpec) -> dict[tuple[str, str], int]:
    counts = Counter(
        (h["_index"], h["_type"]) for h in manager_hits(spec) if h["_type"] not in KEPT
    )
    return dict(counts)


def test_clear_keeps_exactly_provider_context_and_snapshots(
    manager: tuple[ManagerSpec, Path], search: SearchClient
) -> None:
    spec, fs_root = manager
    config = ClearConfig(search.url, fs_root)
    expected_files = {name: len(list((fs_root / name).iterdir())) for name in FILE_FOLDERS}
    assert plan(config).documents == deleted_counts(spec)  # read-only preview
    assert len(all_keys(search)) == sum(1 for _ in manager_hits(spec))

    summary = run(config)

    assert all_keys(search) == kept_keys(spec)
    assert {k[2] for k in kept_keys(spec) if k[1] == "provider_context"} == {"CONTEXT"}
    assert len([k for k in kept_keys(spec) if k[1] == "snapshot"]) >= 1
    assert summary.documents == deleted_counts(spec)
    assert summary.kept == dict(Counter((i, t) for i, t, _ in kept_keys(spec)))
    assert any(is_event_index(i) for i, _ in summary.documents)
    assert summary.files == expected_files and all(expected_files.values())
    for name in FILE_FOLDERS:
        assert (fs_root / name).is_dir() and list((fs_root / name).iterdir()) == []
    assert (Path(spec.keys_dir)).exists()  # agent keys live outside the file server: untouched

    again = run(config)  # idempotent: nothing left to delete
    assert sum(again.documents.values()) == 0 and sum(again.files.values()) == 0


def test_a_linked_folder_is_refused_before_anything_is_deleted(
    manager: tuple[ManagerSpec, Path], search: SearchClient, tmp_path: Path
) -> None:
    spec, fs_root = manager
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (fs_root / "plugins").rename(tmp_path / "plugins-moved")
    (fs_root / "plugins").symlink_to(outside, target_is_directory=True)
    before = all_keys(search)

    with pytest.raises(UnsafePath, match="symbolic link"):
        run(ClearConfig(search.url, fs_root))

    assert (outside / "precious").read_text() == "keep me"
    cli = runner.invoke(app, ["clear", "--es", search.url, "--fs-root", str(fs_root), "--yes"])
    assert cli.exit_code == 1
    assert (
        "error: " in cli.output and "is a symbolic link; refusing to clear through it" in cli.output
    )
    assert all_keys(search) == before
    assert list((fs_root / "blueprints").iterdir())


def test_links_inside_folders_are_removed_not_followed_and_yes_skips_the_question(
    manager: tuple[ManagerSpec, Path], search: SearchClient, tmp_path: Path
) -> None:
    spec, fs_root = manager
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (fs_root / "blueprints" / "link-to-dir").symlink_to(outside, target_is_directory=True)
    (fs_root / "deployments" / "link-to-file").symlink_to(outside / "precious")

    result = runner.invoke(app, ["clear", "--es", search.url, "--fs-root", str(fs_root), "--yes"])

    assert result.exit_code == 0, result.output
    assert "will delete" not in result.output and "Clear the manager" not in result.output
    assert (outside / "precious").read_text() == "keep me"
    assert list((fs_root / "blueprints").iterdir()) == []
    assert list((fs_root / "deployments").iterdir()) == []
    assert all_keys(search) == kept_keys(spec)


def test_cli_asks_first_and_refuses_without_an_answer(
    manager: tuple[ManagerSpec, Path], search: SearchClient
) -> None:
    spec, fs_root = manager
    args = ["clear", "--es", search.url, "--fs-root", str(fs_root)]
    before = all_keys(search)

    no_stdin = runner.invoke(app, args)
    assert no_stdin.exit_code == 1, no_stdin.output
    assert "error: clear refused: no answer to the question (pass --yes); nothing was deleted\n" in (
        no_stdin.output)
    said_no = runner.invoke(app, args, input="n\n")  # a cancellation, not a failure
    assert said_no.exit_code == 0 and "clear cancelled; nothing was deleted\n" in said_no.output
    assert all_keys(search) == before

    said_yes = runner.invoke(app, args, input="y\n")
    assert said_yes.exit_code == 0, said_yes.output
    total = sum(deleted_counts(spec).values())
    assert f"will delete {total} documents:" in said_yes.output
    assert f"deleted {total} documents:" in said_yes.output
    for (index, doc_type), count in deleted_counts(spec).items():
        assert f"  {index}/{doc_type}: {count}\n" in said_yes.output
    assert all_keys(search) == kept_keys(spec)
