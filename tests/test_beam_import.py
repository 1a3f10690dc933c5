"""`core.beam_import`: Beam imported without the connectors no job uses, and nothing else changed.

Each case runs in a fresh interpreter: this test process has imported Beam long ago.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> dict:
    """The JSON a fresh interpreter prints running `code` (in the repository's root)."""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_beam_is_imported_without_the_unused_connectors_and_they_still_import_afterwards() -> None:
    state = _run(
        "import json, sys\n"
        "from core.beam_import import UNUSED_MODULES, import_beam\n"
        "import_beam()\n"
        "import apache_beam as beam\n"
        "seen = {name: name in sys.modules for name in UNUSED_MODULES}\n"
        "marks = [name for name in UNUSED_MODULES if name in sys.modules]\n"
        "usable = [beam.io.ReadFromText.__name__, beam.io.WriteToText.__name__,\n"
        "          beam.io.ReadFromParquet.__name__, beam.Pipeline.__name__]\n"
        "import pymongo, apache_beam.io.gcp.bigquery as bq, pyarrow, transforms.parquet\n"
        "later = [pymongo.__name__, bq.__name__, hasattr(beam.io, 'ReadFromBigQuery'),\n"
        "         pyarrow.__name__, transforms.parquet.pa is pyarrow]\n"
        "print(json.dumps({'seen': seen, 'marks': marks, 'usable': usable, 'later': later}))\n"
    )
    assert state == {
        # imported without them, and no mark of them left behind
        "seen": {"pymongo": False, "bson": False, "apache_beam.io.gcp.bigquery": False,
                 "pyarrow": False},
        "marks": [],
        "usable": ["ReadFromText", "WriteToText", "ReadFromParquet", "Pipeline"],
        # a later import of them works as ever (cfysnap's Parquet export's pyarrow too);
        # `beam.io` itself lacks the Google Cloud names
        "later": ["pymongo", "apache_beam.io.gcp.bigquery", False, "pyarrow", True],
    }


def test_a_failing_beam_import_raises_and_leaves_no_mark() -> None:
    state = _run(
        "import json, sys\n"
        "from core.beam_import import UNUSED_MODULES, import_beam\n"
        "class Broken:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'apache_beam.coders':\n"
        "            raise ImportError('broken install: apache_beam.coders')\n"
        "sys.meta_path.insert(0, Broken())\n"
        "try:\n"
        "    import_beam()\n"
        "    error = None\n"
        "except ImportError as exc:\n"
        "    error = str(exc)\n"
        "marks = [n for n in UNUSED_MODULES if n in sys.modules and sys.modules[n] is None]\n"
        "print(json.dumps({'error': error, 'marks': marks}))\n"
    )
    assert state == {"error": "broken install: apache_beam.coders", "marks": []}


JOB_IMPORTS = {
    # what each job runs to import Beam: the create's and the restore's import threads, and a
    # whole (small) convert, whose pipeline imports it
    "create": "import pipelines.create as job\njob._import_runner()\n",
    "restore": "import pipelines.restore as job\njob._import_runner()\n",
    "convert": (
        "import tempfile\nfrom pathlib import Path\n"
        "from core.model import Version\n"
        "from pipelines.convert import ConvertConfig, run\n"
        "from pipelines.sample.archive import write_sample_archive\n"
        "from pipelines.sample.generate import ManagerSpec\n"
        "work = Path(tempfile.mkdtemp())\n"
        "write_sample_archive(ManagerSpec(version=Version.V3_2, events=5, logs=5), work / 'a.zip')\n"
        "run(ConvertConfig(work / 'a.zip', work / 'b.zip', Version.V3_3, progress=False))\n"
    ),
}


@pytest.mark.parametrize("job", sorted(JOB_IMPORTS))
def test_every_job_imports_beam_through_it(job: str) -> None:
    state = _run(
        JOB_IMPORTS[job]
        + "import json, sys\n"
        "from core.beam_import import UNUSED_MODULES\n"
        "print(json.dumps(['apache_beam' in sys.modules,\n"
        "                  sorted(n for n in UNUSED_MODULES if n in sys.modules)]))\n"
    )
    assert state == [True, []]
