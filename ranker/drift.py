"""Feature drift: the served feature rows against the training distribution of the model.

At training, each feature's decile edges and the share of rows in each bin are stored with the
model version (`feature_bins.json`). The reference rows are what the model itself would have
shown: its top `REFERENCE_TOP_K` per training posting by its own scores, because the decision log
holds the top-k rows a ranking returned, not every applicant, and a comparison must be of like
with like. In service, the most recent served rows of that version (`Settings.drift_window`,
read from the decision log) are binned on the same edges and compared per feature with the
population stability index, PSI = sum((served - train) * ln(served / train)) over bins. Rule of
thumb: below 0.1 stable, 0.1-0.25 worth a look, above 0.25 a shift: time to retrain or to find
what changed upstream. PSI is biased upwards on few rows (about (bins - 1) / rows on top of the
true value), so figures on fewer than `MIN_ROWS` rows are reported but not judged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ranker.atomic import write_text_atomic
from ranker.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from ranker.config import Settings
    from ranker.metrics import ServiceMetrics

BINS_FILE = "feature_bins.json"
BINS = 10
REFERENCE_TOP_K = 10
MIN_ROWS = 500
PSI_WATCH = 0.1
PSI_SHIFT = 0.25
_FLOOR = 1e-4
"""Smallest share a bin counts with: an empty bin would make the logarithm infinite."""


@dataclass(frozen=True)
class FeatureBins:
    """One feature's training distribution: inner bin edges and the share of rows per bin."""

    name: str
    edges: tuple[float, ...]
    shares: tuple[float, ...]

    def shares_of(self, values: np.ndarray) -> np.ndarray:
        """The share of `values` in each of this feature's bins."""
        idx = np.searchsorted(np.asarray(self.edges, dtype=np.float64), values, side="right")
        counts = np.bincount(idx, minlength=len(self.shares)).astype(np.float64)
        return counts / max(1, len(values))


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's PSI against training, on `rows` served rows."""

    name: str
    psi: float
    rows: int

    @property
    def verdict(self) -> str:
        if self.rows < MIN_ROWS:
            return "too few rows"
        if self.psi > PSI_SHIFT:
            return "shift"
        return "watch" if self.psi > PSI_WATCH else "stable"


def fit_bins(names: Sequence[str], rows: np.ndarray, bins: int = BINS) -> list[FeatureBins]:
    """Quantile bins of each column of `rows` (ties merged, so a flag has two bins, not ten)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(names) or len(rows) == 0:
        raise InvalidInput(f"need rows of {len(names)} features to fit drift bins")
    out = []
    for j, name in enumerate(names):
        col = rows[:, j]
        qs = np.quantile(col, np.linspace(0, 1, bins + 1)[1:-1])
        edges = tuple(float(e) for e in np.unique(qs))
        spec = FeatureBins(name, edges, (0.0,) * (len(edges) + 1))
        out.append(FeatureBins(name, edges, tuple(float(s) for s in spec.shares_of(col))))
    return out


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """The population stability index of two share vectors over the same bins."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), _FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def drift(
    reference: Sequence[FeatureBins], names: Sequence[str], rows: np.ndarray
) -> list[FeatureDrift]:
    """PSI per reference feature of the served `rows` (columns named by `names`)."""
    column = {n: j for j, n in enumerate(names)}
    rows = np.asarray(rows, dtype=np.float64)
    out = []
    for spec in reference:
        j = column.get(spec.name)
        if j is None or len(rows) == 0:
            out.append(FeatureDrift(spec.name, math.nan, 0))
            continue
        out.append(
            FeatureDrift(
                spec.name, psi(np.array(spec.shares), spec.shares_of(rows[:, j])), len(rows)
            )
        )
    return out


def reference_rows(
    x: np.ndarray, group: np.ndarray, scores: np.ndarray, k: int = REFERENCE_TOP_K
) -> np.ndarray:
    """Each query's top `k` rows by `scores` (rows of a query are contiguous, `group` sizes)."""
    picked: list[np.ndarray] = []
    start = 0
    for size in np.asarray(group, dtype=np.int64):
        order = np.argsort(-scores[start : start + size], kind="stable")[:k]
        picked.append(x[start + order])
        start += int(size)
    return np.concatenate(picked) if picked else np.zeros((0, x.shape[1]), dtype=x.dtype)


def write_bins(folder: Path, bins: Sequence[FeatureBins], rows: int) -> Path:
    """Store a version's training distribution next to its model."""
    path = Path(folder) / BINS_FILE
    doc: dict[str, Any] = {
        "reference": f"top {REFERENCE_TOP_K} training rows per posting by the model's scores",
        "rows": rows,
        "features": [{"name": b.name, "edges": b.edges, "shares": b.shares} for b in bins],
    }
    write_text_atomic(path, json.dumps(doc, indent=1))
    return path


def record_training_distribution(
    folder: Path, names: Sequence[str], x: np.ndarray, group: np.ndarray, scores: np.ndarray
) -> Path:
    """What training calls once per registered version: reference rows, binned, stored."""
    rows = reference_rows(x, group, scores)
    return write_bins(folder, fit_bins(names, rows), len(rows))


def read_bins(folder: Path) -> list[FeatureBins]:
    """A version's training distribution; NotFound for a version trained before drift existed."""
    path = Path(folder) / BINS_FILE
    try:
        doc: Mapping[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(
            f"{folder.name} has no {BINS_FILE} (trained before drift was recorded); retrain "
            "with `ranker train` to watch its drift"
        ) from None
    return [FeatureBins(f["name"], tuple(f["edges"]), tuple(f["shares"])) for f in doc["features"]]


def served_drift(settings: Settings, version: str, window: int) -> list[FeatureDrift]:
    """PSI per feature of `version`'s last `window` served rows (decision log, read-only)."""
    from ranker.store_api import open_decision_reader

    reference = read_bins(settings.resolved_registry_dir / version)
    with open_decision_reader(settings) as reader:
        names, rows = reader.feature_rows(version, window)
    return drift(reference, names, rows)


class DriftWatch:
    """Recomputes the drift gauges of the model in service (`ranker_feature_psi`), off the
    request path: the server calls `refresh` on its upkeep thread every
    `Settings.drift_interval_seconds`."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self._settings = settings
        self._registry_dir = settings.resolved_registry_dir
        self._metrics = metrics

    def refresh(self, version: str | None) -> list[FeatureDrift]:
        """Set the gauges for `version` (none for a fallback or a version without bins)."""
        self._metrics.feature_psi.clear()
        self._metrics.drift_rows.set(0)
        if version is None or not (self._registry_dir / version / BINS_FILE).is_file():
            return []
        from ranker.store_api import store_exists

        if not store_exists(self._settings):
            return []
        report = served_drift(self._settings, version, self._settings.drift_window)
        for d in report:
            if not math.isnan(d.psi):
                self._metrics.feature_psi.labels(feature=d.name).set(d.psi)
        self._metrics.drift_rows.set(max((d.rows for d in report), default=0))
        return report
