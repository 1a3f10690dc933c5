"""Restore throughput: `cfysnap restore` against a plain single-process bulk loop and elasticdump.

All three load the same generated archive's documents into the same real search server in the
same run (the server is wiped of non-system indices before each):

1. `cfysnap restore` (pipelines.restore.run): validation (with the plan gathered in the same
   pass) + target checks + files + keys + index creation + the Beam pipeline (split, parse,
   upgrade, restore changes, BulkLoad) + reconcile; once on the default in-process runner and
   once with 2 worker processes.
2. plain loop: read the zip, parse each es_data line, `SearchClient.bulk` 1000 at a time, one
   process, no checks, no journal, no document changes (it creates indices as it meets them).
3. elasticdump (npm package, installed on first use into ~/.cache/cfysnap/elasticdump): the same
   documents as an NDJSON file in its `--type=data` format (`{"_index", "_id", "_source"}`,
   physical typeless index names), `--limit=5000 --noRefresh`, indices pre-created with the same
   mapping cfysnap uses (untimed; reported as a second row with that time added).

With psutil installed, each line also shows the server process's CPU seconds during the load:
on a 2-core machine the server and the loader share the cores.

Usage:
    scripts/search-server start --port 9203
    .venv/bin/python bench/restore_bench.py --es http://127.0.0.1:9203 --documents 200000

Prints one line per contender (documents, best seconds of `--repeat` rounds, docs/s) and the
ratios. The machine is shared (2 cores, the server on them too), so contenders run interleaved,
round after round, after one untimed warm-up load (the server's JIT), and the best round counts.
Runs bounded: `--repeat` loads per contender, against the local server only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.archive import SnapshotReader, parse_hit  # noqa: E402
from core.model import Version  # noqa: E402
from core.search import SearchClient, SearchTarget  # noqa: E402
from pipelines.restore import RestoreConfig, run  # noqa: E402
from pipelines.sample.archive import write_sample_archive  # noqa: E402
from pipelines.sample.generate import ManagerSpec  # noqa: E402

ELASTICDUMP_DIR = Path.home() / ".cache" / "cfysnap" / "elasticdump"


def server_process(url: str) -> object | None:
    """The local process listening on the server's port (psutil), to read its CPU time."""
    try:
        import psutil
    except ImportError:
        return None
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None


def cpu_seconds(proc: object | None) -> float:
    if proc is None:
        return 0.0
    times = proc.cpu_times()  # type: ignore[attr-defined]
    return float(times.user + times.system)


def wipe(client: SearchClient) -> None:
    _, mappings = client.request("GET", "/_mapping")
    names = sorted(n for n in mappings or {} if not n.startswith("."))
    for start in range(0, len(names), 50):
        client.request("DELETE", "/" + ",".join(names[start : start + 50]),
                       params={"ignore_unavailable": "true"}, ok=(404,))


def total_docs(client: SearchClient) -> int:
    client.refresh()
    return sum(client.logical_indices("*").values())


def bench_restore(archive: Path, url: str, work: Path, beam_args: list[str]) -> tuple[int, float]:
    with SearchClient(url) as client:
        wipe(client)
    fs_root = work / f"fs-{len(beam_args)}"
    shutil.rmtree(fs_root, ignore_errors=True)
    config = RestoreConfig(archive=archive, target=SearchTarget(url), fs_root=fs_root,
                           credentials_dir=work / f"creds-{len(beam_args)}", progress=False)
    started = time.monotonic()
    summary = run(config, beam_args)
    return summary.documents, time.monotonic() - started


def bench_plain(archive: Path, url: str) -> tuple[int, float]:
    with SearchClient(url) as client:
        wipe(client)
        started = time.monotonic()
        n, chunk = 0, []
        with SnapshotReader(archive) as snap:
            for lineno, line in snap.iter_lines():
                chunk.append(parse_hit(line, lineno))
                if len(chunk) == 1000:
                    result = client.bulk(chunk)
                    result.raise_on_failure()
                    n += len(chunk)
                    chunk = []
        if chunk:
            client.bulk(chunk).raise_on_failure()
            n += len(chunk)
        client.refresh()
        return n, time.monotonic() - started


def elasticdump_bin() -> Path:
    binary = ELASTICDUMP_DIR / "node_modules" / ".bin" / "elasticdump"
    if not binary.exists():
        ELASTICDUMP_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix",
                        str(ELASTICDUMP_DIR), "elasticdump"], check=True)
    return binary


def bench_elasticdump(archive: Path, url: str, work: Path) -> tuple[int, float, float, str]:
    """(documents, seconds of the elasticdump run, seconds creating its indices before, status)."""
    binary = elasticdump_bin()
    data = work / "elasticdump.ndjson"
    with SearchClient(url) as client:
        wipe(client)
        pairs = set()
        with SnapshotReader(archive) as snap, open(data, "w") as out:
            for lineno, line in snap.iter_lines():
                hit = parse_hit(line, lineno)
                pairs.add((hit["_index"], hit["_type"]))
                out.write(json.dumps({"_index": client.physical_index(hit["_index"], hit["_type"]),
                                      "_id": hit["_id"], "_source": hit["_source"]}) + "\n")
        created = time.monotonic()
        for index, doc_type in sorted(pairs):
            client.ensure_index(index, doc_type)
        created = time.monotonic() - created
        command = [str(binary), f"--input={data}", f"--output={url}", "--type=data",
                   "--limit=5000", "--noRefresh"]
        started = time.monotonic()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        status = "as documented"
        if proc.returncode != 0 and "METHOD_NOT_ALLOWED" in proc.stdout + proc.stderr:
            # elasticdump reads the server version from `GET /`, which the Elasticsearch
            # integ-test distribution answers with 405; `--openSearchServerless` is its only
            # switch that skips that probe (it then sends plain typeless bulk requests).
            status = "GET / 405; rerun with --openSearchServerless=true"
            started = time.monotonic()
            proc = subprocess.run([*command, "--openSearchServerless=true"],
                                  capture_output=True, text=True, timeout=3600)
        seconds = time.monotonic() - started
        n = total_docs(client)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        status += f"; failed, exit {proc.returncode}: {' | '.join(tail)}"
    return n, seconds, created, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--es", default=os.environ.get("CFYSNAP_ES_URL", "http://127.0.0.1:9200"))
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best one counts")
    parser.add_argument("--skip-elasticdump", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cfysnap-restore-bench-"))
    two = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    try:
        archive = work / "bench.zip"
        spec = ManagerSpec.sized(Version.V3_4, args.documents, seed=1)
        write_sample_archive(spec, archive)
        print(f"archive: {archive.stat().st_size / 1e6:.1f} MB, ~{args.documents} documents (3.4)")
        bench_plain(archive, args.es)  # warm-up, untimed
        server = server_process(args.es)
        rounds: dict[str, list[tuple[int, float]]] = {}
        for round_no in range(args.repeat):
            for name, load in (
                ("cfysnap restore (1 process)", lambda: bench_restore(archive, args.es, work, [])),
                ("cfysnap restore (2 processes)", lambda: bench_restore(archive, args.es, work, two)),
                ("plain bulk loop", lambda: bench_plain(archive, args.es)),
            ):
                cpu = cpu_seconds(server)
                n, seconds = load()
                cpu = cpu_seconds(server) - cpu
                rounds.setdefault(name, []).append((n, seconds))
                print(f"  round {round_no + 1}: {name:<32} {seconds:7.1f} s {n / seconds:8.0f} docs/s"
                      f"  server CPU {cpu:5.1f} s ({cpu / seconds:.0%} of one core)", flush=True)
            if not args.skip_elasticdump:
                cpu = cpu_seconds(server)
                n, seconds, created, status = bench_elasticdump(archive, args.es, work)
                cpu = cpu_seconds(server) - cpu
                rounds.setdefault(f"elasticdump ({status})", []).append((n, seconds))
                rounds.setdefault("elasticdump + creating its indices", []).append(
                    (n, seconds + created))
                print(f"  round {round_no + 1}: elasticdump {seconds:7.1f} s (+{created:.1f} s "
                      f"creating indices)  server CPU {cpu:5.1f} s (incl. setup)", flush=True)
        rows = {name: min(runs, key=lambda r: r[1]) for name, runs in rounds.items()}
        for name, (n, seconds) in rows.items():
            print(f"{name:<40} {n:>9} docs {seconds:>8.1f} s {n / seconds:>9.0f} docs/s")
        for mine in ("cfysnap restore (1 process)", "cfysnap restore (2 processes)"):
            rate = rows[mine][0] / rows[mine][1]
            for name, (n, seconds) in rows.items():
                if not name.startswith("cfysnap") and n:
                    print(f"{mine} / {name}: {rate / (n / seconds):.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
