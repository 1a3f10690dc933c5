"""Peak memory of `cfysnap validate` on a 100k-line and a 1,000,000-line es_data.

Usage: .venv/bin/python -m bench.validate_memory [--lines 1000000] [--baseline 100000]
Prints peak RSS (MB) for both and their ratio; issue #2 asks for < 200 MB at 1M lines.
Note: ru_maxrss counts the whole Python process (interpreter, numpy) — the floor is ~60 MB.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench._measure import CFYSNAP, peak_rss_mb
from core.archive import SnapshotWriter


def write_archive(path: Path, lines: int) -> None:
    def hits():
        for i in range(lines):
            yield {
                "_index": f"logstash-2016.03.{1 + i % 28:02d}",
                "_type": "cloudify_event" if i % 2 else "cloudify_log",
                "_id": f"ev{i:012d}",
                "_score": 0.0,
                "_source": {
                    "type": "cloudify_event",
                    "timestamp": "2016-03-14 10:11:12.345+0000",
                    "context": {"deployment_id": f"dep{i % 100}", "execution_id": f"ex{i % 1000}"},
                    "message": {"text": f"Task started 'op {i}' — déploiement ✓", "arguments": None},
                },
            }

    with SnapshotWriter(path) as w:
        w.write_json("metadata.json", {"has_cloudify_events": False, "snapshot_version": "3.3"})
        w.write_hits(hits())
        w.write_json("agents.json", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for n in (args.baseline, args.lines):
            path = Path(tmp) / f"{n}.zip"
            write_archive(path, n)
            mb, seconds, rc = peak_rss_mb([*CFYSNAP, "validate", str(path)])
            assert rc == 0, f"validate failed on the {n}-line archive"
            results[n] = mb
            print(f"validate {n:>9,} lines: peak RSS {mb:7.1f} MB, {seconds:6.1f} s, {n / seconds:,.0f} lines/s")
        ratio = results[args.lines] / results[args.baseline]
        print(f"ratio {args.lines:,} / {args.baseline:,} lines: {ratio:.2f}x (limit: 200 MB at 1M lines)")


if __name__ == "__main__":
    main()
