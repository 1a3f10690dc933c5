"""Benchmark: export 1M events and logs from a generated 3.3 archive to Parquet.

    .venv/bin/python bench/export_parquet.py [--events 500000] [--logs 500000] [--workers 2]

Prints the archive's es_data size, the export's docs/s (wall clock, including the sequential
split of es_data), the dataset's size against es_data, and the peak RSS of this process and its
workers. The archive is generated once and cached in the work folder (default /tmp/cfysnap-bench).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from core.archive import SnapshotReader  # noqa: E402
from core.model import Version  # noqa: E402
from pipelines.export import ExportConfig, run  # noqa: E402
from pipelines.sample.archive import write_sample_archive  # noqa: E402
from pipelines.sample.generate import ManagerSpec  # noqa: E402


def _peak_rss_mb() -> float:
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--logs", type=int, default=500_000)
    parser.add_argument("--workers", type=int, default=2, help="1 = in-process FnApiRunner")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cfysnap-bench"))
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    spec = ManagerSpec(version=Version.V3_3, events=args.events, logs=args.logs, seed=1)
    archive = args.work / f"export-{args.events}-{args.logs}.zip"
    if not archive.exists():
        started = time.monotonic()
        write_sample_archive(spec, archive)
        print(f"generated {archive} in {time.monotonic() - started:.1f}s")
    with SnapshotReader(archive) as snap:
        es_data = next(i for i in snap.infos() if i.filename == "es_data")
    print(f"archive: {archive.stat().st_size / 2**20:.1f} MiB; es_data {es_data.file_size / 2**20:.1f} "
          f"MiB raw, {es_data.compress_size / 2**20:.1f} MiB deflated")

    out = args.work / "events-parquet"
    shutil.rmtree(out, ignore_errors=True)
    beam_args = (
        [f"--direct_num_workers={args.workers}", "--direct_running_mode=multi_processing"]
        if args.workers > 1
        else []
    )
    peak = [0.0]

    def sample_rss() -> None:
        peak[0] = max(peak[0], _peak_rss_mb())

    import threading

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            sample_rss()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    summary = run(ExportConfig(output=out, archive=archive, progress=False), beam_args)
    seconds = time.monotonic() - started
    stop.set()
    watcher.join()

    rows = sum(summary.rows.values())
    size = sum(f.stat().st_size for f in out.rglob("*.parquet"))
    print(f"exported {rows} rows ({summary.rows}) in {seconds:.1f}s: {rows / seconds:,.0f} docs/s "
          f"with {args.workers} worker(s)")
    print(f"dataset: {size / 2**20:.1f} MiB in {summary.files} files, {summary.partitions} "
          f"partitions = {size / es_data.file_size:.1%} of raw es_data, "
          f"{size / es_data.compress_size:.1%} of deflated es_data")
    print(f"peak RSS (driver + workers): {peak[0]:.0f} MiB")


if __name__ == "__main__":
    main()
