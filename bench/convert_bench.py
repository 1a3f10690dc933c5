"""Convert throughput against a plain single-process loop, and convert's peak memory.

Usage:
    .venv/bin/python -m bench.convert_bench speed  [--documents 300000] [--lines-per-shard 10000]
    .venv/bin/python -m bench.convert_bench memory [--small 50000] [--large 500000]

`speed` generates a 3.2 archive (pipelines.sample) and converts it to 3.4 three ways in the same
run: a plain Python loop (read zip, parse, upgrade, write zip: no validation, no dedupe), then
`pipelines.convert.run` on the FnApiRunner with 1 worker and with 2 processes. It prints docs/s
for each, the Beam/plain ratio, and how long convert's validation of the source took (it runs in
a child process alongside the conversion; the plain loop does not validate) and how much of it
the job had to wait for at the end. CPU seconds include that child.

Wall-clock figures depend on what else runs on the machine; the CPU seconds (this process plus
worker processes) are steadier.

`memory` converts a `--small` and a `--large` generated 3.2 archive to 3.4 in fresh child
processes (`cfysnap convert`, 1 worker) and prints each peak RSS; the outputs are validated.
`--shape events` (default) grows only the events; `--shape sized` grows the whole manager, whose
agents.json (loaded whole, as validate and the agents step need it) then grows as well.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench._measure import CFYSNAP, peak_rss_mb
from core.archive import ES_DATA, SnapshotReader, SnapshotWriter, dump_hit, parse_hit
from core.model import Version
from core.validate import validate_archive
from pipelines.convert import ConvertConfig, ConvertSummary, converted_members, run
from pipelines.sample.archive import write_sample_archive
from pipelines.sample.generate import ManagerSpec, document_count
from transforms.versions import plan, upgrade_hit

TWO_PROCESSES = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (workers of multi-process runs)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def generate(path: Path, documents: int, shape: str = "sized") -> int:
    """A 3.2 sample archive of about `documents` es_data lines; returns the exact count.

    shape "sized": `ManagerSpec.sized` (structure grows with the square root of the size, so
    agents.json grows too); "events": the default small manager plus `documents` events and logs.
    """
    if shape == "events":
        spec = ManagerSpec(Version.V3_2, events=documents // 2, logs=documents - documents // 2, seed=1)
    else:
        spec = ManagerSpec.sized(Version.V3_2, documents, seed=1)
    if not path.exists():
        write_sample_archive(spec, path)
    with SnapshotReader(path) as snap:
        return sum(1 for _ in snap.iter_lines()) if document_count(spec) else 0


def plain_convert(source: Path, output: Path, target: Version) -> int:
    """The baseline: one process, one loop, the same step functions and archive library."""
    n = 0
    counts: Counter[tuple[str, str]] = Counter()
    with SnapshotReader(source) as snap, SnapshotWriter(output) as out:
        steps = plan(snap.version, target)
        for member in converted_members(snap, steps):
            if member.data is not None:
                out.write_bytes(member.name, member.data)
            elif member.name.endswith("/"):
                out.write_directory(member.name)
            else:
                with snap.open(member.name) as src:
                    out.write_stream(member.name, src)
        with out.open_member(ES_DATA) as f:
            for lineno, line in snap.iter_lines():
                hit = upgrade_hit(parse_hit(line, lineno), steps)
                f.write(dump_hit(hit).encode() + b"\n")
                counts[(hit["_index"], hit["_type"])] += 1
                n += 1
        out.set_document_counts(counts)
    return n


def beam_convert(source: Path, output: Path, lines_per_shard: int, *beam_args: str) -> ConvertSummary:
    config = ConvertConfig(
        source, output, Version.V3_4, force=True, lines_per_shard=lines_per_shard, progress=False
    )
    summary = run(config, beam_args)
    assert isinstance(summary, ConvertSummary)
    return summary


def speed(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="cfysnap-convert-bench-") as tmp:
        work = Path(tmp)
        source = args.archive or work / "in-3.2.zip"
        t0 = time.monotonic()
        docs = generate(source, args.documents)
        print(f"generated {docs:,} documents (3.2) in {time.monotonic() - t0:.1f} s; "
              f"{source.stat().st_size / 1e6:.1f} MB")

        t0, c0 = time.monotonic(), cpu_seconds()
        plain_docs = plain_convert(source, work / "plain.zip", Version.V3_4)
        plain_s, plain_cpu = time.monotonic() - t0, cpu_seconds() - c0
        plain_rate = plain_docs / plain_s
        print(f"plain loop           {plain_s:7.1f} s  {plain_rate:9,.0f} docs/s  cpu {plain_cpu:6.1f} s")

        for label, beam_args in (("beam 1 worker", ()), ("beam 2 processes", TWO_PROCESSES)):
            out = work / f"{label.replace(' ', '-')}.zip"
            c0 = cpu_seconds()
            s = beam_convert(source, out, args.lines_per_shard, *beam_args)
            cpu = cpu_seconds() - c0
            print(
                f"{label:<20} {s.seconds:7.1f} s  {s.docs_per_second:9,.0f} docs/s  cpu {cpu:6.1f} s"
                f"  ratio {s.docs_per_second / plain_rate:4.2f}"
                f"  | validation alongside took {s.validate_seconds:.1f} s, {s.validate_wait_seconds:.1f} s waited for"
            )
            assert s.documents_written == plain_docs, (s.documents_written, plain_docs)
        if args.check:
            problems = validate_archive(out)
            print(f"output validates: {not problems}")


def memory(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="cfysnap-convert-mem-") as tmp:
        work = Path(tmp)
        results = []
        for documents in (args.small, args.large):
            source = work / f"in-{documents}.zip"
            docs = generate(source, documents, args.shape)
            output = work / f"out-{documents}.zip"
            argv = [*CFYSNAP, "convert", str(source), str(output), "--to", "3.4", "--json"]
            peak, seconds, rc = peak_rss_mb(argv)
            if rc != 0:
                sys.exit(f"convert failed (exit {rc}) for {documents} documents")
            valid = not validate_archive(output)
            results.append(peak)
            print(f"{docs:>10,} documents: peak RSS {peak:7.1f} MB, {seconds:6.1f} s, output valid: {valid}")
        print(f"ratio large/small peak RSS: {results[1] / results[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_speed = sub.add_parser("speed", help="docs/s: plain loop vs Beam with 1 and 2 workers")
    p_speed.add_argument("--documents", type=int, default=300_000)
    p_speed.add_argument("--lines-per-shard", type=int, default=10_000)
    p_speed.add_argument("--check", action="store_true", help="also validate the last output")
    p_speed.add_argument(
        "--archive", type=Path, help="the 3.2 source archive: generated there when missing, kept (reused across runs)"
    )
    p_mem = sub.add_parser("memory", help="peak RSS of convert for a small and a large archive")
    p_mem.add_argument("--small", type=int, default=50_000)
    p_mem.add_argument("--large", type=int, default=500_000)
    p_mem.add_argument(
        "--shape", choices=["events", "sized"], default="events",
        help="events: a fixed small manager plus N events/logs; sized: ManagerSpec.sized(N)",
    )
    args = parser.parse_args()
    {"speed": speed, "memory": memory}[args.command](args)


if __name__ == "__main__":
    main()
