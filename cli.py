"""cfysnap's command line: a thin Typer adapter over the importable jobs in `pipelines/`.

Each command parses and validates its options, builds one frozen config, calls
`pipelines.<job>.run(config, beam_args)` (or a read-only library function) and turns the typed
errors of `core.errors` into one-line messages and exit codes. `--debug` shows tracebacks.
Everything after `--` goes to Beam untouched (runner flags: `-- --runner=FlinkRunner ...`); an
argument before it that is not the command's own is a usage error (`BeamCommand`).
Library imports happen inside the commands, so `--help` is instant.

Options several commands share are declared once and added by a decorator: `@server_options`
(where the search server is and how to reach it, given to the command as one `SearchTarget`) and
`@restore_options` (how a restore runs, as one `RestoreOptions`).

Exit codes: 0 success, 1 a refused or failed job (or an unexpected error), 2 a usage error
(as Click reports it), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import functools
import inspect as pyinspect
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer._click.core import Context as ClickContext
from typer._click.exceptions import MissingParameter, UsageError
from typer.core import TyperCommand

from core.model import Version
from core.text import plural

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
snapshots_app = typer.Typer(
    help="The manager's snapshot store: list, upload, download, delete and restore stored "
    "snapshots (<fs-root>/snapshots/<id>/<id>.zip plus their snapshot documents).\n\n"
    "Example: cfysnap snapshots list --es http://127.0.0.1:9200 --fs-root /opt/manager/resources",
    no_args_is_help=True,
)
app.add_typer(snapshots_app, name="snapshots")

BEAM_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
"""A job command's context: its arguments after `--` are Beam's flags (`ctx.args`)."""
_debug = False


class BeamCommand(TyperCommand):
    """A job command (`create`, `convert`, `restore`, `snapshots restore`, `export`): what follows
    `--` goes to Beam untouched (`ctx.args`); anything before it that is not the command's own is
    a usage error naming it, raised while the command line is parsed, before the command runs.

    Click, told to take unknown options (Beam's flags), takes them before `--` too, and Beam drops
    a flag it does not know with a warning nobody sees: a misspelt `--exclude-evnets` would run the
    job without `--exclude-events`. When a required option is missing, a misspelt one given
    instead is named first (`--too 3.4`: did you mean `--to`?)."""

    def parse_args(self, ctx: ClickContext, args: list[str]) -> list[str]:
        given = list(args)  # Click's parser consumes the list it is handed
        before = given[: given.index("--")] if "--" in given else given
        own = _own_options(self)
        try:
            extra = super().parse_args(ctx, args)
        except MissingParameter:
            for token in before:
                if token.startswith("--") and token.split("=", 1)[0] not in own:
                    raise _not_ours(ctx, token, own) from None
            raise
        after = len(given) - len(before) - 1 if "--" in given else 0
        stray = ctx.args[: max(len(ctx.args) - after, 0)]
        if stray:
            raise _not_ours(ctx, stray[0], own)
        return extra


def _own_options(command: Any) -> list[str]:
    names = {"-h", "--help"}
    for param in command.params:
        names.update(getattr(param, "opts", ()), getattr(param, "secondary_opts", ()))
    return sorted(names)


def _not_ours(ctx: ClickContext, token: str, own: list[str]) -> Exception:
    """The usage error of an argument the command does not take."""
    import difflib

    if not token.startswith("-") or token == "-":
        return UsageError(f"unexpected extra argument {token!r}", ctx=ctx)
    name = token.split("=", 1)[0]
    close = difflib.get_close_matches(name, own, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "Beam's flags go after `--`"
    return UsageError(f"No such option: {name} ({hint})", ctx=ctx)


# ------------------------------------------------------------------------------ choices
VersionChoice = Enum("VersionChoice", {f"v{v.name[1:]}": v.value for v in Version}, type=str)  # type: ignore[misc]
"""Every snapshot version cfysnap knows (`core.model.Version`)."""
TargetVersion = Enum(  # type: ignore[misc]
    "TargetVersion", {f"v{v.name[1:]}": v.value for v in Version if v >= Version.V3_3}, type=str
)
"""The versions a restore or a conversion can go to (3.2 had no snapshot restore)."""


def _source_versions() -> dict[str, str]:
    from core.manager import RELEASES

    return {"auto": "auto", **{f"v{r.replace('.', '_')}": r for r in RELEASES}}


SourceVersionChoice = Enum("SourceVersionChoice", _source_versions(), type=str)  # type: ignore[misc]
"""What a live manager can be: auto (read from its data), or a release (3.2.1 included)."""
V33, V34, AUTO = VersionChoice("3.3"), TargetVersion("3.4"), SourceVersionChoice("auto")


class LayoutChoice(str, Enum):
    auto = "auto"
    typed = "typed"
    typeless = "typeless"


class ExportFormat(str, Enum):
    parquet = "parquet"


ArchiveArg = Annotated[
    Path,
    typer.Argument(
        help="Snapshot archive (.zip).", exists=True, dir_okay=False, readable=True, metavar="ARCHIVE"
    ),
]
FsRootOption = Annotated[
    Path, typer.Option("--fs-root", help="The manager's file-server root (e.g. /opt/manager/resources).", metavar="DIR")
]
LinesPerShardOption = Annotated[
    int, typer.Option("--lines-per-shard", min=1, help="es_data lines per parallel work unit.", metavar="N")
]
SnapshotIdArg = Annotated[str, typer.Argument(help="The snapshot id.", show_default=False, metavar="SNAPSHOT_ID")]


# ------------------------------------------------------------------------ shared options
def _with_options(
    bundle: str, extra: list[pyinspect.Parameter], build: Callable[..., Any]
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A decorator adding the options `extra` to a command; they reach it built into one value,
    the keyword `bundle` (`build(**their values)`). Options are declared once, for every command
    that takes them."""
    names = [p.name for p in extra]

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        signature = pyinspect.signature(fn, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != bundle]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> T:
            values = {name: kwargs.pop(name) for name in names}
            return fn(*args, **kwargs, **{bundle: build(**values)})

        params = kept + [p.replace(kind=pyinspect.Parameter.KEYWORD_ONLY) for p in extra]
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def _option(name: str, annotation: Any, default: Any = pyinspect.Parameter.empty) -> pyinspect.Parameter:
    return pyinspect.Parameter(name, pyinspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def _secret(value: str | None, file: Path | None, what: str) -> str | None:
    """A secret from its environment variable or from a file (first line); never from a flag,
    which would show in process lists and shell history."""
    if file is not None:
        try:
            lines = file.read_text().splitlines()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read the {what} file {file}: {exc.strerror}") from None
        return lines[0].strip() if lines else ""
    return value or None


def _target(
    es: str,
    layout: LayoutChoice,
    ca_cert: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    insecure: bool,
) -> Any:
    from core.search import TLS, Auth, Layout, SearchTarget

    user = os.environ.get("CFYSNAP_ES_USER")
    password = _secret(
        os.environ.get("CFYSNAP_ES_PASSWORD"),
        Path(os.environ["CFYSNAP_ES_PASSWORD_FILE"]) if os.environ.get("CFYSNAP_ES_PASSWORD_FILE") else None,
        "password",
    )
    api_key = _secret(
        os.environ.get("CFYSNAP_ES_API_KEY"),
        Path(os.environ["CFYSNAP_ES_API_KEY_FILE"]) if os.environ.get("CFYSNAP_ES_API_KEY_FILE") else None,
        "API key",
    )
    if user and api_key:
        raise typer.BadParameter("give CFYSNAP_ES_USER (and a password) or an API key, not both")
    auth = Auth(username=user, password=password) if user else Auth(api_key=api_key) if api_key else None
    if (client_cert is None) != (client_key is None):
        raise typer.BadParameter("--client-cert and --client-key go together")
    tls = None
    if ca_cert or client_cert or insecure:
        tls = TLS(
            ca_cert=str(ca_cert) if ca_cert else None,
            client_cert=str(client_cert) if client_cert else None,
            client_key=str(client_key) if client_key else None,
            verify=not insecure,
        )
    layout_value = None if layout is LayoutChoice.auto else Layout(layout.value)
    return SearchTarget(es, layout_value, tls, auth)


_METAVARS = {
    "--es": "URL", "--credentials-dir": "DIR", "--journal": "PATH", "--staging": "PATH",
    "--ca-cert": "FILE", "--client-cert": "FILE", "--client-key": "FILE", "--batch-docs": "N",
    "--batch-bytes": "BYTES",
}
"""What --help shows for a value (Typer's default is the type: `<path>`, `<str>`, `<int range>`)."""


def _opt(flag: str, kind: Any, text: str, default: Any = pyinspect.Parameter.empty, **how: Any) -> pyinspect.Parameter:
    """One option of a shared group: `--some-flag` becomes the parameter `some_flag`."""
    name = flag.lstrip("-").replace("-", "_")
    if flag in _METAVARS:
        how.setdefault("metavar", _METAVARS[flag])
    return _option(name, Annotated[kind, typer.Option(flag, help=text, **how)], default)


_PEM: dict[str, Any] = {"exists": True, "dir_okay": False, "readable": True}
_ES_HELP = (
    "Search server base URL, e.g. http://127.0.0.1:9200 (env CFYSNAP_ES_URL). Credentials come "
    "from the environment, never the URL: CFYSNAP_ES_USER with CFYSNAP_ES_PASSWORD or "
    "CFYSNAP_ES_PASSWORD_FILE, or CFYSNAP_ES_API_KEY or CFYSNAP_ES_API_KEY_FILE."
)


def _server_params(required: bool) -> list[pyinspect.Parameter]:
    """--es (required, or optional for commands that can read an archive instead) and the
    options that say how to reach the server."""
    es = (
        _opt("--es", str, _ES_HELP, envvar="CFYSNAP_ES_URL")
        if required
        else _opt("--es", str | None, "Read a live manager's search server instead. " + _ES_HELP, None)
    )
    return [
        es,
        _opt("--layout", LayoutChoice, "Index layout on the server: typed (ES<=6), typeless (ES>=7), or auto.", LayoutChoice.auto),
        _opt("--ca-cert", Path | None, "CA bundle (PEM) to trust for https.", None, **_PEM),
        _opt("--client-cert", Path | None, "Client certificate (PEM) for https.", None, **_PEM),
        _opt("--client-key", Path | None, "Key of --client-cert (PEM).", None, **_PEM),
        _opt("--insecure", bool, "Do not check the server's certificate.", False),
    ]


def _optional_target(es: str | None, **how: Any) -> Any:
    return None if es is None else _target(es, **how)


server_options = _with_options("target", _server_params(required=True), _target)
"""Adds --es, --layout, --ca-cert, --client-cert, --client-key, --insecure; the command gets
`target: SearchTarget`."""
optional_server_options = _with_options("target", _server_params(required=False), _optional_target)
"""The same with --es optional; the command gets `target: SearchTarget | None`."""


@dataclass(frozen=True)
class RestoreOptions:
    """How a restore runs: everything `restore` and `snapshots restore` share but the archive."""

    fs_root: Path
    credentials_dir: Path
    target_version: Version
    force: bool
    resume: bool
    journal: str | None
    staging: str | None
    dry_run: bool
    batch_docs: int
    batch_bytes: int
    lines_per_shard: int


def _restore_options(**values: Any) -> RestoreOptions:
    values["target_version"] = Version(values["target_version"].value)
    return RestoreOptions(**values)


# batch sizes measured best on 2 cores (then with bench/restore_bench.py, since folded into bench/run)
RESTORE_OPTIONS = [
    _option("fs_root", FsRootOption),
    _opt(
        "--credentials-dir", Path, "Where agent keys go: <DIR>/<deployment>_<node>/agent_key, "
        "mode 0600 (Cloudify: /opt/manager/snapshot-credentials).",
    ),
    _opt("--target-version", TargetVersion, "Version of the target manager; older archives are upgraded.", V34),
    _opt("--force", bool, "Restore into a target that has blueprints (clashing ids are still refused).", False),
    _opt("--resume", bool, "Finish an interrupted restore from its journal, doing only what is missing.", False),
    _opt(
        "--journal", str | None, "Journal folder, any Beam filesystem path every worker reaches "
        "(default <fs-root>/.cfysnap/restore-<archive sha256>).", None,
    ),
    _opt(
        "--staging", str | None, "Where es_data shards are staged, a path every worker reaches "
        "(default: in the journal folder).", None,
    ),
    _opt("--dry-run", bool, "Check and print what would be written; write nothing.", False),
    _opt("--batch-docs", int, "Documents per bulk request, at most.", 2000, min=1),
    _opt("--batch-bytes", int, "Bytes of documents per bulk request, at most.", 8_000_000, min=1),
    _option("lines_per_shard", LinesPerShardOption, 10_000),
]
restore_options = _with_options("options", RESTORE_OPTIONS, _restore_options)
"""Adds every restore option; the command gets `options: RestoreOptions`."""


def _size(text: str) -> int:
    from core.text import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _limits(max_member_size: str, max_total_size: str, max_ratio: float) -> Any:
    from core.validate import ArchiveLimits

    return ArchiveLimits(
        member_bytes=_size(max_member_size), total_bytes=_size(max_total_size), ratio=max_ratio
    )


LIMIT_OPTIONS = [
    _opt("--max-member-size", str, "Largest uncompressed archive member (zip bombs are refused "
         "before anything is read).", "16GiB", metavar="SIZE"),
    _opt("--max-total-size", str, "Largest uncompressed archive, all members.", "64GiB",
         metavar="SIZE"),
    _opt("--max-ratio", float, "Largest compression ratio of a member of 1 MiB or more.", 100.0,
         min=1.0, metavar="RATIO"),
]
limit_options = _with_options("limits", LIMIT_OPTIONS, _limits)
"""Adds --max-member-size, --max-total-size, --max-ratio; the command gets `limits:
ArchiveLimits`."""


def _archive_key(key_file: Path | None) -> Any:
    from core.crypto import ArchiveKey, KeyRefused

    try:
        return ArchiveKey.from_environment(str(key_file) if key_file else None)
    except OSError as exc:
        raise typer.BadParameter(f"cannot read the key file {exc.filename}: {exc.strerror}") from None
    except KeyRefused as exc:
        raise typer.BadParameter(str(exc)) from None


KEY_OPTIONS = [
    _opt("--key-file", Path | None, "File holding the key of encrypted credentials (else the "
         "environment: CFYSNAP_ARCHIVE_KEY_FILE, or CFYSNAP_ARCHIVE_KEY). Never on the command "
         "line.", None, exists=True, dir_okay=False, readable=True, metavar="FILE"),
]
key_options = _with_options("key", KEY_OPTIONS, _archive_key)
"""Adds --key-file; the command gets `key: ArchiveKey | None` (from the file or environment)."""


# ------------------------------------------------------------------------------- the edge
_HINTS = {
    "credentials": " (credentials come from CFYSNAP_ES_USER with CFYSNAP_ES_PASSWORD or "
    "CFYSNAP_ES_PASSWORD_FILE, or CFYSNAP_ES_API_KEY or CFYSNAP_ES_API_KEY_FILE)",
    "certificate": " (give its CA with --ca-cert, or --insecure not to check it)",
}
"""What to do about a refusal of the server (`SearchServerError.hint`), said at the edge."""

def _quiet_workers(debug: bool) -> None:
    """Beam's worker processes (multi-processing) log to the terminal unless told otherwise:
    without --debug they start with `core/worker_site` on their path (see its sitecustomize)."""
    site = str(Path(__file__).resolve().parent / "core" / "worker_site")
    # what an earlier command of this process (or the parent that started it) may have set
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != site]
    if not debug:
        paths.insert(0, site)
    if paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    else:
        os.environ.pop("PYTHONPATH", None)
    if debug:
        os.environ.pop("CFYSNAP_WORKER_LOG_LEVEL", None)
    else:
        os.environ["CFYSNAP_WORKER_LOG_LEVEL"] = "ERROR"


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,  # a handler set before (core/worker_site, an earlier command) must not win
    )
    # Beam and the HTTP stack are chatty at INFO; cfysnap's own lines stay.
    for noisy in ("apache_beam", "root", "elastic_transport", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)
    # A failing DoFn is logged by Beam with its traceback and then re-raised to the job, which
    # `_run` reports as one line: without --debug that traceback is noise on stderr.
    logging.getLogger("apache_beam.runners").setLevel(logging.DEBUG if debug else logging.CRITICAL)
    # Beam's portable runner reports a failed job on the root logger too: `_run` says it once.
    logging.getLogger().setLevel(logging.DEBUG if debug else logging.CRITICAL)
    logging.getLogger("cfysnap").setLevel(logging.DEBUG if debug else logging.INFO)


def _run(fn: Callable[[], T]) -> T:
    """Run a command body; typed errors become one line on stderr and their exit code."""
    from core import cancel
    from core.errors import CfysnapError

    try:
        try:
            return fn()
        except Exception:
            if cancel.requested():  # Ctrl-C, whatever a runner wrapped it in
                raise KeyboardInterrupt from None
            raise
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except CfysnapError as exc:
        if _debug:
            raise
        typer.echo(f"error: {exc}{_HINTS.get(getattr(exc, 'hint', ''), '')}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the edge: never a traceback without --debug
        if _debug:
            raise
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug)", err=True)
        raise typer.Exit(1) from None


def _warn(text: str) -> None:
    typer.echo(f"warning: {text}", err=True)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and debug logs.")] = False,
) -> None:
    global _debug
    _debug = debug
    _configure_logging(debug)
    _quiet_workers(debug)


# ------------------------------------------------------------------------ inspect/validate
@app.command()
@limit_options
def inspect(
    archive: ArchiveArg,
    limits: Any,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Summarise a snapshot archive: version, documents per (index, type), files, agents.

    Example: cfysnap inspect snapshot.zip --json
    """
    from core.progress import Progress
    from pipelines.inspect import inspect_archive

    def body() -> None:
        with Progress("inspect", enabled=not as_json) as progress:
            report = inspect_archive(
                archive, on_line=lambda n: progress.advance(10_000), limits=limits
            )
        typer.echo(json.dumps(report.to_json(), indent=2) if as_json else report.render())

    _run(body)


@app.command()
@limit_options
def validate(archive: ArchiveArg, limits: Any) -> None:
    """Check an archive: readable zip, safe entry names, member sizes and compression ratios (zip
    bombs are refused before anything is inflated), metadata, every es_data line, duplicates,
    manifest checksums. Exit 0 when valid, else one line per problem (member:line: reason), exit 1.

    Example: cfysnap validate snapshot.zip
    """
    from core.progress import Progress
    from core.validate import validate_archive

    def body() -> None:
        with Progress("validate") as progress:
            problems = validate_archive(
                archive, on_line=lambda n: progress.advance(10_000), limits=limits
            )
        for problem in problems:
            typer.echo(str(problem), err=True)
        if problems:
            typer.echo(f"invalid: {archive}: {plural(len(problems), 'problem')}", err=True)
            raise typer.Exit(1)
        typer.echo(f"valid: {archive}")

    _run(body)


# ------------------------------------------------------------------------------------ sample
@sample_app.command("archive")
def sample_archive(
    output: Annotated[Path, typer.Argument(help="Where to write the generated snapshot archive.", metavar="OUTPUT")],
    version: Annotated[VersionChoice, typer.Option("--version", help="Manager version to imitate.")] = V33,
    documents: Annotated[int, typer.Option("--documents", min=30, help="How many documents (exactly).", metavar="N")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same archive).", metavar="N")] = 0,
) -> None:
    """Write a generated snapshot archive of a realistic manager.

    Example: cfysnap sample archive demo-3.2.zip --version 3.2 --documents 10000
    """
    from pipelines.sample.archive import write_sample_archive
    from pipelines.sample.generate import ManagerSpec, snapshot_count, snapshot_type_counts

    def body() -> None:
        spec = ManagerSpec.sized_snapshot(Version(version.value), documents, seed=seed)
        write_sample_archive(spec, output)
        counts = ", ".join(f"{t} {n:,}" for t, n in snapshot_type_counts(spec).items() if n)
        typer.echo(
            f"wrote {output}: a {version.value} manager's snapshot, "
            f"{snapshot_count(spec):,} documents ({counts})"
        )

    _run(body)


@sample_app.command("manager")
@server_options
def sample_manager(
    target: Any,
    fs_root: FsRootOption,
    version: Annotated[VersionChoice, typer.Option("--version", help="Manager version to imitate.")] = V33,
    documents: Annotated[int, typer.Option("--documents", min=30, help="How many documents (exactly).", metavar="N")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.", metavar="N")] = 0,
    keys_dir: Annotated[
        Path | None, typer.Option("--keys-dir", help="Where the Compute nodes' agent keys are written.", metavar="DIR")
    ] = None,
    empty: Annotated[
        bool,
        typer.Option(
            "--empty",
            help="A freshly installed manager instead: its indices, mappings and provider "
            "context only (the target of a restore).",
        ),
    ] = False,
) -> None:
    """Load a generated manager into a search server and a file-server root, in the shape a real
    manager gives its server (on Elasticsearch 1.x: `cloudify_storage` with the manager's own
    settings and mappings, events in `cloudify_events` (3.2) or daily `logstash-*` indices).

    Example: cfysnap sample manager --es http://127.0.0.1:9200 --fs-root /tmp/mgr --version 3.2
    """
    from dataclasses import replace

    from pipelines.sample.generate import ManagerSpec
    from pipelines.sample.load import load_empty_manager, load_manager

    def body() -> None:
        with target.connect() as client:
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
                f"loaded a {version.value} manager: {sum(counts.values()):,} documents into "
                f"{client.url}; files in {fs_root}"
            )

    _run(body)


# --------------------------------------------------------------------------- versions/convert
@app.command()
def versions() -> None:
    """Print the chain of snapshot-format upgrade steps, each with its changelog, and the
    restore defaults every plan ends with.

    Example: cfysnap versions
    """
    from transforms.versions import STEPS, defaults_step, describe

    def body() -> None:
        typer.echo("Known snapshot versions: " + ", ".join(v.value for v in Version))
        final = defaults_step(Version.V3_4)
        typer.echo(describe([*STEPS, *([final] if final else [])]))

    _run(body)


@app.command(cls=BeamCommand, context_settings=BEAM_ARGS)
@limit_options
@key_options
def convert(
    ctx: typer.Context,
    source: ArchiveArg,
    limits: Any,
    key: Any,
    output: Annotated[Path, typer.Argument(help="Where to write the converted archive (.zip).", dir_okay=False, metavar="OUTPUT")],
    to: Annotated[TargetVersion, typer.Option("--to", help="Snapshot version to convert to.")],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the plan and per type how many documents each step changes; write nothing."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    lines_per_shard: LinesPerShardOption = 10_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary (or dry-run report) as JSON.")] = False,
) -> None:
    """Upgrade a snapshot archive to a newer format (3.2 -> 3.3 -> 3.4), archive to archive.

    Validates ARCHIVE first, then applies every version step in one Beam pass: documents get what
    the newer manager's restore adds, 3.2 events move from cloudify_events to logstash-YYYY.MM.DD
    of their own timestamp, duplicates created by that move are dropped (counted), metadata.json
    and agents.json are upgraded, every other member is carried over byte for byte. OUTPUT
    appears only when complete and its counts reconcile. Arguments after `--` go to Beam.

    Example: cfysnap convert snap-3.2.zip snap-3.4.zip --to 3.4 -- --direct_num_workers=2 --direct_running_mode=multi_processing
    """
    from pipelines.convert import ConvertConfig, run

    def body() -> None:
        config = ConvertConfig(
            source=source,
            output=output,
            target=Version(to.value),
            dry_run=dry_run,
            force=force,
            lines_per_shard=lines_per_shard,
            progress=not as_json,
            limits=limits,
            key=key,
        )
        result = run(config, ctx.args)
        typer.echo(json.dumps(result.to_json(), indent=2) if as_json else result.render())

    _run(body)


# ------------------------------------------------------------------------------------ create
@app.command(cls=BeamCommand, context_settings=BEAM_ARGS)
@server_options
@key_options
def create(
    ctx: typer.Context,
    target: Any,
    key: Any,
    fs_root: Annotated[
        Path,
        typer.Option(
            "--fs-root",
            help="The manager's file-server root (e.g. /opt/manager/resources).",
            exists=True,
            file_okay=False,
            metavar="DIR",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the archive here (give this or --snapshot-id).", dir_okay=False, metavar="PATH"),
    ] = None,
    snapshot_id: Annotated[
        str | None,
        typer.Option(
            "--snapshot-id",
            "-s",
            help="Store the archive in the manager as <fs-root>/snapshots/<id>/<id>.zip and record "
            "its snapshot document and create_snapshot execution, as the manager does.",
            metavar="ID",
        ),
    ] = None,
    exclude_credentials: Annotated[
        bool, typer.Option("--exclude-credentials", help="Leave the Compute nodes' agent keys out.")
    ] = False,
    encrypt_credentials: Annotated[
        bool,
        typer.Option(
            "--encrypt-credentials",
            help="Encrypt the agent keys and agents.json's broker passwords and SSL keys "
            "(AES-256-GCM) with the key of --key-file or the environment; convert, restore and "
            "verify then need the same key.",
        ),
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
    ] = AUTO,
    slices: Annotated[
        int | None,
        typer.Option("--slices", min=1, help="Parallel reads per index on servers with sliced scroll (default: max(2, Beam workers)); 1.x/2.x are read one part per shard.", metavar="N"),
    ] = None,
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
    if encrypt_credentials and key is None:
        raise typer.BadParameter(
            "--encrypt-credentials needs a key: --key-file, CFYSNAP_ARCHIVE_KEY_FILE or "
            "CFYSNAP_ARCHIVE_KEY"
        )

    def body() -> None:
        config = CreateConfig(
            target=target,
            fs_root=fs_root.resolve(),
            output=output,
            snapshot_id=snapshot_id,
            include_credentials=not exclude_credentials,
            encrypt_with=key if encrypt_credentials else None,
            exclude_events=exclude_events,
            exclude_logs=exclude_logs,
            source_version=None if source_version.value == "auto" else source_version.value,
            slices=slices,
            force=force,
        )
        typer.echo(run(config, ctx.args).render())

    _run(body)


# ----------------------------------------------------------------------------- restore/verify
def _restore_job(
    ctx: typer.Context,
    archive: Path,
    target: Any,
    options: RestoreOptions,
    limits: Any,
    key: Any,
) -> None:
    """Build the RestoreConfig both restore commands share, run it, print its summary."""
    from pipelines.restore import RestoreConfig, run
    from transforms.restore_plan import Batching

    config = RestoreConfig(
        archive=archive,
        target=target,
        fs_root=options.fs_root,
        credentials_dir=options.credentials_dir,
        target_version=options.target_version,
        force=options.force,
        resume=options.resume,
        journal=options.journal,
        staging=options.staging,
        dry_run=options.dry_run,
        batching=Batching(options.lines_per_shard, options.batch_docs, options.batch_bytes),
        limits=limits,
        key=key,
    )
    typer.echo(run(config, tuple(ctx.args)).render())


@app.command(cls=BeamCommand, context_settings=BEAM_ARGS)
@server_options
@restore_options
@limit_options
@key_options
def restore(
    ctx: typer.Context, archive: ArchiveArg, target: Any, options: Any, limits: Any, key: Any
) -> None:
    """Restore a snapshot into a target manager: check first (archive valid, not newer than the
    target, target clean unless --force, no clashing blueprint/deployment ids), then copy files,
    write agent keys, and bulk-load every document with its own id (events into the daily index of
    their own timestamp, so a second restore never duplicates them), merging agents.json into node
    instances. Every step is journaled; --resume finishes an interrupted restore. Beam options
    go after `--`.

    Example: cfysnap restore snap.zip --es http://127.0.0.1:9200 --fs-root /opt/manager/resources --credentials-dir /opt/manager/snapshot-credentials -- --direct_num_workers=2 --direct_running_mode=multi_processing
    """
    _run(lambda: _restore_job(ctx, archive, target, options, limits, key))


@app.command()
@server_options
@limit_options
@key_options
def verify(
    archive: ArchiveArg,
    limits: Any,
    key: Any,
    target: Any,
    fs_root: FsRootOption,
    credentials_dir: Annotated[
        Path | None,
        typer.Option("--credentials-dir", help="Where the restore wrote agent keys (checked when given).", metavar="DIR"),
    ] = None,
    target_version: Annotated[
        TargetVersion,
        typer.Option("--target-version", help="Version of the target manager; older archives are upgraded."),
    ] = V34,
    max_differences: Annotated[
        int, typer.Option("--max-differences", min=1, help="How many differences to list.")
    ] = 20,
) -> None:
    """Compare a target manager with an archive: documents per (index, type) by count and by
    digest of each document as the restore writes it, files by sha256, agent keys and their mode.
    Exit 0 when everything matches, else list the differences (first N, with counts) and exit 1.

    Example: cfysnap verify snap.zip --es http://127.0.0.1:9200 --fs-root /opt/manager/resources --credentials-dir /opt/manager/snapshot-credentials
    """
    from pipelines.verify import VerifyConfig, run

    def body() -> None:
        config = VerifyConfig(
            archive=archive,
            target=target,
            fs_root=fs_root,
            credentials_dir=credentials_dir,
            target_version=Version(target_version.value),
            max_differences=max_differences,
            limits=limits,
            key=key,
        )
        report = run(config)
        typer.echo(report.render())
        if not report.ok:
            raise typer.Exit(1)

    _run(body)


# --------------------------------------------------------------------------------- snapshots
@snapshots_app.command("list")
@server_options
def snapshots_list(
    target: Any,
    fs_root: FsRootOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print the snapshots as a JSON list.")] = False,
) -> None:
    """List the stored snapshots (oldest first): id, created_at, status, error.

    Example: cfysnap snapshots list --es http://127.0.0.1:9200 --fs-root /opt/manager/resources --json
    """
    from pipelines.snapshots import list_snapshots

    def body() -> None:
        records = list_snapshots(target, fs_root, _warn)
        if as_json:
            typer.echo(json.dumps([r.to_doc() for r in records], indent=2))
            return
        header = ("id", "created_at", "status", "error")
        rows = [header] + [(r.id, r.created_at, r.status, r.error) for r in records]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        typer.echo(f"{len(records)} snapshot{'' if len(records) == 1 else 's'}")

    _run(body)


@snapshots_app.command("upload")
@server_options
def snapshots_upload(
    path: Annotated[
        str,
        typer.Argument(help="Archive to store: a local path or any Beam filesystem URL (gs://, s3://, ...).", metavar="ARCHIVE"),
    ],
    snapshot_id: Annotated[str, typer.Option("--snapshot-id", "-s", help="Id to store it under (must be new).", metavar="ID")],
    target: Any,
    fs_root: FsRootOption,
) -> None:
    """Validate an archive and store it as a new snapshot with status `uploaded`. An invalid
    archive, an existing id or a 3.2 manager (no snapshot store) is refused and nothing is stored.

    Example: cfysnap snapshots upload snap.zip --snapshot-id before-upgrade --es http://127.0.0.1:9200 --fs-root /opt/manager/resources
    """
    from pipelines.snapshots import upload

    def body() -> None:
        transfer = upload(target, fs_root, snapshot_id, path, _warn)
        typer.echo(
            f"uploaded {snapshot_id}: {transfer.path} ({transfer.size:,} bytes, sha256 {transfer.sha256})"
        )

    _run(body)


@snapshots_app.command("download")
@server_options
def snapshots_download(
    snapshot_id: SnapshotIdArg,
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o",
            help="Where to write it: a file, an existing folder (gets <id>.zip), or a Beam filesystem URL.",
            metavar="PATH",
        ),
    ],
    target: Any,
    fs_root: FsRootOption,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Copy a stored `created` or `uploaded` snapshot's archive out of the manager (streamed,
    atomic). Failed and still-creating snapshots are refused.

    Example: cfysnap snapshots download before-upgrade -o backup.zip --es http://127.0.0.1:9200 --fs-root /opt/manager/resources
    """
    from pipelines.snapshots import download

    def body() -> None:
        transfer = download(target, fs_root, snapshot_id, output, force, _warn)
        typer.echo(
            f"downloaded {snapshot_id} to {transfer.path} ({transfer.size:,} bytes, sha256 {transfer.sha256})"
        )

    _run(body)


@snapshots_app.command("delete")
@server_options
def snapshots_delete(snapshot_id: SnapshotIdArg, target: Any, fs_root: FsRootOption) -> None:
    """Delete a stored snapshot: its folder <fs-root>/snapshots/<id>/ and its document (any
    status but a `creating` one whose creator is still running).

    Example: cfysnap snapshots delete before-upgrade --es http://127.0.0.1:9200 --fs-root /opt/manager/resources
    """
    from pipelines.snapshots import delete

    def body() -> None:
        record = delete(target, fs_root, snapshot_id, _warn)
        status = f" (status {record.status})" if record else " (folder only: it had no document)"
        typer.echo(f"deleted snapshot {snapshot_id}{status}")

    _run(body)


@snapshots_app.command("restore", cls=BeamCommand, context_settings=BEAM_ARGS)
@server_options
@restore_options
@limit_options
@key_options
def snapshots_restore(
    ctx: typer.Context,
    snapshot_id: SnapshotIdArg,
    target: Any,
    options: Any,
    limits: Any,
    key: Any,
) -> None:
    """Restore a stored snapshot (status created or uploaded) into the manager, exactly as
    `cfysnap restore` does with <fs-root>/snapshots/<id>/<id>.zip. Failed and still-creating
    snapshots are refused. Beam options go after `--`.

    Example: cfysnap snapshots restore before-upgrade --es http://127.0.0.1:9200 --fs-root /opt/manager/resources --credentials-dir /opt/manager/snapshot-credentials
    """
    from pipelines.snapshots import archive_for_restore

    def body() -> None:
        archive = archive_for_restore(target, options.fs_root, snapshot_id, _warn)
        _restore_job(ctx, archive, target, options, limits, key)

    _run(body)


# ------------------------------------------------------------------------------------- clear
@app.command()
@server_options
def clear(
    target: Any,
    fs_root: FsRootOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Clear a manager before a restore (the documented manual procedure): delete every document
    except the provider_context and snapshot documents (cloudify_storage and every event index),
    and empty blueprints/, uploaded-blueprints/, plugins/ and deployments/ (the folders stay).
    Shows what it will delete and asks first unless --yes; prints what it deleted, per type.
    Answering no cancels (exit 0, nothing deleted); with no terminal to ask, --yes is needed.

    Example: cfysnap clear --es http://127.0.0.1:9200 --fs-root /opt/manager/resources --yes
    """
    from pipelines.clear import ClearConfig, plan, run

    def body() -> None:
        config = ClearConfig(target=target, fs_root=fs_root)
        if not yes:
            typer.echo(plan(config).render("will delete"))
            try:
                confirmed = typer.confirm(f"Clear the manager at {target} and {fs_root}?")
            except typer.Abort:
                typer.echo("error: clear refused: no answer to the question (pass --yes); nothing was deleted", err=True)
                raise typer.Exit(1) from None
            if not confirmed:
                typer.echo("clear cancelled; nothing was deleted")
                return
        typer.echo(run(config).render())

    _run(body)


# ------------------------------------------------------------------------------------ export
@app.command(cls=BeamCommand, context_settings=BEAM_ARGS)
@optional_server_options
def export(
    ctx: typer.Context,
    out_dir: Annotated[
        Path,
        typer.Argument(help="The dataset folder to write (must not exist, or be empty).", metavar="OUT_DIR"),
    ],
    target: Any,
    archive: Annotated[
        Path | None,
        typer.Option("--archive", help="Read this snapshot archive (give this or --es).", exists=True, dir_okay=False, metavar="ARCHIVE"),
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
            metavar="TYPES",
        ),
    ] = "events,logs",
    rows_per_group: Annotated[
        int, typer.Option("--rows-per-group", min=1, help="Rows per Parquet row group (memory bound).", metavar="N")
    ] = 50_000,
) -> None:
    """Export events and logs (or every document type) of an archive (--archive) or a live
    manager (--es) as a Parquet dataset for analytics, partitioned hive-style by type and day
    (type=cloudify_event/day=2016-03-14/part-*.parquet). Columns: timestamp (UTC, ms), event_type,
    level, deployment_id, execution_id, workflow_id, node_id, message, _index, _id, and doc (the
    whole _source as JSON). Day is the document's UTC date (@timestamp/timestamp for events and
    logs, created_at for other types), else none. Read it with pyarrow.dataset or DuckDB. Written
    atomically; counts are reconciled. Beam runner flags go after `--`.

    Example: cfysnap export events-parquet --archive snapshot.zip --types events,logs -- --direct_num_workers=2 --direct_running_mode=multi_processing
    """
    from pipelines.export import ExportConfig, parse_types, run

    if (archive is None) == (target is None):
        raise typer.BadParameter("give exactly one of --archive and --es")
    try:
        selected = parse_types(types)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    def body() -> None:
        config = ExportConfig(
            output=out_dir,
            archive=archive,
            target=target,
            types=selected,
            format=format_.value,
            rows_per_group=rows_per_group,
        )
        typer.echo(run(config, ctx.args).render())

    _run(body)


def main(args: list[str] | None = None) -> int:
    """Console-script entry point (`cfysnap`): runs the app, and prints a usage error in the
    one-line form of every other error (`error: …`), exit code 2, as Click's code for it."""
    from typer._click import exceptions as click  # Typer vendors its Click

    from core import cancel

    cancel.install()  # Ctrl-C is remembered: jobs check it before publishing anything
    command = typer.main.get_command(app)
    try:
        return int(command.main(args=args, prog_name="cfysnap", standalone_mode=False) or 0)
    except click.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.UsageError as exc:
        where = f"cfysnap {exc.ctx.command_path.partition(' ')[2]}".strip() if exc.ctx else "cfysnap"
        message = exc.format_message().replace("Value error, ", "")
        typer.echo(f"error: {message} (see `{where} --help`)", err=True)
        return 2
    except click.ClickException as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("error: interrupted", err=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
