"""The chain of snapshot-format upgrade steps, one module per step (alembic style).

Each module `vX_Y_to_vA_B.py` in this package declares `SOURCE` and `TARGET` (a `Version`), has
the step's changelog as its docstring, and defines three pure functions:

- `upgrade_hit(hit) -> hit`: one es_data line in, one out (events may change `_index`);
- `upgrade_metadata(meta) -> meta`: the metadata.json object;
- `upgrade_agents(agents) -> agents`: the whole agents.json object.

and may define `touches(index, doc_type) -> bool`: whether `upgrade_hit` can change a hit of that
index and type at all. A job passes the hits no step touches through without decoding their
`_source` (`touched`); a module without it touches everything (the safe reading).

A module may also declare that it only moves some hits to another index, read from a few
`_source` fields: `moves_index(index, doc_type) -> bool` (for those hits `upgrade_hit` changes
`_index` alone), `MOVE_FIELDS` (the top-level `_source` fields it reads) and
`moved_index(*values) -> str | None` (the new index from their values, missing ones as None;
None where `upgrade_hit` refuses the hit), which its `upgrade_hit` itself uses. A job may then
decode only those fields of such a hit (`IndexMove`, `Step.move`); all three or none.

They never mutate their input, return the very same object when nothing changes, and only add
what is missing (so each step is idempotent and unknown types/fields pass through).

At import the package discovers the modules, builds `STEPS` and validates it (`build_chain`):
one step per source version, no cycle, no gap, oldest known version to newest. A broken chain
fails the import with `BrokenChain`.

A plan into `target` is the chain's steps from the source, then `target`'s restore defaults
(`defaults.py`: the §6.2 table a `target` manager's restore applies to every document of every
snapshot, whatever its version), so that converting or restoring gives what that manager's own
restore makes of the same input, also when the source already is at `target`. `plan(source,
target)` only reads the chain; `describe` prints a plan.

    >>> [s.name for s in plan(Version.V3_2, Version.V3_4)]
    ['3.2 -> 3.3', '3.3 -> 3.4', '3.4 restore defaults']
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import CfysnapError
from core.model import Hit, Version, parse_version
from transforms.versions.defaults import COLUMNS, columns_for, update_hit

__all__ = [
    "Step",
    "STEPS",
    "BrokenChain",
    "DowngradeRefused",
    "build_chain",
    "step_from_module",
    "defaults_step",
    "plan",
    "upgrade_hit",
    "touched",
    "IndexMove",
    "upgrade_metadata",
    "upgrade_agents",
    "step_changes",
    "path",
    "describe",
]


class BrokenChain(ValueError):
    """The step modules do not form one valid chain. A programming error, raised at import.

    `kind` is one of "invalid" (a module lacks what a step needs), "duplicate" (two steps from
    the same source), "cycle", "backward" (a step that does not go to a newer version) and "gap"
    (a known version the chain does not connect to the next one).
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind, self.detail = kind, detail

    def __str__(self) -> str:
        return f"broken version chain ({self.kind}): {self.detail}"


class DowngradeRefused(CfysnapError, ValueError):
    """A conversion was asked from a newer snapshot format to an older one."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__(source, target)
        self.source, self.target = source, target

    def __str__(self) -> str:
        return (
            f"cannot convert a {self.source} snapshot to {self.target}: "
            "only upgrades (older to newer) are supported"
        )


def _touches_everything(index: str, doc_type: str) -> bool:
    """A step module without `touches`: it may change any hit."""
    return True


@dataclass(frozen=True)
class IndexMove:
    """A step's promise about the hits of the (index, type)s `applies` to: `upgrade_hit(hit)` is
    `{**hit, "_index": index(*values)}`, where `values` are the hit's `_source` fields named in
    `fields` (None when missing), and raises CorruptArchive where `index` gives None. Nothing
    else of such a hit changes, so a job may decode just those fields to know its new line."""

    applies: Callable[[str, str], bool]
    fields: tuple[str, ...]
    index: Callable[..., str | None]


@dataclass(frozen=True)
class Step:
    """One version step, built from its module."""

    source: Version
    target: Version
    summary: str
    """First line of the module docstring."""
    changelog: str = field(repr=False)
    """The module docstring."""
    upgrade_hit: Callable[[Hit], Hit] = field(repr=False)
    upgrade_metadata: Callable[[dict[str, Any]], dict[str, Any]] = field(repr=False)
    upgrade_agents: Callable[[dict[str, Any]], dict[str, Any]] = field(repr=False)
    defaults: bool = False
    """A version's restore defaults (`defaults_step`), not a step of the chain."""
    touches: Callable[[str, str], bool] = field(default=_touches_everything, repr=False)
    """Whether `upgrade_hit` can change a hit of this (index, type): False is a promise that
    it returns every such hit as the very same object."""
    move: IndexMove | None = field(default=None, repr=False)
    """The hits this step only moves to another index, if it declares any (`IndexMove`)."""

    @property
    def name(self) -> str:
        if self.defaults:
            return f"{self.target.value} restore defaults"
        return f"{self.source.value} -> {self.target.value}"


_STEP_MODULE_RE = re.compile(r"^v\d+_\d+_to_v\d+_\d+$")
_STEP_FUNCTIONS = ("upgrade_hit", "upgrade_metadata", "upgrade_agents")


def step_from_module(module: Any) -> Step:
    """A Step from a module (or any object) declaring SOURCE, TARGET, a docstring and the three
    upgrade functions. Raises BrokenChain("invalid", …) when something is missing."""
    name = getattr(module, "__name__", repr(module))
    missing = [a for a in ("SOURCE", "TARGET", *_STEP_FUNCTIONS) if not hasattr(module, a)]
    if missing:
        raise BrokenChain("invalid", f"{name} lacks {', '.join(missing)}")
    source, target = module.SOURCE, module.TARGET
    if not isinstance(source, Version) or not isinstance(target, Version):
        raise BrokenChain("invalid", f"{name}: SOURCE and TARGET must be Version members")
    changelog = (getattr(module, "__doc__", None) or "").strip()
    if not changelog:
        raise BrokenChain("invalid", f"{name} has no docstring (its changelog)")
    functions = [getattr(module, f) for f in _STEP_FUNCTIONS]
    if not all(callable(f) for f in functions):
        raise BrokenChain("invalid", f"{name}: {', '.join(_STEP_FUNCTIONS)} must be callable")
    touches = getattr(module, "touches", _touches_everything)
    if not callable(touches):
        raise BrokenChain("invalid", f"{name}: touches must be callable")
    summary = changelog.splitlines()[0].strip()
    hit, metadata, agents = functions
    return Step(source, target, summary, changelog, hit, metadata, agents, touches=touches,
                move=_move_of(module, name))


_MOVE_PARTS = ("moves_index", "MOVE_FIELDS", "moved_index")


def _move_of(module: Any, name: str) -> IndexMove | None:
    """The module's `IndexMove` (all of `_MOVE_PARTS`), None when it declares none of them."""
    present = [part for part in _MOVE_PARTS if hasattr(module, part)]
    if not present:
        return None
    if len(present) < len(_MOVE_PARTS):
        missing = ", ".join(part for part in _MOVE_PARTS if part not in present)
        raise BrokenChain("invalid", f"{name} declares {', '.join(present)} without {missing}")
    applies, fields, index = (getattr(module, part) for part in _MOVE_PARTS)
    names_ok = (
        isinstance(fields, tuple)
        and fields
        and all(isinstance(f, str) and f for f in fields)
        and len(set(fields)) == len(fields)
    )
    if not (callable(applies) and callable(index)) or not names_ok:
        raise BrokenChain(
            "invalid",
            f"{name}: moves_index and moved_index must be callable, MOVE_FIELDS a tuple of "
            "distinct non-empty names",
        )
    try:
        inspect.signature(index).bind(*fields)
    except TypeError:
        raise BrokenChain(
            "invalid", f"{name}: moved_index does not take one argument per MOVE_FIELDS name"
        ) from None
    except ValueError:  # a builtin without a signature: taken on trust
        pass
    return IndexMove(applies, fields, index)


def build_chain(modules: Iterable[Any]) -> tuple[Step, ...]:
    """Validate step modules (or Steps) as one chain and return it oldest first.

    Rejected, each with its own BrokenChain kind: a module that is not a step ("invalid"), two
    steps from the same source ("duplicate"), steps that lead back to where they started
    ("cycle"), a step that does not go to a newer version ("backward"), and any known version
    that is not connected to the next one, including a step that skips one ("gap").
    """
    steps = [m if isinstance(m, Step) else step_from_module(m) for m in modules]

    by_source: dict[Version, Step] = {}
    for step in steps:
        if step.source in by_source:
            raise BrokenChain(
                "duplicate",
                f"two steps from {step.source.value}: {by_source[step.source].name} "
                f"and {step.name}",
            )
        by_source[step.source] = step

    for start in by_source:
        seen = [start]
        version = by_source[start].target
        while version in by_source:
            if version in seen:
                loop = " -> ".join(v.value for v in [*seen[seen.index(version) :], version])
                raise BrokenChain("cycle", loop)
            seen.append(version)
            version = by_source[version].target

    for step in steps:
        if not step.source < step.target:
            raise BrokenChain("backward", f"{step.name} does not go to a newer version")

    known = list(Version)
    for older, newer in zip(known, known[1:], strict=False):
        if older not in by_source:
            raise BrokenChain("gap", f"no step from {older.value} (to {newer.value})")
        if by_source[older].target is not newer:
            raise BrokenChain("gap", f"{by_source[older].name} skips {newer.value}")

    return tuple(by_source[v] for v in known[:-1])


def _discover() -> list[Any]:
    names = sorted(
        info.name for info in pkgutil.iter_modules(__path__) if _STEP_MODULE_RE.match(info.name)
    )
    return [importlib.import_module(f"{__name__}.{name}") for name in names]


STEPS: tuple[Step, ...] = build_chain(_discover())
"""The validated chain, oldest first."""


def _identity(value: Any) -> Any:
    return value


def _type_in(types: frozenset[str], index: str, doc_type: str) -> bool:
    return doc_type in types


def _defaults_hit(hit: Hit, version: Version) -> Hit:
    return update_hit(hit, _columns(version))


@functools.cache
def _columns(version: Version) -> dict[str, tuple[Any, ...]]:
    return columns_for(version)


@functools.cache
def defaults_step(version: Version) -> Step | None:
    """The restore defaults of `version` as a plan's last step (None for 3.2: no restore)."""
    releases = [release for release, belongs_to, _ in COLUMNS if belongs_to <= version]
    if not releases:
        return None
    summary = (
        f"{version.value} restore defaults: the §6.2 table (columns {', '.join(releases)}) that a "
        f"{version.value} manager's restore applies to every snapshot, whatever its version"
    )
    from transforms.versions import defaults

    paragraphs = (defaults.__doc__ or "").strip().split("\n\n")
    table = next(p for p in paragraphs if p.startswith("|"))
    types = frozenset(_columns(version))  # `update_hit` looks only at the hit's `_type`
    return Step(
        version,
        version,
        summary,
        f"{summary}.\nOnly what is missing is added.\n\n{table}",
        functools.partial(_defaults_hit, version=version),
        _identity,
        _identity,
        defaults=True,
        touches=functools.partial(_type_in, types),
    )


def plan(source: Version | str, target: Version | str, chain: Sequence[Step] = STEPS) -> list[Step]:
    """The steps that take a `source` archive to `target`, in order, then `target`'s restore
    defaults (`defaults_step`): never empty for a 3.3 or 3.4 target, even from itself.

    Read-only. Strings are parsed like metadata.json's `snapshot_version` ("3.4.2" is 3.4).
    Raises DowngradeRefused when `target` is older than `source`, UnsupportedVersion for an
    unknown version string.
    """
    src, dst = parse_version(source, "source version"), parse_version(target, "target version")
    if dst < src:
        raise DowngradeRefused(src.value, dst.value)
    steps = [s for s in chain if src <= s.source and s.target <= dst]
    final = defaults_step(dst)
    return [*steps, final] if final is not None else steps


def upgrade_hit(hit: Hit, steps: Sequence[Step]) -> Hit:
    """Apply `steps` in order to one es_data line (the same object back if none changed it)."""
    for step in steps:
        hit = step.upgrade_hit(hit)
    return hit


def touched(steps: Sequence[Step], index: str, doc_type: str) -> bool:
    """Whether any of `steps` can change a hit of (`index`, `doc_type`); when not,
    `upgrade_hit(hit, steps) is hit` for every such hit, and its `_source` need not be decoded."""
    return any(step.touches(index, doc_type) for step in steps)


def upgrade_metadata(meta: dict[str, Any], steps: Sequence[Step]) -> dict[str, Any]:
    for step in steps:
        meta = step.upgrade_metadata(meta)
    return meta


def upgrade_agents(agents: dict[str, Any], steps: Sequence[Step]) -> dict[str, Any]:
    for step in steps:
        agents = step.upgrade_agents(agents)
    return agents


def step_changes(hit: Hit, steps: Sequence[Step]) -> list[bool]:
    """For a dry run: per step, whether it changed this document (steps applied in order)."""
    changed = []
    for step in steps:
        after = step.upgrade_hit(hit)
        changed.append(after is not hit and after != hit)
        hit = after
    return changed


def path(steps: Sequence[Step]) -> str:
    """"3.2 -> 3.3 -> 3.4 (+ 3.4 restore defaults)"."""
    chain = [s for s in steps if not s.defaults]
    versions = [chain[0].source.value, *(s.target.value for s in chain)] if chain else []
    text = " -> ".join(versions)
    final = [s.name for s in steps if s.defaults]
    if final:
        text = f"{text} (+ {final[0]})" if text else final[0]
    return text


def describe(steps: Sequence[Step], *, changelogs: bool = True) -> str:
    """A printable plan: the path, then each step's summary line and (`changelogs`) the rest of
    its changelog, indented."""
    if not steps:
        return "No version steps: the archive is already at the target version."
    lines = [f"{len(steps)} step{'s' if len(steps) > 1 else ''}: {path(steps)}"]
    for number, step in enumerate(steps, 1):
        if changelogs:
            lines.append("")
        lines.append(f"{number}. {step.changelog.splitlines()[0].strip()}")
        if changelogs:
            lines.extend(f"   {line}".rstrip() for line in step.changelog.splitlines()[1:])
    return "\n".join(lines)
