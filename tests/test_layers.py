"""The architecture, read off the code: imports point down only, jobs never import jobs, and
every PTransform and DoFn lives in `transforms/`.

    cli.py  →  pipelines/ (the jobs)  →  transforms/ (PTransforms, DoFns, version steps)  →  core/

`bench/` and `tests/` stand beside the stack and may import any floor.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {"cli": 3, "pipelines": 2, "transforms": 1, "core": 0}


def modules() -> dict[str, Path]:
    found = {"cli": ROOT / "cli.py"}
    for package in ("pipelines", "transforms", "core"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> set[str]:
    """Every project module `name` imports (at any depth of the file, lazy imports too)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t.split(".")[0] in FLOORS}


def floor(module: str) -> int:
    return FLOORS[module.split(".")[0]]


def job(module: str) -> str | None:
    """The job a `pipelines.*` module belongs to (`pipelines.sample.load` → `sample`)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "pipelines" and len(parts) > 1 else None


def test_the_floors_are_there() -> None:
    assert {"cli", "pipelines.create", "transforms.search_io", "core.model"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_and_no_job_imports_another(name: str) -> None:
    for target in imports(name, MODULES[name]):
        assert floor(target) <= floor(name), f"{name} imports {target}, a floor above it"
        if job(name) and job(target):
            assert job(target) == job(name), f"job {name} imports another job's {target}"


def _bases(node: ast.ClassDef) -> set[str]:
    return {ast.unparse(b).rpartition(".")[2] for b in node.bases}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith(("pipelines", "core"))))
def test_no_ptransform_or_dofn_outside_transforms(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    defined = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and _bases(node) & {"PTransform", "DoFn"}
    ]
    assert defined == [], f"{name} defines {defined}: PTransforms and DoFns belong in transforms/"


def test_the_checks_can_fail() -> None:
    """The checker sees an upward import and a job importing a job in synthetic code."""
    fake = ROOT / "core" / "model.py"
    assert "core.model" in imports("core.search", ROOT / "core" / "search.py")
    assert floor("pipelines.create") > floor("core.model")
    assert job("pipelines.restore") != job("pipelines.verify")
    assert imports("core.model", fake) <= {t for t in imports("core.model", fake) if floor(t) == 0}
