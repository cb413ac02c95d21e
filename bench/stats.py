"""Summaries of repeated measurements: a median and its spread, never a single lucky round."""

import math
import statistics
from collections.abc import Sequence
from typing import Any

Summary = dict[str, Any]


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of values sorted ascending (fraction 0.99 for p99).

    Nearest rank, not interpolation: a p99.9 of 10 000 samples is then a latency that one request
    really had, which is what a tail percentile is meant to show.
    """
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "p99.9": percentile(ordered, 0.999),
        "max": float(ordered[-1]) if ordered else math.nan,
        "count": float(len(ordered)),
    }


def summarize(values: Sequence[float]) -> Summary:
    """Median and spread (min-max and the quartiles) over rounds; NaN rounds are left out."""
    kept = sorted(value for value in values if not math.isnan(value))
    if not kept:
        return {
            "median": math.nan,
            "min": math.nan,
            "max": math.nan,
            "q1": math.nan,
            "q3": math.nan,
            "rounds": 0,
            "values": list(values),
        }
    if len(kept) >= 2:
        q1, _, q3 = statistics.quantiles(kept, n=4, method="inclusive")
    else:
        q1 = q3 = kept[0]
    return {
        "median": statistics.median(kept),
        "min": kept[0],
        "max": kept[-1],
        "q1": q1,
        "q3": q3,
        "rounds": len(kept),
        "values": list(values),
    }


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not math.isnan(denominator) else math.nan
