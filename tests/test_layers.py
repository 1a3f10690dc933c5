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


def _bases(node: ast.ClassDef) -> set[str]:
    return {ast.unparse(b).rpartition(".")[2] for b in node.bases}


def violations(name: str, path: Path) -> list[str]:
    """Imports of module `name` (at `path`) a floor above it or into another job, and the
    PTransforms and DoFns it defines outside transforms/."""
    found = []
    for target in sorted(imports(name, path)):
        if floor(target) > floor(name):
            found.append(f"upward: {target}")
        elif job(name) and job(target) and job(target) != job(name):
            found.append(f"other job: {target}")
    if floor(name) != FLOORS["transforms"]:
        tree = ast.parse(path.read_text())
        found += [f"transform: {node.name}" for node in ast.walk(tree)
                  if isinstance(node, ast.ClassDef) and _bases(node) & {"PTransform", "DoFn"}]
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_no_job_imports_another_and_transforms_live_in_transforms(
    name: str,
) -> None:
    assert violations(name, MODULES[name]) == []


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """Synthetic modules that break each rule are caught; one that keeps them is not."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from pipelines.restore import run\n"  # core importing a job: upward
        "import apache_beam as beam\n"
        "def lazy():\n"
        "    from cli import main  # a lazy import counts too\n"
        "class Fn(beam.DoFn):\n"
        "    pass\n"
    )
    assert violations("core.bad", bad) == [
        "upward: cli", "upward: cli.main", "upward: pipelines.restore",
        "upward: pipelines.restore.run", "transform: Fn",
    ]
    job_file = tmp_path / "job.py"
    job_file.write_text("from ..verify import run\nfrom core.model import Version\n")
    assert violations("pipelines.restore.job", job_file) == [
        "other job: pipelines.verify", "other job: pipelines.verify.run",
    ]
    good = tmp_path / "good.py"
    good.write_text("from core.model import Version\nfrom transforms.shards import WriteShards\n")
    assert violations("pipelines.create.good", good) == []


def test_a_restore_checks_its_archive_before_it_imports_a_search_transport() -> None:
    # elastic_transport (0.12 s) is imported by the first client, or beside Beam's import
    # (`pipelines.restore._import_runner`), not before the check the command starts with
    import subprocess
    import sys

    code = "import sys, cli, pipelines.restore; print('elastic_transport' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert (out.returncode, out.stdout.strip()) == (0, "False"), out.stderr
