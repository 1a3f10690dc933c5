"""What `core.options.beam_options` changes in the launching process for the embedded runner,
and only for it (each case in a fresh interpreter: these are process-wide settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_PROBE = """
import gc, json, sys
sys.path.insert(0, sys.argv[1])
from apache_beam.runners.worker import statesampler
from core.options import beam_options
before = {"threshold": list(gc.get_threshold()), "frozen": gc.get_freeze_count()}
options = beam_options(sys.argv[2:])
frozen = gc.get_freeze_count()
beam_options(sys.argv[2:])  # a second pipeline's options: nothing frozen again
print(json.dumps({
    "before": before,
    "threshold": list(gc.get_threshold()),
    "frozen": frozen,
    "frozen_again": gc.get_freeze_count(),
    "sampling_ms": statesampler.StateSampler.__init__.__defaults__[-1],
}))
"""


def probe(*beam_args: str) -> dict:
    run = subprocess.run([sys.executable, "-c", _PROBE, str(REPO), *beam_args],
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [(), ("--runner=DirectRunner",), ("--direct_num_workers=2",)])
def test_the_embedded_runner_gets_the_tuned_collector_and_sampler(args: tuple[str, ...]) -> None:
    from core.options import GC_THRESHOLD, STATE_SAMPLING_PERIOD_MS

    out = probe(*args)
    assert out["before"] == {"threshold": [700, 10, 10], "frozen": 0}
    assert out["threshold"] == list(GC_THRESHOLD)
    assert out["frozen"] > 10_000  # Beam's modules and everything else loaded by then
    assert out["frozen_again"] == out["frozen"]  # frozen once per process only
    assert out["sampling_ms"] == STATE_SAMPLING_PERIOD_MS


def test_another_runner_leaves_the_process_as_it_was() -> None:
    out = probe("--runner=PortableRunner", "--job_endpoint=localhost:1")
    assert out["threshold"] == [700, 10, 10] and out["frozen"] == 0
    assert out["sampling_ms"] == 200  # Beam's own default


def test_beams_worker_processes_get_the_same_thresholds() -> None:
    """`core/worker_site/sitecustomize.py` (on the path of Beam's worker processes) sets what
    `GC_THRESHOLD` says."""
    from core.options import GC_THRESHOLD

    site = REPO / "core" / "worker_site"
    run = subprocess.run([sys.executable, "-c", "import gc, json; print(json.dumps(gc.get_threshold()))"],
                         capture_output=True, text=True, check=True, timeout=60,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert json.loads(run.stdout) == list(GC_THRESHOLD)


def test_a_view_is_made_once_and_shares_its_values_with_every_other() -> None:
    """`CfysnapOptions.view_as` hands back the view it made first: values set through any view
    are seen through every other and through a later call, and a deep copy (what
    `beam.Pipeline` keeps) has views of its own, over its own values."""
    import copy

    from apache_beam.options.pipeline_options import (
        DebugOptions,
        DirectOptions,
        StandardOptions,
        TypeOptions,
    )

    from core.options import CfysnapOptions, beam_options

    options = beam_options(["--direct_num_workers=3", "--experiments=a"])
    assert isinstance(options, CfysnapOptions)
    standard = options.view_as(StandardOptions)
    assert options.view_as(StandardOptions) is standard
    assert options.view_as(DirectOptions).direct_num_workers == 3
    assert options.view_as(DebugOptions).experiments == ["a"]
    options.view_as(TypeOptions).pipeline_type_check = False
    assert options.view_as(TypeOptions).pipeline_type_check is False
    assert options.get_all_options()["pipeline_type_check"] is False
    standard.streaming = True
    assert options.view_as(StandardOptions).streaming is True

    copied = copy.deepcopy(options)
    copied.view_as(StandardOptions).streaming = False
    copied.view_as(DirectOptions).direct_num_workers = 5
    assert copied.view_as(StandardOptions) is not standard
    assert (copied.view_as(StandardOptions).streaming, options.view_as(StandardOptions).streaming) == (False, True)
    assert (copied.view_as(DirectOptions).direct_num_workers, options.view_as(DirectOptions).direct_num_workers) == (5, 3)
    assert options.get_all_options()["direct_num_workers"] == 3
    assert copied.get_all_options()["direct_num_workers"] == 5


def test_the_views_are_neither_pickled_nor_copied() -> None:
    """The cached views stay with their options object: pickling (what Beam's `__getstate__`
    gives) leaves them out, so options viewed as a class defined anywhere still pickle, and
    the copy makes views of its own with the same values."""
    import pickle

    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    from core.options import beam_options

    class _LocalOptions(PipelineOptions):
        @classmethod
        def _add_argparse_args(cls, parser) -> None:  # noqa: ANN001
            parser.add_argument("--local_flag", default="x")

    options = beam_options(["--direct_num_workers=3", "--local_flag=y"])
    assert options.view_as(_LocalOptions).local_flag == "y"
    restored = pickle.loads(pickle.dumps(options))
    assert "_views" not in restored.__dict__
    assert restored.view_as(DirectOptions).direct_num_workers == 3
    assert restored.get_all_options()["local_flag"] == "y"
    assert "_views" in options.__dict__  # the original keeps its own


_SPECS_PROBE = """
import json, sys
from collections import Counter
sys.path.insert(0, sys.argv[1])
import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.transforms import userstate
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from core.options import beam_options

inspected = []
real = userstate.get_dofn_specs
def counting(dofn):
    inspected.append((type(dofn).__name__, id(dofn)))
    return real(dofn)
userstate.get_dofn_specs = counting
beam_options([])
beam_options([])  # once per process: not wrapped twice


class Stateful(beam.DoFn):
    BAG = BagStateSpec("bag", VarIntCoder())
    TIMER = TimerSpec("t", beam.TimeDomain.WATERMARK)

    def process(self, kv, bag=beam.DoFn.StateParam(BAG), t=beam.DoFn.TimerParam(TIMER)):
        bag.add(kv[1])
        yield kv

    @on_timer(TIMER)
    def fire(self):
        return []


class Unhashable(beam.DoFn):
    __hash__ = None

    def process(self, x):
        yield x


stateful, plain = Stateful(), Unhashable()
first = userstate.get_dofn_specs(stateful)
first[0].clear()  # the caller's own copy
again = userstate.get_dofn_specs(stateful)
userstate.get_dofn_specs(plain); userstate.get_dofn_specs(plain)
with beam.Pipeline(options=beam_options([])) as p:
    _ = p | beam.Create([("k", 1), ("k", 2)]) | beam.ParDo(Stateful())
print(json.dumps({
    "again": [sorted(s.name for s in again[0]), sorted(s.name for s in again[1])],
    "stateful": userstate.is_stateful_dofn(stateful),
    "stateful_instances": sorted(
        n for n in Counter(i for name, i in inspected if name == "Stateful").values()),
    "unhashable": sum(1 for name, _ in inspected if name == "Unhashable"),
}))
"""


def test_a_dofns_state_and_timer_specs_are_found_once_and_handed_out_as_copies() -> None:
    """`beam_options` makes Beam inspect a DoFn's methods for state and timers once per DoFn:
    asked again, it answers the same specs (its own copies each time); a DoFn that cannot be
    hashed is inspected each time; a stateful DoFn still runs as one."""
    out = subprocess.run(
        [sys.executable, "-c", _SPECS_PROBE, str(REPO)], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["again"] == [["bag"], ["ts-t"]]  # Beam names a timer "ts-<name>"
    assert result["stateful"] is True
    # each Stateful instance (ours, the ParDo's, the worker's copies) inspected once, though
    # Beam asks about six times; the unhashable one each of the two times it was asked
    assert len(result["stateful_instances"]) >= 2  # ours and the ParDo's, not one per class
    assert set(result["stateful_instances"]) == {1}
    assert result["unhashable"] == 2
