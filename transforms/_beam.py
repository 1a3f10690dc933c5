"""Three Beam idioms the transform modules here use, written once.

- `in_global_window(value)`: what a DoFn yields from `finish_bundle` (which has no element to
  take a window from): the value in the global window, at the minimum timestamp.
- `RunOnce(fn)`: `fn` called once, after every input PCollection is complete, with each input
  as a list side input: `process(b"", *lists)` (Impulse's element, to be ignored). For the
  steps that assemble one artefact from many small descriptions (an archive from shard infos,
  a dataset from part files, agents.json from fragment files). Only the descriptions are
  materialised, never the data.
- `Values(values)`: a few small values known when the graph is built, as a PCollection: one
  Impulse and one FlatMap, where `beam.Create` is four transforms (a create's five Creates were
  20 of its 32) and Beam's graph, runner set-up and bundles cost per transform.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

__all__ = ["in_global_window", "RunOnce", "Values"]


def in_global_window(value: Any) -> WindowedValue:
    return WindowedValue(value, MIN_TIMESTAMP, (GlobalWindow(),))


class RunOnce(beam.PTransform):
    """(PCollection, ...) → the outputs of one `fn.process(b"", *inputs as lists)` call."""

    def __init__(self, fn: beam.DoFn) -> None:
        super().__init__()
        self._fn = fn

    def expand(self, inputs: tuple[beam.PCollection, ...]) -> beam.PCollection:
        return (
            inputs[0].pipeline
            | "Once" >> beam.Impulse()
            | "Run" >> beam.ParDo(self._fn, *(beam.pvalue.AsList(p) for p in inputs))
        )


class Values(beam.PTransform):
    """PBegin → `values` (pickled with the graph: keep them few and small)."""

    def __init__(self, values: Any) -> None:
        super().__init__()
        self._values = list(values)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        values = self._values
        return pbegin | "Impulse" >> beam.Impulse() | "Values" >> beam.FlatMap(lambda _: values)
