"""Beam pipeline options as cfysnap uses them.

Everything after `--` on the command line is handed to Beam untouched. When no runner is named,
cfysnap runs on the embedded FnApiRunner: Beam's `DirectRunner` first tries the Prism runner,
which downloads a binary on every run and fails on a machine without internet, so an explicit
`--runner=DirectRunner` is also mapped to the FnApiRunner (the same in-process engine the
DirectRunner falls back to for batch pipelines). `--direct_num_workers` and
`--direct_running_mode` work as documented for the DirectRunner.
"""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from collections.abc import Sequence
from typing import Any, TypeVar

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

__all__ = [
    "beam_options",
    "CfysnapOptions",
    "spreads_work",
    "DEFAULT_RUNNER",
    "FORKING_RUNNER",
    "STATE_SAMPLING_PERIOD_MS",
    "GC_THRESHOLD",
]

DEFAULT_RUNNER = "FnApiRunner"
FORKING_RUNNER = "core.workers.ForkingFnApiRunner"
"""The FnApiRunner for `--direct_running_mode=multi_processing`: its worker processes are forked
with Beam already imported instead of started afresh (see `core.workers`)."""
STATE_SAMPLING_PERIOD_MS = 20
"""The longest sleep of the in-process SDK worker's state-sampler thread (Beam's default: 200).

Every bundle ends by joining that thread, which sleeps in periods growing from 2 ms by 1.2× up to
the limit: the bundle waits out the current sleep, about a sixth of the bundle's length, up to
200 ms. Profiled on a 100k-document create (9 bundles): 0.17 s of waiting, 9% of the job. With
20 ms a bundle waits at most 20 ms; the sampler only updates per-step timing counters, which
cfysnap does not use. Set for this process's workers only (a Flink or Dataflow worker keeps its
own default)."""
GC_THRESHOLD = (10_000, 10, 10)
"""The cyclic collector's thresholds from the first embedded-runner pipeline on, for the rest of
the process (Python's: 700, 10, 10).

A job allocates tens of thousands of short-lived objects a page (hits, tuples, bulk entries),
which reference counting frees; with the default, the collector ran ~570 times in a 100k-document
restore and its full passes walked all of Beam's modules each time: 0.3–0.45 s of a 6 s job,
measured with `gc.callbacks`. With these thresholds and Beam's modules frozen (`gc.freeze`,
once, when the first pipeline's options are made), 0.07 s."""
_LOG = logging.getLogger(__name__)
_collector_tuned = False


def _tune_collector() -> None:
    """`GC_THRESHOLD`, and everything loaded so far (Beam, cfysnap) moved out of the collector's
    sight (`gc.freeze`); done once per process, so the garbage of later pipelines (a test
    suite's) is collected as usual. Not collected first (a full pass costs what the freeze
    saves): what cyclic garbage exists at that moment, a few import-time cycles, is kept."""
    global _collector_tuned
    if _collector_tuned:
        return
    _collector_tuned = True
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _remember_dofn_specs() -> None:
    """Beam's `userstate.get_dofn_specs(dofn)` answered once per DoFn instance.

    It looks for state and timer parameters in every method of the DoFn (`dir(dofn)`, some 30
    methods with Beam's own, an `inspect.signature` each), and Beam asks it of each DoFn about
    six times: when the ParDo is made, when the graph is translated (twice), when the runner
    checks for keyed input, and in the worker's bundle processor. A create's graph asked it 78
    times, 2,408 signatures, 0.35 s of the 0.8 s from Beam's import to the first bundle under
    cProfile. What it finds comes from the DoFn's methods, which do not change once it is made;
    each caller gets its own copies of the two sets. A DoFn that cannot be weakly referenced or
    hashed is inspected every time, as before. Done once per process, for any runner (the graph
    is built here whatever runs it)."""
    from apache_beam.transforms import userstate

    inspect_specs = userstate.get_dofn_specs
    if getattr(inspect_specs, "remembers", False):
        return
    known: weakref.WeakKeyDictionary[Any, tuple[frozenset[Any], frozenset[Any]]]
    known = weakref.WeakKeyDictionary()
    lock = threading.Lock()

    def get_dofn_specs(dofn: Any) -> tuple[set[Any], set[Any]]:
        try:
            with lock:
                found = known.get(dofn)
        except TypeError:  # not hashable or not weakly referenceable
            return inspect_specs(dofn)
        if found is None:
            states, timers = inspect_specs(dofn)
            found = (frozenset(states), frozenset(timers))
            with lock:
                known[dofn] = found
        return set(found[0]), set(found[1])

    get_dofn_specs.remembers = True  # type: ignore[attr-defined]
    userstate.get_dofn_specs = get_dofn_specs


def _shorten_state_sampling() -> None:
    """`STATE_SAMPLING_PERIOD_MS` for the bundle processors this process makes.

    Beam takes no option for it (`bundle_processor` builds `StateSampler(prefix, counters)` with
    the default period), so the default of that one constructor argument is replaced here."""
    from apache_beam.runners.worker import statesampler

    init = statesampler.StateSampler.__init__
    if init.__defaults__ and init.__defaults__[-1] != STATE_SAMPLING_PERIOD_MS:
        init.__defaults__ = (*init.__defaults__[:-1], STATE_SAMPLING_PERIOD_MS)


_View = TypeVar("_View", bound=PipelineOptions)


class CfysnapOptions(PipelineOptions):
    """Beam's PipelineOptions, each view (`view_as`) made once per options class.

    Beam asks a pipeline's options for a view at every transform it applies and again while it
    translates and runs the graph; every new view builds an argparse parser of its class's
    options and parses all the flags again. A create asked for 170 views while building its
    graph: the graph took 0.40-0.42 s by hand with new views, 0.23-0.26 s with these. A view
    holds nothing of its own: its values live in the `_all_options` dict it shares with the
    options it came from, and the flags it parses never change, so the view made first answers
    every later call alike. The views are kept in the instance's `__dict__` but never pickled
    or copied (`__getstate__`): a copy, such as the one `beam.Pipeline` keeps, makes its own
    over its own values. A view's own `view_as` is Beam's.
    """

    def view_as(self, cls: type[_View]) -> _View:
        views: dict[type, Any] | None = self.__dict__.get("_views")
        if views is None:
            views = {}
            object.__setattr__(self, "_views", views)  # Beam's __setattr__ takes only options
        view = views.get(cls)
        if view is None or view._all_options is not self._all_options:
            view = views[cls] = super().view_as(cls)
        return view

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if "_views" in state:
            state = {k: v for k, v in state.items() if k != "_views"}
        return state


def beam_options(args: Sequence[str] = ()) -> PipelineOptions:
    """PipelineOptions from Beam command-line flags, with cfysnap's runner default applied."""
    options = CfysnapOptions(list(args))
    _remember_dofn_specs()
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner", "SwitchingDirectRunner"):
        if standard.runner:
            _LOG.info("using FnApiRunner for %s (no Prism download)", standard.runner)
        standard.runner = DEFAULT_RUNNER
    if standard.runner == DEFAULT_RUNNER:
        _shorten_state_sampling()
        _tune_collector()
        if options.view_as(DirectOptions).direct_running_mode == "multi_processing":
            standard.runner = FORKING_RUNNER
    return options


def spreads_work(options: PipelineOptions) -> bool:
    """Whether the pipeline has more than one worker to spread work units over.

    False only for the embedded FnApiRunner with one worker (`--direct_num_workers` 1, the
    default; 0 means one per core): there a `Reshuffle` spreads nothing, but it is a stage
    boundary, and every step after it waits until the step before it has finished for the whole
    input (a restore's first bulk request waited for all of es_data to be staged). Any other
    runner, or more direct workers, gets the Reshuffle. The transforms that reshuffle ask it of
    their pipeline's options when they expand.
    """
    if options.view_as(StandardOptions).runner not in (DEFAULT_RUNNER, FORKING_RUNNER):
        return True
    return options.view_as(DirectOptions).direct_num_workers != 1
