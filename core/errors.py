"""Typed, picklable errors that carry data.

Pipelines and transforms raise these; only `cli.py` turns them into one-line messages and exit
codes. Each error keeps its fields as attributes *and* passes them to `Exception.__init__`, so it
survives pickling across Beam workers (the pattern of elasticsearch-py's `helpers/errors.py`).
Messages never contain secrets: they name members, lines, document ids and reasons only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from core.text import plural

__all__ = [
    "CfysnapError",
    "CorruptArchive",
    "DamagedMember",
    "UnsupportedVersion",
    "UnsafePath",
    "SearchServerError",
    "BulkLoadError",
    "RestoreRefused",
    "StoreError",
    "ManagerVersionUnknown",
    "JobFailed",
    "job_error",
]


class CfysnapError(Exception):
    """Base of every error cfysnap reports to a user. `exit_code` is what the CLI exits with."""

    exit_code = 1

    def __str__(self) -> str:  # pragma: no cover - subclasses override
        return super().__str__()


class CorruptArchive(CfysnapError):
    """A snapshot archive (or one of its members) that cannot be read as the format says."""

    def __init__(self, member: str, line: int | None, reason: str, archive: str = "") -> None:
        super().__init__(member, line, reason, archive)
        self.member, self.line, self.reason, self.archive = member, line, reason, archive

    def __str__(self) -> str:
        where = self.member + (f":{self.line}" if self.line else "")
        prefix = f"{self.archive}: " if self.archive else ""
        return f"{prefix}{where}: {self.reason}"


class DamagedMember(CorruptArchive):
    """A member whose bytes cannot be read: a bad header, CRC or deflate stream, truncated.
    `cause` is what zipfile or zlib said."""

    def __init__(self, member: str, cause: str, archive: str = "") -> None:
        CfysnapError.__init__(self, member, cause, archive)
        self.member, self.line, self.archive, self.cause = member, None, archive, cause
        self.reason = f"cannot be read ({cause})"


class UnsupportedVersion(CfysnapError):
    def __init__(self, version: str, where: str = "metadata.json") -> None:
        super().__init__(version, where)
        self.version, self.where = version, where

    def __str__(self) -> str:
        return f"{self.where}: unsupported snapshot_version {self.version!s} (known: 3.2, 3.3, 3.4.x)"


class UnsafePath(CfysnapError):
    """An archive entry or file path that would land outside its target folder."""

    def __init__(self, member: str, reason: str = "escapes the target folder") -> None:
        super().__init__(member, reason)
        self.member, self.reason = member, reason

    def __str__(self) -> str:
        return f"{self.member}: {self.reason}"


class SearchServerError(CfysnapError):
    """The search server is unreachable or answered with an error. `hint` says what kind of
    refusal it was, for the edge to say what to do: "credentials" (401/403), "certificate"
    (the server's certificate failed the check), or "" ."""

    def __init__(self, url: str, reason: str, hint: str = "") -> None:
        super().__init__(url, reason, hint)
        self.url, self.reason, self.hint = url, reason, hint

    def __str__(self) -> str:
        return f"search server {self.url}: {self.reason}"


class BulkLoadError(CfysnapError):
    """Some items of a bulk request failed for good. `items` are `(index, type, id, status, reason)`."""

    def __init__(self, items: list[tuple[str, str, str, int, str]]) -> None:
        super().__init__(items)
        self.items = items

    def __str__(self) -> str:
        shown = "; ".join(f"{i}/{t}/{d}: {s} {r}" for i, t, d, s, r in self.items[:5])
        more = f" (+{len(self.items) - 5} more)" if len(self.items) > 5 else ""
        return f"bulk load failed for {plural(len(self.items), 'document')}: {shown}{more}"


class RestoreRefused(CfysnapError):
    """The target is not fit for this restore (dirty, clashing ids, newer archive)."""

    def __init__(self, reason: str, ids: list[str] | None = None) -> None:
        super().__init__(reason, ids or [])
        self.reason, self.ids = reason, ids or []

    def __str__(self) -> str:
        if not self.ids:
            return f"restore refused: {self.reason}"
        return f"restore refused: {self.reason}: {', '.join(self.ids)}"


class StoreError(CfysnapError):
    """A snapshot-store operation that the snapshot's status or presence forbids."""

    def __init__(self, snapshot_id: str, reason: str) -> None:
        super().__init__(snapshot_id, reason)
        self.snapshot_id, self.reason = snapshot_id, reason

    def __str__(self) -> str:
        return f"snapshot {self.snapshot_id}: {self.reason}"


class ManagerVersionUnknown(CfysnapError):
    """A live manager's version cannot be read from its data without guessing."""

    def __init__(self, reason: str, facts: list[str]) -> None:
        super().__init__(reason, facts)
        self.reason, self.facts = reason, facts

    def __str__(self) -> str:
        facts = f": {'; '.join(self.facts)}" if self.facts else ""
        return (
            f"cannot tell the manager's version: {self.reason}{facts}; "
            "pass --source-version 3.2, 3.2.1, 3.3 or 3.4"
        )


class JobFailed(CfysnapError):
    """A pipeline failed; `done` says what it completed before failing."""

    def __init__(self, job: str, reason: str, done: dict[str, Any] | None = None) -> None:
        super().__init__(job, reason, done or {})
        self.job, self.reason, self.done = job, reason, done or {}

    def __str__(self) -> str:
        done = ", ".join(f"{k}={v}" for k, v in self.done.items())
        return f"{self.job} failed: {self.reason}" + (f" (done before failing: {done})" if done else "")


# --------------------------------------------------------------------------- errors out of Beam
_BEAM_CONTEXT = re.compile(r" \[while running '[^']*'\]")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _strip_beam_context(error: CfysnapError) -> CfysnapError:
    args = [_BEAM_CONTEXT.sub("", a) if isinstance(a, str) else a for a in error.args]
    try:
        return type(error)(*args)
    except TypeError:
        return error


def job_error(job: str, exc: BaseException, done: dict[str, Any] | None = None) -> CfysnapError:
    """The typed error behind a failed pipeline, for one line at the CLI.

    In-process runners re-raise the DoFn's own error with Beam's step name inserted into its
    first argument (removed here). Multi-process and portable runners raise a RuntimeError that
    holds the worker's traceback as text: the last line naming one of cfysnap's errors is kept
    (else the last line). Anything else becomes `JobFailed(job, …, done)`.
    """
    for cause in _causes(exc):
        if isinstance(cause, CfysnapError):
            return _strip_beam_context(cause)
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    names = "|".join(sorted(_error_names()))
    typed = [m for line in lines if (m := re.search(rf"\b({names}): (.+)$", line))]
    if typed:
        reason = _BEAM_CONTEXT.sub("", typed[-1].group(2))
    elif lines:
        last = _BEAM_CONTEXT.sub("", lines[-1])
        match = re.match(r"^(?:\w+\.)*(\w+): (.*)$", last)
        reason = f"{match.group(2)} ({match.group(1)})" if match else last
    else:
        reason = type(exc).__name__
    return JobFailed(job, reason, done)


def _error_names() -> set[str]:
    found, todo = set(), [CfysnapError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return found
