"""Small helpers shared by the bench sections: percentiles, ratios and Markdown tables."""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Percentiles of a set of timings, in milliseconds."""

    n: int
    p50: float
    p95: float
    p99: float
    mean: float

    @classmethod
    def of(cls, ms: Sequence[float] | np.ndarray) -> Summary:
        a = np.asarray(ms, dtype=np.float64)
        if a.size == 0:
            return cls(0, float("nan"), float("nan"), float("nan"), float("nan"))
        p50, p95, p99 = np.percentile(a, [50, 95, 99])
        return cls(int(a.size), float(p50), float(p95), float(p99), float(a.mean()))


def ms(value: float) -> str:
    """A duration in milliseconds with sensible precision."""
    if not np.isfinite(value):
        return "–"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(baseline: float, ours: float) -> str:
    """How many times faster ours is than the baseline (baseline time / our time)."""
    if not (np.isfinite(baseline) and np.isfinite(ours)) or ours <= 0:
        return "–"
    return f"{baseline / ours:.2f}×"


def rate_ratio(ours: float, baseline: float) -> str:
    """How many times the baseline's rate ours reaches (our rate / baseline rate)."""
    if not (np.isfinite(baseline) and np.isfinite(ours)) or baseline <= 0:
        return "–"
    return f"{ours / baseline:.2f}×"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; the first column is left-aligned, the others right-aligned."""
    # Hand-written: a dozen lines, where a table library would be one more pinned dependency.
    align = [":--"] + ["--:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB"


@contextmanager
def timed_without_gc() -> Iterator[None]:
    """Timed calls without this process's cycle collector, as `timeit` times them: at 10^6 the
    bench holds the baseline's large structures, and a full collection walking them paused a
    timed call (service or baseline alike) by ~100 ms. Collected once before; cycles made
    meanwhile wait until the end (reference counting frees everything else at once)."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
