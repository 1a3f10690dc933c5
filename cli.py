"""cfysnap's command line: a thin Typer adapter over the importable jobs in `pipelines/`.

Each command parses and validates its options, builds one frozen config, calls
`pipelines.<job>.run(config, beam_args)` (or a read-only library function) and turns the typed
errors of `pipelines.errors` into one-line messages and exit codes. `--debug` shows tracebacks.
Everything after `--` goes to Beam untouched (runner flags: `-- --runner=FlinkRunner ...`).
Library imports happen inside the commands, so `--help` is instant.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(
    name="cfysnap",
    help=(
        "Create, convert, restore and verify Cloudify 3.x manager snapshots with Apache Beam.\n\n"
        "Example: cfysnap inspect snapshot.zip"
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)
sample_app = typer.Typer(
    help="Generate realistic manager states for tests, benchmarks and demos.\n\n"
    "Example: cfysnap sample archive demo.zip --version 3.2 --documents 10000",
    no_args_is_help=True,
)
app.add_typer(sample_app, name="sample")

BEAM_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
_debug = False


class VersionChoice(str, Enum):
    v3_2 = "3.2"
    v3_3 = "3.3"
    v3_4 = "3.4"


class TargetVersion(str, Enum):
    v3_3 = "3.3"
    v3_4 = "3.4"


class LayoutChoice(str, Enum):
    auto = "auto"
    typed = "typed"
    typeless = "typeless"


ArchiveArg = Annotated[
    Path,
    typer.Argument(help="Snapshot archive (.zip).", exists=True, dir_okay=False, readable=True),
]
EsOption = Annotated[
    str,
    typer.Option(
        "--es", envvar="CFYSNAP_ES_URL", help="Search server base URL, e.g. http://127.0.0.1:9200."
    ),
]
FsRootOption = Annotated[
    Path, typer.Option("--fs-root", help="The manager's file-server root (e.g. /opt/manager/resources).")
]
LayoutOption = Annotated[
    LayoutChoice,
    typer.Option("--layout", help="Index layout on the server: typed (ES<=6), typeless (ES>=7), or auto."),
]


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # Beam and the HTTP stack are chatty at INFO; cfysnap's own lines stay.
    for noisy in ("apache_beam", "root", "elastic_transport", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)
    # A failing DoFn is logged by Beam with its traceback and then re-raised to the job, which
    # `_run` reports as one line: without --debug that traceback is noise on stderr.
    logging.getLogger("apache_beam.runners").setLevel(logging.DEBUG if debug else logging.CRITICAL)
    logging.getLogger().setLevel(logging.DEBUG if debug else logging.ERROR)
    logging.getLogger("cfysnap").setLevel(logging.DEBUG if debug else logging.INFO)


def _run(fn: Callable[[], T]) -> T:
    """Run a command body; typed errors become one line on stderr and their exit code."""
    from pipelines.errors import CfysnapError

    try:
        return fn()
    except (typer.Exit, typer.Abort):
        raise
    except CfysnapError as exc:
        if _debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the edge: never a traceback without --debug
        if _debug:
            raise
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug)", err=True)
        raise typer.Exit(3) from None


def _layout(layout: LayoutChoice) -> Any:
    from pipelines.io.search import Layout

    return None if layout is LayoutChoice.auto else Layout(layout.value)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and debug logs.")] = False,
) -> None:
    global _debug
    _debug = debug
    _configure_logging(debug)


# ----------------------------------------------------------------------------------- inspect
@app.command()
def inspect(
    archive: ArchiveArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Summarise a snapshot archive: version, documents per (index, type), files, agents.

    Example: cfysnap inspect snapshot.zip --json
    """
    from pipelines.inspect import inspect_archive
    from pipelines.progress import Progress

    def body() -> None:
        with Progress("inspect", enabled=not as_json) as progress:
            report = inspect_archive(archive, on_line=lambda n: progress.advance(10_000))
        typer.echo(json.dumps(report.to_json(), indent=2) if as_json else report.render())

    _run(body)


# ---------------------------------------------------------------------------------- validate
@app.command()
def validate(archive: Annotated[Path, typer.Argument(help="Snapshot archive (.zip).")]) -> None:
    """Check an archive: readable zip, safe entry names, metadata, every es_data line, duplicates,
    manifest checksums. Exit 0 when valid, else one line per problem (member:line: reason), exit 1.

    Example: cfysnap validate snapshot.zip
    """
    from pipelines.progress import Progress
    from pipelines.validate import validate_archive

    def body() -> None:
        with Progress("validate") as progress:
            problems = validate_archive(archive, on_line=lambda n: progress.advance(10_000))
        for problem in problems:
            typer.echo(str(problem), err=True)
        if problems:
            typer.echo(f"invalid: {archive}: {len(problems)} problem(s)", err=True)
            raise typer.Exit(1)
        typer.echo(f"valid: {archive}")

    _run(body)


# ------------------------------------------------------------------------------------ sample
@sample_app.command("archive")
def sample_archive(
    output: Annotated[Path, typer.Argument(help="Where to write the generated snapshot archive.")],
    version: Annotated[VersionChoice, typer.Option("--version", help="Manager version to imitate.")] = VersionChoice.v3_3,
    documents: Annotated[int, typer.Option("--documents", min=10, help="About how many documents.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same archive).")] = 0,
) -> None:
    """Write a generated snapshot archive of a realistic manager.

    Example: cfysnap sample archive demo-3.2.zip --version 3.2 --documents 10000
    """
    from pipelines.model import Version
    from pipelines.sample.archive import write_sample_archive
    from pipelines.sample.generate import ManagerSpec

    def body() -> None:
        spec = ManagerSpec.sized(Version(version.value), documents, seed=seed)
        write_sample_archive(spec, output)
        typer.echo(f"wrote {output}")

    _run(body)


@sample_app.command("manager")
def sample_manager(
    es: EsOption,
    fs_root: FsRootOption,
    version: Annotated[VersionChoice, typer.Option("--version", help="Manager version to imitate.")] = VersionChoice.v3_3,
    documents: Annotated[int, typer.Option("--documents", min=10, help="About how many documents.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    keys_dir: Annotated[
        Path | None, typer.Option("--keys-dir", help="Where the Compute nodes' agent keys are written.")
    ] = None,
    empty: Annotated[
        bool,
        typer.Option(
            "--empty",
            help="A freshly installed manager instead: its indices, mappings and provider "
            "context only (the target of a restore).",
        ),
    ] = False,
    layout: LayoutOption = LayoutChoice.auto,
) -> None:
    """Load a generated manager into a search server and a file-server root, in the shape a real
    manager gives its server (on Elasticsearch 1.x: `cloudify_storage` with the manager's own
    settings and mappings, events in `cloudify_events` (3.2) or daily `logstash-*` indices).

    Example: cfysnap sample manager --es http://127.0.0.1:9200 --fs-root /tmp/mgr --version 3.2
    """
    from dataclasses import replace

    from pipelines.io.search import SearchClient
    from pipelines.model import Version
    from pipelines.sample.generate import ManagerSpec
    from pipelines.sample.load import load_empty_manager, load_manager

    def body() -> None:
        with SearchClient(es, layout=_layout(layout)) as client:
            if empty:
                load_empty_manager(Version(version.value), client, fs_root, seed=seed)
                typer.echo(
                    f"installed an empty {version.value} manager on {client.url} "
                    f"(its indices and provider context); file-server root {fs_root}"
                )
                return
            spec = ManagerSpec.sized(Version(version.value), documents, seed=seed)
            if keys_dir is not None:
                spec = replace(spec, keys_dir=str(keys_dir.resolve()))
            counts = load_manager(spec, client, fs_root)
            typer.echo(
                f"loaded a {version.value} manager: {sum(counts.values())} documents into "
                f"{client.url}; files in {fs_root}"
            )

    _run(body)


# [commands: versions/convert]
@app.command()
def versions() -> None:
    """Print the chain of snapshot-format upgrade steps, each with its changelog.

    Example: cfysnap versions
    """
    from pipelines.model import Version
    from transforms.versions import STEPS, describe

    def body() -> None:
        typer.echo("Known snapshot versions: " + ", ".join(v.value for v in Version))
        typer.echo(describe(list(STEPS)))

    _run(body)


@app.command(context_settings=BEAM_ARGS)
def convert(
    ctx: typer.Context,
    source: ArchiveArg,
    output: Annotated[Path, typer.Argument(help="Where to write the converted archive (.zip).", dir_okay=False)],
    to: Annotated[TargetVersion, typer.Option("--to", help="Snapshot version to convert to.")],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the plan and per type how many documents each step changes; write nothing."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    lines_per_shard: Annotated[
        int, typer.Option("--lines-per-shard", min=1, help="es_data lines per parallel work unit.")
    ] = 10_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary (or dry-run report) as JSON.")] = False,
) -> None:
    """Upgrade a snapshot archive to a newer format (3.2 -> 3.3 -> 3.4), archive to archive.

    Validates SOURCE first, then applies every version step in one Beam pass: documents get what
    the newer manager adds, 3.2 events move from cloudify_events to logstash-YYYY.MM.DD of their own
    timestamp, duplicates created by that move are dropped (counted), metadata.json and agents.json
    are upgraded, every other member is carried over byte for byte. OUTPUT appears only when
    complete and its counts reconcile. Arguments after `--` go to Beam.

    Example: cfysnap convert snap-3.2.zip snap-3.4.zip --to 3.4 -- --direct_num_workers=2 --direct_running_mode=multi_processing
    """
    from pipelines.convert import ConvertConfig, run
    from pipelines.model import Version

    def body() -> None:
        config = ConvertConfig(
            source=source,
            output=output,
            target=Version(to.value),
            dry_run=dry_run,
            force=force,
            lines_per_shard=lines_per_shard,
            show_progress=not as_json,
        )
        result = run(config, ctx.args)
        typer.echo(json.dumps(result.to_json(), indent=2) if as_json else result.render())

    _run(body)


# [commands: create]
class SourceVersionChoice(str, Enum):
    auto = "auto"
    v3_2 = "3.2"
    v3_2_1 = "3.2.1"
    v3_3 = "3.3"
    v3_4 = "3.4"


@app.command(context_settings=BEAM_ARGS)
def create(
    ctx: typer.Context,
    es: EsOption,
    fs_root: Annotated[
        Path,
        typer.Option(
            "--fs-root",
            help="The manager's file-server root (e.g. /opt/manager/resources).",
            exists=True,
            file_okay=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the archive here (give this or --snapshot-id).", dir_okay=False),
    ] = None,
    snapshot_id: Annotated[
        str | None,
        typer.Option(
            "--snapshot-id",
            "-s",
            help="Store the archive in the manager as <fs-root>/snapshots/<id>/<id>.zip and record "
            "its snapshot document and create_snapshot execution, as the manager does.",
        ),
    ] = None,
    exclude_credentials: Annotated[
        bool, typer.Option("--exclude-credentials", help="Leave the Compute nodes' agent keys out.")
    ] = False,
    exclude_events: Annotated[
        bool, typer.Option("--exclude-events", help="Leave the cloudify_event documents out.")
    ] = False,
    exclude_logs: Annotated[
        bool, typer.Option("--exclude-logs", help="Leave the cloudify_log documents out.")
    ] = False,
    source_version: Annotated[
        SourceVersionChoice,
        typer.Option(
            "--source-version",
            help="The manager's version; auto reads it from its data and prints the facts it was "
            "read from (conflicting facts are refused: then say it here). 3.2.1: a 3.2.1 manager, "
            "whose agents.json the 3.2.1 tool writes with its own broker credentials.",
        ),
    ] = SourceVersionChoice.auto,
    slices: Annotated[
        int | None,
        typer.Option("--slices", min=1, help="Scroll slices per index (default: max(2, Beam workers))."),
    ] = None,
    layout: LayoutOption = LayoutChoice.auto,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Create a snapshot archive of a live Cloudify 3.2/3.3/3.4 manager: its search-server
    documents (minus provider_context, snapshot records and the running create's execution),
    its file server (blueprints, uploaded-blueprints, plugins, deployments), agents.json and the
    Compute nodes' agent keys. The archive is written in the manager's own version, atomically;
    counts are reconciled (a mismatch fails the job). Beam runner flags go after `--`.

    Example: cfysnap create --es http://127.0.0.1:9200 --fs-root /opt/manager/resources --output snap.zip -- --direct_num_workers=2 --direct_running_mode=multi_processing
    """
    from pipelines.create import CreateConfig, run

    if (output is None) == (snapshot_id is None):
        raise typer.BadParameter("give exactly one of --output and --snapshot-id")

    def body() -> None:
        config = CreateConfig(
            es_url=es,
            fs_root=fs_root.resolve(),
            output=output,
            snapshot_id=snapshot_id,
            include_credentials=not exclude_credentials,
            exclude_events=exclude_events,
            exclude_logs=exclude_logs,
            source_version=None
            if source_version is SourceVersionChoice.auto
            else source_version.value,
            layout=_layout(layout),
            slices=slices,
            force=force,
        )
        summary = run(config, ctx.args)
        typer.echo(summary.render())

    _run(body)


# [commands: restore/verify]
CredentialsDirOption = Annotated[
    Path,
    typer.Option(
        "--credentials-dir",
        help="Where agent keys go: <DIR>/<deployment>_<node>/agent_key, mode 0600 "
        "(Cloudify: /opt/manager/snapshot-credentials).",
    ),
]
TargetVersionOption = Annotated[
    TargetVersion,
    typer.Option("--target-version", help="Version of the target manager; older archives are upgraded."),
]
ForceRestoreOption = Annotated[
    bool, typer.Option("--force", help="Restore into a target that has blueprints (clashing ids are still refused).")
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Finish an interrupted restore from its journal, doing only what is missing.")
]
JournalOption = Annotated[
    Path | None,
    typer.Option("--journal", help="Journal file (default <fs-root>/.cfysnap/restore-<archive sha256>.jsonl)."),
]
RestoreDryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Check and print what would be written; write nothing.")
]
BatchDocsOption = Annotated[int, typer.Option("--batch-docs", min=1, help="Documents per bulk request, at most.")]
BatchBytesOption = Annotated[
    int, typer.Option("--batch-bytes", min=1, help="Bytes of documents per bulk request, at most.")
]
ShardLinesOption = Annotated[int, typer.Option("--shard-lines", min=1, help="es_data lines per parallel shard.")]
# measured best on 2 cores (bench/restore_bench.py); shared by `restore` and `snapshots restore`
RESTORE_BATCH_DOCS, RESTORE_BATCH_BYTES, RESTORE_SHARD_LINES = 2000, 8_000_000, 10_000


def _restore_job(
    ctx: typer.Context,
    archive: Path,
    es: str,
    fs_root: Path,
    credentials_dir: Path,
    target_version: TargetVersion,
    force: bool,
    resume: bool,
    journal: Path | None,
    dry_run: bool,
    layout: LayoutChoice,
    batch_docs: int,
    batch_bytes: int,
    shard_lines: int,
) -> None:
    """Build the RestoreConfig both restore commands share, run it, print its summary."""
    from pipelines.model import Version
    from pipelines.restore import RestoreConfig, run

    config = RestoreConfig(
        archive=archive,
        es_url=es,
        fs_root=fs_root,
        credentials_dir=credentials_dir,
        target_version=Version(target_version.value),
        force=force,
        resume=resume,
        journal=journal,
        dry_run=dry_run,
        layout=None if layout is LayoutChoice.auto else layout.value,
        batch_docs=batch_docs,
        batch_bytes=batch_bytes,
        lines_per_shard=shard_lines,
    )
    typer.echo(run(config, tuple(ctx.args)).render())


@app.command(context_settings=BEAM_ARGS)
def restore(
    ctx: typer.Context,
    archive: ArchiveArg,
    es: EsOption,
    fs_root: FsRootOption,
    credentials_dir: CredentialsDirOption,
    target_version: TargetVersionOption = TargetVersion.v3_4,
    force: ForceRestoreOption = False,
    resume: ResumeOption = False,
    journal: JournalOption = None,
    dry_run: RestoreDryRunOption = False,
    batch_docs: BatchDocsOption = RESTORE_BATCH_DOCS,
    batch_bytes: BatchBytesOption = RESTORE_BATCH_BYTES,
    shard_lines: ShardLinesOption = RESTORE_SHARD_LINES,
    layout: LayoutOption = LayoutChoice.auto,
) -> None:
    """Restore a snapshot into a target manager: check first (archive valid, not newer than the
    target, target clean unless --force, no clashing blueprint/deployment ids), then copy files,
    write agent keys, and bulk-load every document with its own id (events into the daily index of
    their own timestamp, so a second restore never duplicates them), merging agents.json into node
    instances. Every step is journaled; --resume finishes an interrupted restore. Beam options
    go after `--`.

    Example: cfysnap restore snap.zip --es http://127.0.0.1:9200 --fs-root /opt/manager/resources --credentials-dir /opt/manager/snapshot-credentials -- --direct_num_workers=2 --direct_running_mode=multi_processing
    """
    def body() -> None:
        _restore_job(ctx, archive, es, fs_root, credentials_dir, target_version, force, resume,
                     journal, dry_run, layout, batch_docs, batch_bytes, shard_lines)

    _run(body)


@app.command()
def verify(
    archive: ArchiveArg,
    es: EsOption,
    fs_root: FsRootOption,
    credentials_dir: Annotated[
        Path | None,
        typer.Option("--credentials-dir", help="Where the restore wrote agent keys (checked when given)."),
    ] = None,
    target_version: TargetVersionOption = TargetVersion.v3_4,
    max_differences: Annotated[
        int, typer.Option("--max-differences", min=1, help="How many differences to list.")
    ] = 20,
    layout: LayoutOption = LayoutChoice.auto,
) -> None:
    """Compare a target manager with an archive: documents per (index, type) by count and by
    digest of each document as the restore writes it, files by sha256, agent keys and their mode.
    Exit 0 when everything matches, else list the differences (first N, with counts) and exit 1.

    Example: cfysnap verify snap.zip --es http://127.0.0.1:9200 --fs-root /opt/manager/resources --credentials-dir /opt/manager/snapshot-credentials
    """
    from pipelines.model import Version
    from pipelines.verify import VerifyConfig, run

    def body() -> None:
        config = VerifyConfig(
            archive=archive,
            es_url=es,
            fs_root=fs_root,
            credentials_dir=credentials_dir,
            target_version=Version(target_version.value),
            layout=None if layout is LayoutChoice.auto else layout.value,
            max_differences=max_differences,
        )
        report = run(config)
        typer.echo(report.render())
        if not report.ok:
            raise typer.Exit(1)

    _run(body)


# [commands: snapshots/clear]
snapshots_app = typer.Typer(
    help="The manager's snapshot store: list, upload, download, delete and restore stored "
    "snapshots (<fs-root>/snapshots/<id>/<id>.zip plus their snapshot documents).\n\n"
    "Example: cfysnap snapshots list --es http://127.0.0.1:9200 --fs-root /opt/manager/resources",
    no_args_is_help=True,
)
app.add_typer(snapshots_app, name="snapshots")

SnapshotIdArg = Annotated[str, typer.Argument(help="The snapshot id.", show_default=False)]


def _open_store(es: str, fs_root: Path, layout: LayoutChoice) -> Any:
    """A SnapshotStore (its client closed by the caller) after reaping stale `creating` snapshots."""
    from pipelines.io.search import SearchClient
    from pipelines.store import SnapshotStore

    store = SnapshotStore(SearchClient(es, layout=_layout(layout)), fs_root)
    try:
        for record in store.reap_stale():
            typer.echo(f"warning: snapshot {record.id} marked failed: {record.error}", err=True)
    except BaseException:
        store.client.close()
        raise
    return store


@snapshots_app.command("list")
def snapshots_list(
    es: EsOption,
    fs_root: FsRootOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print the snapshots as a JSON list.")] = False,
    layout: LayoutOption = LayoutChoice.auto,
) -> None:
    """List the stored snapshots (oldest first): id, created_at, status, error.

    Example: cfysnap snapshots list --es http://127.0.0.1:9200 --fs-root /opt/manager/resources --json
    """

    def body() -> None:
        store = _open_store(es, fs_root, layout)
        with store.client:
            records = store.list()
        if as_json:
            typer.echo(json.dumps([r.to_doc() for r in records], indent=2))
            return
        header = ("id", "created_at", "status", "error")
        rows = [header] + [(r.id, r.created_at, r.status, r.error) for r in records]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        typer.echo(f"{len(records)} snapshot(s)")

    _run(body)


@snapshots_app.command("upload")
def snapshots_upload(
    path: Annotated[
        str, typer.Argument(help="Archive to store: a local path or any Beam filesystem URL (gs://, s3://, ...).")
    ],
    snapshot_id: Annotated[str, typer.Option("--snapshot-id", "-s", help="Id to store it under (must be new).")],
    es: EsOption,
    fs_root: FsRootOption,
    layout: LayoutOption = LayoutChoice.auto,
) -> None:
    """Validate an archive and store it as a new snapshot with status `uploaded`. An invalid
    archive or an existing id is refused and nothing is stored.

    Example: cfysnap snapshots upload snap.zip --snapshot-id before-upgrade --es http://127.0.0.1:9200 --fs-root /opt/manager/resources
    """

    def body() -> None:
        store = _open_store(es, fs_root, layout)
        with store.client:
            transfer = store.upload(snapshot_id, path)
        typer.echo(
            f"uploaded {snapshot_id}: {transfer.path} ({transfer.size} bytes, sha256 {transfer.sha256})"
        )

    _run(body)


@snapshots_app.command("download")
def snapshots_download(
    snapshot_id: SnapshotIdArg,
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o",
            help="Where to write it: a file, an existing folder (gets <id>.zip), or a Beam filesystem URL.",
        ),
    ],
    es: EsOption,
    fs_root: FsRootOption,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    layout: LayoutOption = LayoutChoice.auto,
) -> None:
    """Copy a stored `created` or `uploaded` snapshot's archive out of the manager (streamed,
    atomic). Failed and still-creating snapshots are refused.

    Example: cfysnap snapshots download before-upgrade -o backup.zip --es http://127.0.0.1:9200 --fs-root /opt/manager/resources
    """

    def body() -> None:
        store = _open_store(es, fs_root, layout)
        with store.client:
            transfer = store.download(snapshot_id, output, overwrite=force)
        typer.echo(
            f"downloaded {snapshot_id} to {transfer.path} ({transfer.size} bytes, sha256 {transfer.sha256})"
        )

    _run(body)


@snapshots_app.command("delete")
def snapshots_delete(
    snapshot_id: SnapshotIdArg,
    es: EsOption,
    fs_root: FsRootOption,
    layout: LayoutOption = LayoutChoice.auto,
) -> None:
    """Delete a stored snapshot: its folder <fs-root>/snapshots/<id>/ and its document (any
    status but a `creating` one whose creator is still running).

    Example: cfysnap snapshots delete before-upgrade --es http://127.0.0.1:9200 --fs-root /opt/manager/resources
    """

    def body() -> None:
        store = _open_store(es, fs_root, layout)
        with store.client:
            record = store.delete(snapshot_id)
        status = f" (status {record.status})" if record else " (folder only: it had no document)"
        typer.echo(f"deleted snapshot {snapshot_id}{status}")

    _run(body)


@snapshots_app.command("restore", context_settings=BEAM_ARGS)
def snapshots_restore(
    ctx: typer.Context,
    snapshot_id: SnapshotIdArg,
    es: EsOption,
    fs_root: FsRootOption,
    credentials_dir: CredentialsDirOption,
    target_version: TargetVersionOption = TargetVersion.v3_4,
    force: ForceRestoreOption = False,
    resume: ResumeOption = False,
    journal: JournalOption = None,
    dry_run: RestoreDryRunOption = False,
    batch_docs: BatchDocsOption = RESTORE_BATCH_DOCS,
    batch_bytes: BatchBytesOption = RESTORE_BATCH_BYTES,
    shard_lines: ShardLinesOption = RESTORE_SHARD_LINES,
    layout: LayoutOption = LayoutChoice.auto,
) -> None:
    """Restore a stored snapshot (status created or uploaded) into the manager, exactly as
    `cfysnap restore` does with <fs-root>/snapshots/<id>/<id>.zip. Failed and still-creating
    snapshots are refused. Beam options go after `--`.

    Example: cfysnap snapshots restore before-upgrade --es http://127.0.0.1:9200 --fs-root /opt/manager/resources --credentials-dir /opt/manager/snapshot-credentials
    """
    def body() -> None:
        store = _open_store(es, fs_root, layout)
        with store.client:
            archive = store.archive_for_restore(snapshot_id)
        _restore_job(ctx, archive, es, fs_root, credentials_dir, target_version, force, resume,
                     journal, dry_run, layout, batch_docs, batch_bytes, shard_lines)

    _run(body)


@app.command()
def clear(
    es: EsOption,
    fs_root: FsRootOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    layout: LayoutOption = LayoutChoice.auto,
) -> None:
    """Clear a manager before a restore (the documented manual procedure): delete every document
    except the provider_context and snapshot documents (cloudify_storage and every event index),
    and empty blueprints/, uploaded-blueprints/, plugins/ and deployments/ (the folders stay).
    Shows what it will delete and asks first unless --yes; prints what it deleted, per type.

    Example: cfysnap clear --es http://127.0.0.1:9200 --fs-root /opt/manager/resources --yes
    """
    from pipelines.clear import ClearConfig, plan, run

    def body() -> None:
        config = ClearConfig(es_url=es, fs_root=fs_root, layout=_layout(layout))
        if not yes:
            typer.echo(plan(config).render("will delete"))
            try:
                confirmed = typer.confirm(f"Clear the manager at {es} and {fs_root}?")
            except typer.Abort:
                confirmed = None
            if not confirmed:
                why = "no confirmation (pass --yes)" if confirmed is None else "cancelled"
                typer.echo(f"clear refused: {why}; nothing was deleted", err=True)
                raise typer.Exit(1)
        typer.echo(run(config).render())

    _run(body)


# [commands: export]
class ExportFormat(str, Enum):
    parquet = "parquet"


@app.command(context_settings=BEAM_ARGS)
def export(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="[ARCHIVE] OUT_DIR: the snapshot archive to read (omit it with --es) and the "
            "dataset folder to write (must not exist, or be empty).",
            metavar="[ARCHIVE] OUT_DIR",
        ),
    ],
    es: Annotated[
        str | None,
        typer.Option("--es", help="Read a live manager's search server instead of an archive."),
    ] = None,
    fs_root: Annotated[
        Path | None,
        typer.Option(
            "--fs-root",
            help="The manager's file-server root (accepted with --es; export reads documents only).",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    format_: Annotated[
        ExportFormat, typer.Option("--format", help="Output format.")
    ] = ExportFormat.parquet,
    types: Annotated[
        str,
        typer.Option(
            "--types",
            help="Comma-separated types: events, logs, any document type (node_instance, "
            "execution, ...), or all.",
        ),
    ] = "events,logs",
    rows_per_group: Annotated[
        int, typer.Option("--rows-per-group", min=1, help="Rows per Parquet row group (memory bound).")
    ] = 50_000,
    layout: LayoutOption = LayoutChoice.auto,
) -> None:
    """Export events and logs (or every document type) as a Parquet dataset for analytics,
    partitioned hive-style by type and day (type=cloudify_event/day=2016-03-14/part-*.parquet).
    Columns: timestamp (UTC, ms), event_type, level, deployment_id, execution_id, workflow_id,
    node_id, message, _index, _id, and doc (the whole _source as JSON). Day is the document's UTC
    date (@timestamp/timestamp for events and logs, created_at for other types), else none.
    Read it with pyarrow.dataset or DuckDB. Written atomically; counts are reconciled. Beam
    runner flags go after `--`.

    Example: cfysnap export snapshot.zip events-parquet --types events,logs -- --direct_num_workers=2 --direct_running_mode=multi_processing
    """
    from pipelines.export import ExportConfig, parse_types, run

    # Click gives positional words after `--` to the arguments first: they are Beam flags.
    beam_args = [str(p) for p in paths if str(p).startswith("-")] + list(ctx.args)
    paths = [p for p in paths if not str(p).startswith("-")]
    if es is None and len(paths) != 2:
        raise typer.BadParameter("give ARCHIVE OUT_DIR, or --es URL and OUT_DIR")
    if es is not None and len(paths) != 1:
        raise typer.BadParameter("with --es give only OUT_DIR (no archive)")
    if es is None and fs_root is not None:
        raise typer.BadParameter("--fs-root goes with --es")
    archive = paths[0] if es is None else None
    if archive is not None and not archive.is_file():
        raise typer.BadParameter(f"archive {archive} is not a file")
    try:
        selected = parse_types(types)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    def body() -> None:
        config = ExportConfig(
            output=paths[-1],
            archive=archive,
            es_url=es,
            layout=_layout(layout),
            types=selected,
            format=format_.value,
            rows_per_group=rows_per_group,
        )
        summary = run(config, beam_args)
        typer.echo(summary.render())

    _run(body)


def main() -> None:
    """Console-script entry point (`cfysnap`)."""
    app()


if __name__ == "__main__":
    main()
