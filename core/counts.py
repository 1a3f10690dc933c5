"""Reading a finished pipeline's Beam counters, one way for every job.

A counter's value is its committed value where the runner reports one, else its attempted value
(portable runners may report only attempted); counters of the same name are summed over steps.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from apache_beam.metrics.metric import MetricsFilter

__all__ = ["counter_values"]


def counter_values(result: Any, namespace: str) -> dict[str, int]:
    """{counter name: value} of the counters in `namespace` of a `PipelineResult`."""
    query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    totals: Counter[str] = Counter()
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] += int(value or 0)
    return dict(totals)
