"""Beam imported without the connectors no cfysnap job uses.

`import apache_beam` imports every connector Beam ships, from `apache_beam.io`'s `__init__`:
MongoDB's (pymongo and bson) and, behind a `try: ... except ImportError`, BigQuery's, then
Pub/Sub's and the cross-language IOs (with `requests` and the Google API clients). No cfysnap
job reads or writes any of them; yet they were a fifth of Beam's import (0.81-0.86 s alone on
the 2-core bench machine, 0.67 s without them), and that import is on the critical path of
every job: a create waits for it with its first pages read, a restore with its archive checked.
(GCS's file system is still imported, by `apache_beam.io.filesystems`: `gs://` paths work.)
pyarrow too (0.02 s of the import on a faster machine: 0.367 -> 0.350 s, medians of 6 fresh
interpreters each): Beam imports it, where installed, for its own Parquet connector and its Arrow
batches of elements, neither of which cfysnap uses; cfysnap's Parquet export uses pyarrow
directly (`transforms/parquet.py`), which works whether Beam was imported this way before or not.

`import_beam()` imports Beam with those modules marked missing (`sys.modules[name] = None`, what
an import of them then raises is the `ImportError` Beam's own guards expect of a machine without
them), then takes the marks away again: a later `import pymongo` or `import
apache_beam.io.gcp.bigquery` in the process (a Dataflow submission, a test) imports them as ever.
While it imports, another thread's import of one of them would fail: cfysnap's jobs import none
of them meanwhile. What stays, in this process and in the workers cfysnap forks from it
(`core/workers.py`): Beam's MongoDB connector without its client (Beam logs "Could not find a
compatible bson package.", which cfysnap's command line shows only with --debug),
`apache_beam.io` without the BigQuery and Pub/Sub names, and Beam's `ReadFromParquet`,
`WriteToParquet` and Arrow batch converters, defined but unusable (they found no pyarrow).
Workers that start Python afresh (a Flink or Dataflow job's) import Beam as they always do.

Where Beam is already imported, it does nothing. It imports no Beam itself until called.
"""

from __future__ import annotations

import sys
import threading

__all__ = ["UNUSED_MODULES", "import_beam"]

UNUSED_MODULES = ("pymongo", "bson", "apache_beam.io.gcp.bigquery", "pyarrow")
"""Modules `import apache_beam` imports for connectors cfysnap never uses (`bigquery` first of
the ones in `apache_beam.io`'s `try`: the `except ImportError` around them skips the rest;
pyarrow, behind Beam's own `try`s in `apache_beam.typehints` and `apache_beam.io.parquetio`)."""

_LOCK = threading.Lock()


def import_beam() -> None:
    """Import `apache_beam` without `UNUSED_MODULES` (see the module's doc); a no-op once Beam
    is imported. An import error is raised as Beam's import raises it, the marks taken away."""
    with _LOCK:
        if "apache_beam" in sys.modules:
            return
        marked = [name for name in UNUSED_MODULES if name not in sys.modules]
        for name in marked:
            sys.modules[name] = None  # type: ignore[assignment]
        try:
            import apache_beam  # noqa: F401
        finally:
            for name in marked:
                if sys.modules.get(name, 0) is None:
                    del sys.modules[name]
