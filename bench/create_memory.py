"""Peak memory of `cfysnap create` at 100k and 1M documents: it must not grow with size.

For each size: load a generated 3.3 manager into the real search server (wiped first), then run
`cli.py create` in a child process and sample the resident memory of that process *and all its
children* (Beam worker processes in multi-process mode) every 50 ms; print the peak, the time
and docs/s, and at the end the ratio of the peaks (acceptance: <= 1.25).

    scripts/search-server start --port 9202
    .venv/bin/python bench/create_memory.py --es http://127.0.0.1:9202 [--sizes 100000,1000000]
        [-- BEAM_ARGS, e.g. --direct_num_workers=2 --direct_running_mode=multi_processing]

Loading 1M documents takes several minutes; `--no-load` reuses what the server holds (only
when it was loaded by the previous size run of this script, i.e. for a single size).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.model import Version  # noqa: E402
from core.search import SearchClient  # noqa: E402
from pipelines.sample.generate import ManagerSpec, document_count  # noqa: E402
from pipelines.sample.load import load_manager  # noqa: E402


def wipe(client: SearchClient) -> None:
    _, mappings = client.request("GET", "/_mapping")
    names = sorted(n for n in mappings or {} if not n.startswith("."))
    for start in range(0, len(names), 50):
        client.request("DELETE", "/" + ",".join(names[start : start + 50]), ok=(404,))


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(es: str, fs_root: Path, output: Path, beam_args: list[str]) -> tuple[int, float]:
    cmd = [
        sys.executable,
        str(ROOT / "cli.py"),
        "create",
        "--es",
        es,
        "--fs-root",
        str(fs_root),
        "--output",
        str(output),
    ]
    if beam_args:
        cmd += ["--", *beam_args]
    started = time.monotonic()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_rss(proc))
        time.sleep(0.05)
    seconds = time.monotonic() - started
    out = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        raise SystemExit(f"create failed ({child.returncode}):\n{out}")
    print(out.strip().splitlines()[-1])
    return peak, seconds


def main() -> None:
    argv = sys.argv[1:]
    beam_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--es", default="http://127.0.0.1:9202")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--no-load", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="cfysnap-create-bench-"))
    peaks: dict[int, int] = {}
    try:
        for size in sizes:
            spec = replace(
                ManagerSpec.sized(Version.V3_3, size), keys_dir=str(work / f"keys-{size}")
            )
            fs_root = work / f"fs-{size}"
            with SearchClient(args.es, timeout=120) as client:
                if not args.no_load:
                    t = time.monotonic()
                    wipe(client)
                    load_manager(spec, client, fs_root)
                    print(f"loaded {document_count(spec)} docs in {time.monotonic() - t:.0f}s")
            output = work / f"snap-{size}.zip"
            peak, seconds = measure(args.es, fs_root, output, beam_args)
            peaks[size] = peak
            print(
                f"size {size}: peak RSS {peak / 2**20:.0f} MiB, {seconds:.1f}s, "
                f"{document_count(spec) / seconds:.0f} docs/s, archive "
                f"{output.stat().st_size / 2**20:.1f} MiB"
            )
            output.unlink()
        if len(sizes) >= 2:
            small, big = peaks[sizes[0]], peaks[sizes[-1]]
            print(
                f"peak RSS {sizes[0]}: {small / 2**20:.0f} MiB; {sizes[-1]}: {big / 2**20:.0f} MiB;"
                f" ratio {big / small:.2f} (acceptance <= 1.25)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
