"""`bench/run [--docs N]`: cfysnap against elasticdump, a plain loop and the server's own rate,
side by side in one run, on the same documents (issue 13).

What it does, in order:

1. starts its own real servers with `scripts/search-server` (Elasticsearch 1.7.6 first, then
   8.19.7; fresh data folders on their own ports) and installs elasticdump with npm into an
   ignored folder (`bench/.elasticdump/`);
2. generates one 3.3 manager of N documents and loads it into each server (the manager's own
   mappings on 1.7) and into a file-server root;
3. per server, **create**: the raw server rate (scan/scroll, response bytes only, nothing
   parsed), a plain Python loop (scroll, `json` parse and dump, a deflated zip), elasticdump's
   tuned dump (`multielasticdump --limit=5000 --parallel=2`), `cfysnap create` with 1 worker
   and with 2 worker processes;
4. per server, **restore** into a freshly installed manager: a raw curl bulk of ready NDJSON
   (the server's own rate), a plain bulk loop (parse each es_data line, bulk 1,000 at a time),
   elasticdump's import (`multielasticdump --direction=load`), `cfysnap restore` with 1 and 2
   worker processes;
5. **convert** a 3.2 archive of N documents to 3.4: a plain loop (read, parse, upgrade, dump,
   deflate) and `cfysnap convert` with 1 and 2 workers;
6. prints one Markdown table (seconds, documents/s, ratio to the job's baseline, peak RSS of the
   contender's whole process tree, sampled every 50 ms) and the acceptance ratios, and writes it
   all to `bench/results/latest.json`.

Every contender runs in a child process; the machine's cores are shared with the servers, as on
a manager. `--rounds R` runs every contender of a job once per round, in turn, R times, and
keeps each one's best (the others are noise; taking turns spreads a slow moment of the machine
over all of them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.archive import SnapshotReader  # noqa: E402
from core.model import Version  # noqa: E402
from core.search import SearchClient  # noqa: E402
from pipelines.sample.archive import write_sample_archive  # noqa: E402
from pipelines.sample.generate import ManagerSpec, document_count  # noqa: E402
from pipelines.sample.load import load_empty_manager, load_manager  # noqa: E402

PY = sys.executable
CLI = [PY, str(ROOT / "cli.py")]
SERVER = ROOT / "scripts" / "search-server"
ELASTICDUMP = ROOT / "bench" / ".elasticdump"
MULTI = ["--", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
PLAIN = ROOT / "bench" / "plain.py"


# ------------------------------------------------------------------------------- measuring
@dataclass
class Result:
    job: str
    server: str
    contender: str
    documents: int
    seconds: float
    peak_rss_mb: float
    baseline: bool = False
    note: str = ""

    @property
    def rate(self) -> float:
        return self.documents / self.seconds if self.seconds else 0.0


def _tree_rss(proc: psutil.Process) -> int:
    """RSS of a process and its children (0 once it has exited: sampling races its end)."""
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in tree:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run `argv` in a child; (seconds, peak RSS of its whole process tree in MB). Fails loudly
    (with the child's stderr) if the child fails."""
    started = time.monotonic()
    proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})}, text=True)
    ps, peak, done = psutil.Process(proc.pid), 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(ps))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    seconds = time.monotonic() - started
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(map(str, argv))} failed ({proc.returncode}):\n{err[-3000:]}")
    return seconds, peak / 1e6


@dataclass
class Contender:
    """One way of doing a job, run in a child process: `prepare()` (untimed) before each run."""

    label: str
    argv: Sequence[str]
    baseline: bool = False
    note: str = ""
    prepare: Callable[[], None] | None = None
    env: dict[str, str] | None = None


def side_by_side(job: str, server: str, documents: int, contenders: Sequence[Contender],
                 rounds: int) -> list[Result]:
    """Every contender once per round, in turn, `rounds` times; each keeps its fastest run (and
    that run's peak RSS). Taking turns, a slow moment of the shared machine slows every
    contender of the round alike instead of all the runs of one of them."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for c in contenders:
            if c.prepare is not None:
                c.prepare()
            seconds, rss = run_measured(c.argv, c.env)
            if c.label not in best or seconds < best[c.label][0]:
                best[c.label] = (seconds, rss)
    results = []
    for c in contenders:
        seconds, rss = best[c.label]
        results.append(Result(job, server, c.label, documents, seconds, rss, c.baseline, c.note))
        print(f"  {job} {server:<18} {c.label:<38} {seconds:7.1f} s", flush=True)
    return results


# ------------------------------------------------------------------------------- the parts
def start_server(kind: str, port: int, cache: Path) -> str:
    data = cache / f"bench-{kind}-{port}"
    subprocess.run([str(SERVER), "stop", "--port", str(port)], capture_output=True)
    shutil.rmtree(data, ignore_errors=True)
    out = subprocess.run([str(SERVER), "start", "--server", kind, "--port", str(port),
                          "--data", str(data)], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def stop_server(port: int) -> None:
    subprocess.run([str(SERVER), "stop", "--port", str(port)], capture_output=True)


def elasticdump() -> Path:
    """multielasticdump, installed with npm into bench/.elasticdump (ignored by git) once."""
    binary = ELASTICDUMP / "node_modules" / ".bin" / "multielasticdump"
    if not binary.exists():
        ELASTICDUMP.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix",
                        str(ELASTICDUMP), "elasticdump@6.125.1"], check=True)
    return binary


def wipe(client: SearchClient) -> None:
    _, mappings = client.request("GET", "/_mapping")
    names = sorted(n for n in mappings or {} if not n.startswith("."))
    for start in range(0, len(names), 50):
        client.request("DELETE", "/" + ",".join(names[start : start + 50]),
                       params={"ignore_unavailable": "true"}, ok=(404,))


def fresh_target(url: str) -> None:
    with SearchClient(url) as client:
        wipe(client)
        load_empty_manager(Version.V3_3, client)


def es_major(url: str) -> int:
    with SearchClient(url) as client:
        return client.info().version[0]


# ------------------------------------------------------------------------------------ jobs
def elasticdump_dump_args(url: str, dump_dir: Path) -> list[str]:
    """The command of multielasticdump's tuned dump of the manager's indices at `url`."""
    major = es_major(url)
    pattern = "^(cloudify_storage|logstash-.*)$" if major < 7 else "^(cloudify_storage|logstash-).*$"
    dump_args = [str(elasticdump()), "--direction=dump", f"--match={pattern}", f"--input={url}",
                 f"--output={dump_dir}", "--limit=5000", "--parallel=2", "--includeType=data"]
    if major >= 8:
        dump_args.append("--openSearchServerless=true")  # its GET / version check: 405 here
    return dump_args


def bench_create(url: str, name: str, fs_root: Path, work: Path, docs: int, rounds: int) -> list[Result]:
    dump_dir = work / "elasticdump"

    def clean_dump() -> None:
        shutil.rmtree(dump_dir, ignore_errors=True)
        dump_dir.mkdir()

    dump_args = elasticdump_dump_args(url, dump_dir)
    create = [*CLI, "create", "--es", url, "--fs-root", str(fs_root), "--output",
              str(work / "cfysnap.zip"), "--force"]
    return side_by_side("create", name, docs, [
        Contender("raw scan/scroll (server's rate)", [PY, str(PLAIN), "raw-dump", url],
                  note="response bytes only, nothing parsed"),
        Contender("plain Python loop", [PY, str(PLAIN), "dump", url, str(work / "plain.zip")],
                  baseline=True, note="scroll, json parse and dump, deflated zip"),
        Contender("elasticdump (multielasticdump)", dump_args, prepare=clean_dump,
                  note="--limit=5000 --parallel=2, one file per index"),
        Contender("cfysnap create, 1 worker", create),
        Contender("cfysnap create, 2 worker processes", [*create, *MULTI]),
    ], rounds)


def bench_restore(url: str, name: str, archive: Path, work: Path, docs: int, rounds: int) -> list[Result]:
    major = es_major(url)
    ndjson = work / "bulk"
    subprocess.run([PY, str(PLAIN), "bulk-files", str(archive), str(ndjson), str(major)], check=True)
    if major < 8 and not (work / "elasticdump").exists():  # a run without the create job
        (work / "elasticdump").mkdir()
        try:
            subprocess.run(elasticdump_dump_args(url, work / "elasticdump"), check=True,
                           capture_output=True)
        except BaseException:
            shutil.rmtree(work / "elasticdump", ignore_errors=True)
            raise

    def fresh() -> None:
        fresh_target(url)

    def clean() -> None:
        fresh_target(url)
        shutil.rmtree(work / "fs", ignore_errors=True)
        shutil.rmtree(work / "creds", ignore_errors=True)

    restore = [*CLI, "restore", str(archive), "--es", url, "--fs-root", str(work / "fs"),
               "--credentials-dir", str(work / "creds"), "--target-version", "3.3"]
    contenders = [
        Contender("raw curl bulk of ready NDJSON", [PY, str(PLAIN), "curl-bulk", url, str(ndjson)],
                  note="5,000 documents a request, 2 at a time", prepare=fresh),
        Contender("plain Python bulk loop", [PY, str(PLAIN), "load", url, str(archive)],
                  baseline=True, note="parse each line, bulk 1,000 at a time", prepare=fresh),
    ]
    if major < 8:  # its import of typed data; 8.x reads no _type (the dump's index files are typed)
        contenders.append(Contender(
            "elasticdump import (multielasticdump)",
            [str(elasticdump()), "--direction=load", f"--input={work / 'elasticdump'}",
             f"--output={url}", "--limit=5000", "--parallel=2", "--includeType=data", "--noRefresh"],
            note="the files of its own dump", prepare=fresh))
    contenders += [
        Contender("cfysnap restore, 1 worker", restore, prepare=clean),
        Contender("cfysnap restore, 2 worker processes", [*restore, *MULTI], prepare=clean),
    ]
    return side_by_side("restore", name, docs, contenders, rounds)


def bench_convert(work: Path, docs: int, rounds: int) -> list[Result]:
    source = work / "convert-3.2.zip"
    write_sample_archive(ManagerSpec.sized(Version.V3_2, docs, seed=11), source)
    convert = [*CLI, "convert", str(source), str(work / "out-3.4.zip"), "--to", "3.4", "--force"]
    return side_by_side("convert", "-", docs, [
        Contender("plain Python loop", [PY, str(PLAIN), "convert", str(source), str(work / "plain-3.4.zip")],
                  baseline=True, note="read, parse, upgrade, dump, deflate"),
        Contender("cfysnap convert, 1 worker", convert),
        Contender("cfysnap convert, 2 worker processes", [*convert, *MULTI]),
    ], rounds)


# ---------------------------------------------------------------------------------- memory
def bench_memory(url: str, cache_work: Path, docs: int) -> list[Result]:
    """Peak RSS of create, restore (1 worker) and convert at `docs` and 10× `docs`: it must not
    grow with the number of documents (issue 13: 1M within 1.25× of 100k, under 250 MB)."""
    results = []
    for size in (docs, docs * 10):
        work = cache_work / f"memory-{size}"
        work.mkdir()
        spec = replace(ManagerSpec.sized(Version.V3_3, size, seed=5), keys_dir=str(work / "keys"))
        with SearchClient(url, timeout=600) as client:
            wipe(client)
            load_manager(spec, client, work / "manager")
        archive = work / "cfysnap.zip"
        seconds, rss = run_measured([*CLI, "create", "--es", url, "--fs-root", str(work / "manager"),
                                     "--output", str(archive)])
        results.append(Result("create", "memory", "cfysnap create, 1 worker", size, seconds, rss))
        print(f"  memory create  {size:>10,} documents {seconds:7.1f} s {rss:7.0f} MB", flush=True)
        fresh_target(url)
        seconds, rss = run_measured([*CLI, "restore", str(archive), "--es", url, "--fs-root",
                                     str(work / "fs"), "--credentials-dir", str(work / "creds"),
                                     "--target-version", "3.3"])
        results.append(Result("restore", "memory", "cfysnap restore, 1 worker", size, seconds, rss))
        print(f"  memory restore {size:>10,} documents {seconds:7.1f} s {rss:7.0f} MB", flush=True)
        source = work / "convert-3.2.zip"
        write_sample_archive(ManagerSpec.sized(Version.V3_2, size, seed=11), source)
        seconds, rss = run_measured([*CLI, "convert", str(source), str(work / "out-3.4.zip"),
                                     "--to", "3.4"])
        results.append(Result("convert", "memory", "cfysnap convert, 1 worker", size, seconds, rss))
        print(f"  memory convert {size:>10,} documents {seconds:7.1f} s {rss:7.0f} MB", flush=True)
        shutil.rmtree(work)
    return results


def memory_ratios(results: list[Result]) -> dict[str, float]:
    out: dict[str, float] = {}
    for job in ("create", "restore", "convert"):
        runs = sorted((r for r in results if r.job == job), key=lambda r: r.documents)
        if len(runs) == 2 and runs[0].peak_rss_mb:
            small, large = runs
            out[f"{job} peak RSS, {large.documents:,} vs {small.documents:,} documents"] = (
                large.peak_rss_mb / small.peak_rss_mb
            )
            out[f"{job} peak RSS at {large.documents:,} documents, MB"] = large.peak_rss_mb
    return out


# ---------------------------------------------------------------------------------- report
def ratios(results: list[Result]) -> dict[str, float]:
    """The acceptance ratios of issue 13 (speed of cfysnap / speed of the other)."""
    def rate(job: str, server: str, contender: str) -> float:
        return next((r.rate for r in results
                     if (r.job, r.server, r.contender) == (job, server, contender)), 0.0)

    def best(job: str, server: str) -> float:
        return max((r.rate for r in results if r.job == job and r.server == server
                    and r.contender.startswith("cfysnap")), default=0.0)

    out: dict[str, float] = {}
    for server in sorted({r.server for r in results if r.job != "convert"}):
        for other in ("elasticdump (multielasticdump)", "plain Python loop", "raw scan/scroll (server's rate)"):
            if rate("create", server, other):
                out[f"create on {server} vs {other}"] = best("create", server) / rate("create", server, other)
        for other in ("plain Python bulk loop", "elasticdump import (multielasticdump)", "raw curl bulk of ready NDJSON"):
            if rate("restore", server, other):
                out[f"restore on {server} vs {other}"] = best("restore", server) / rate("restore", server, other)
    loop = rate("convert", "-", "plain Python loop")
    for workers in ("1 worker", "2 worker processes"):
        if loop:
            out[f"convert, {workers}, vs plain loop"] = rate("convert", "-", f"cfysnap convert, {workers}") / loop
    return out


def table(results: list[Result]) -> str:
    lines = ["| job | server | contender | seconds | documents/s | vs baseline | peak RSS MB |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in results:
        base = next((b for b in results if b.baseline and (b.job, b.server) == (r.job, r.server)), None)
        vs = f"{r.rate / base.rate:.2f}" if base and base.rate else ""
        lines.append(f"| {r.job} | {r.server} | {r.contender}{' (baseline)' if r.baseline else ''} | "
                     f"{r.seconds:.1f} | {r.rate:,.0f} | {vs} | {r.peak_rss_mb:.0f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000, help="documents of the manager")
    parser.add_argument("--rounds", type=int, default=1, help="runs per contender (best kept)")
    parser.add_argument("--servers", default="elasticsearch-1.7,elasticsearch-8",
                        help="comma-separated: elasticsearch-1.7, elasticsearch-8")
    parser.add_argument("--port", type=int, default=9240, help="first server port (then +1)")
    parser.add_argument("--jobs", default="create,restore,convert")
    parser.add_argument("--output", type=Path, default=None,
                        help="default bench/results/latest.json (memory.json with --memory)")
    parser.add_argument("--memory", action="store_true",
                        help="instead: peak RSS of create, restore and convert at --docs and 10x "
                             "--docs on Elasticsearch 1.7 (takes a while: 10x is 1M by default)")
    args = parser.parse_args(argv)
    name = "memory.json" if args.memory else "latest.json"
    args.output = args.output or ROOT / "bench" / "results" / name
    cache = Path(subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh; cfysnap_cache"],
                                capture_output=True, text=True, check=True).stdout.strip())
    jobs = set(args.jobs.split(","))
    # cfysnap as installed: its modules byte-compiled (as `make venv` and a wheel install do),
    # not compiled again in every measured command where PYTHONDONTWRITEBYTECODE is set
    subprocess.run([PY, "-m", "compileall", "-q", "cli.py", "core", "pipelines", "transforms"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    started = time.monotonic()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="cfysnap-bench-") as tmp:
        work = Path(tmp)
        spec = replace(ManagerSpec.sized(Version.V3_3, args.docs, seed=5), keys_dir=str(work / "keys"))
        print(f"bench: a 3.3 manager of {document_count(spec):,} documents; "
              f"{platform.node()}, {os.cpu_count()} cores", flush=True)
        if args.memory:
            url = start_server("elasticsearch-1.7", args.port, cache)
            try:
                results = bench_memory(url, work, args.docs)
            finally:
                stop_server(args.port)
        for n, kind in enumerate([] if args.memory else [s for s in args.servers.split(",") if s]):
            port = args.port + n
            url = start_server(kind, port, cache)
            try:
                with SearchClient(url, timeout=300) as client:
                    load_manager(spec, client, work / "manager")
                name = f"{kind.replace('elasticsearch', 'Elasticsearch')} ({es_version(url)})"
                sub = work / kind
                sub.mkdir()
                if "create" in jobs:
                    results += bench_create(url, name, work / "manager", sub, document_count(spec) - 3, args.rounds)
                if "restore" in jobs:
                    archive = sub / "cfysnap.zip"
                    if not archive.exists():
                        subprocess.run([*CLI, "create", "--es", url, "--fs-root", str(work / "manager"),
                                        "--output", str(archive)], check=True, capture_output=True)
                    with SnapshotReader(archive) as snap:
                        restored = sum(1 for _ in snap.iter_lines())
                    results += bench_restore(url, name, archive, sub, restored, args.rounds)
            finally:
                stop_server(port)
        if "convert" in jobs and not args.memory:
            results += bench_convert(work, args.docs, args.rounds)
    summary = memory_ratios(results) if args.memory else ratios(results)
    print()
    print(table(results))
    print()
    for key, value in summary.items():
        print(f"- {key}: {value:.0f}" if key.endswith("MB") else f"- {key}: {value:.2f}x")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "documents": args.docs,
        "machine": {"node": platform.node(), "cores": os.cpu_count()},
        "seconds": round(time.monotonic() - started, 1),
        "results": [{**asdict(r), "documents_per_second": round(r.rate, 1)} for r in results],
        "ratios": {k: round(v, 3) for k, v in summary.items()},
        "table": table(results),
    }, indent=2) + "\n")
    print(f"\nwrote {args.output} ({time.monotonic() - started:.0f} s in all)")
    return 0


def es_version(url: str) -> str:
    with SearchClient(url) as client:
        return ".".join(map(str, client.info().version))


if __name__ == "__main__":
    sys.exit(main())
