"""Small statistics helpers: medians, spread, paired ratios (no timing judgement here)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, in percent."""
        if not self.n or not self.median:
            return float("nan")
        return 100.0 * (self.high - self.low) / self.median


def summarize(values: list[float]) -> Summary:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return Summary(float("nan"), float("nan"), float("nan"), 0)
    return Summary(statistics.median(vals), min(vals), max(vals), len(vals))


def paired_ratio(values: list[float], baseline: list[float]) -> Summary:
    """Per-round ratios value/baseline (both measured in the same round), summarized."""
    ratios = [v / b for v, b in zip(values, baseline) if v is not None and b]
    return summarize(ratios)


def percentile(values: list[float], q: float) -> float:
    vals = sorted(values)
    if not vals:
        return float("nan")
    k = min(len(vals) - 1, max(0, math.ceil(q * len(vals)) - 1))
    return vals[k]
