"""Bias audit in the form NYC Local Law 144 asks for: selection and scoring rates, impact ratios, CIs.

The unit is a row: one candidate in one ranking (or one applicant of one posting, for the
historical outcomes). Rankings are the sampling unit of the confidence intervals: a posting's rows
are correlated (the same job, the same competition for the top k), so the bootstrap resamples
whole rankings, not rows.

Definitions (6 RCNY §5-300/5-301, the rules of LL144):

- **selection rate** of a category: selected rows ÷ rows of the category, where a row is
  selected when the candidate is in the top k of its ranking (historical outcomes: when the
  applicant reached the stage, among those who reached the stage before);
- **scoring rate**: share of the category's rows scoring above the median score of the whole
  sample the tool scored (strictly above);
- **impact ratio**: a category's rate ÷ the rate of the most selected category.
  Rows whose category is unknown are counted and shown but take no part in the ratios, and a
  category under 2% of the sample's rows is excluded from the impact-ratio calculation (it
  neither gets a ratio nor can be the reference); it stays in the tables with the reason.

Each rate and impact ratio carries a percentile bootstrap 95% interval (rankings resampled with
replacement, the reference category re-chosen in every resample, seeded). A ratio below the
threshold (0.8, the EEOC four-fifths rule) is flagged `below`; when the interval's upper bound is
below it too the flag is `significant`, and that is the one tests and alerts act on. Because
every category of a dimension is compared with the highest one at once, `significant` uses the
Bonferroni-widened interval (level 1 - 0.05/m for m compared categories); the report shows the
95% one.

The smallest detectable deviation: for each category against the reference, the impact ratio
that a two-sided two-proportion z-test (alpha 0.05) would detect with power 0.8 at the sample's
size (Fleiss' normal approximation without continuity correction, solved for the category's
rate by bisection). Because rows cluster in rankings, each category's size is replaced by its
effective size n ÷ deff, where the design effect deff is the bootstrap variance of its rate over
the binomial variance p(1 - p)/n (floored at 1). A ratio above the detectable one cannot be told
from 1 by this sample: "no flag" then means "not detected", not "no disparity".
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from ranker.domain import Outcome, Stage
from ranker.errors import InvalidInput

UNKNOWN = "unknown"
"""The category of a row whose attribute is missing, empty or declined."""

DIMENSIONS: tuple[str, ...] = ("sex", "race_ethnicity")
"""Protected attributes audited; their intersection is audited too."""

_UNKNOWN_VALUES = frozenset(
    {"", "unknown", "not disclosed", "declined", "prefer not to say", "prefer_not_to_say", "n/a"}
)

PIPELINE: tuple[Stage, ...] = (
    Stage.APPLIED,
    Stage.SCREENED,
    Stage.INTERVIEWED,
    Stage.OFFERED,
    Stage.HIRED,
)
"""Stages in hiring order; reaching one implies having passed every earlier one."""

Flag = Literal["", "below", "significant"]
Frame = Literal["historical", "model", "served"]


@dataclass(frozen=True)
class AuditConfig:
    """The audit's knobs; the defaults are LL144's and the four-fifths rule's."""

    k: int = 10
    """A candidate is selected when in the top k of a ranking."""
    threshold: float = 0.8
    """Impact ratios below this are flagged."""
    min_share: float = 0.02
    """Categories under this share of the sample's rows get no impact ratio (0 keeps all)."""
    n_boot: int = 1000
    seed: int = 0
    confidence: float = 0.95
    alpha: float = 0.05
    """Significance level of the detectable-deviation calculation (two-sided)."""
    power: float = 0.8

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InvalidInput(f"k must be at least 1, got {self.k}")
        if not 0 < self.threshold <= 1:
            raise InvalidInput(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0 <= self.min_share < 1:
            raise InvalidInput(f"min_share must be in [0, 1), got {self.min_share}")
        if self.n_boot < 10:
            raise InvalidInput(f"n_boot must be at least 10 resamples, got {self.n_boot}")
        for name in ("confidence", "alpha", "power"):
            if not 0 < getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be in (0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class AuditMeta:
    """What was audited, when, and from which data; shown at the top of the report."""

    frame: Frame
    data_source: str
    """E.g. "historical outcomes", "held-out postings, pool view", "served rankings"."""
    audit_date: str = field(default_factory=lambda: datetime.now(UTC).date().isoformat())
    period: tuple[str, str] | None = None
    """First and last date of the data (ISO), when known."""
    model_version: str | None = None
    distribution_date: str = "unknown"
    """When the tool was first put in service (first promotion in the registry)."""
    version_distribution_date: str | None = None
    """When `model_version` was first promoted, if it was."""


@dataclass(frozen=True)
class MetricInfo:
    """One rate the audit reports per category."""

    key: str
    label: str
    description: str


@dataclass(frozen=True)
class RateResult:
    """One rate of one category, its impact ratio against the reference category, and flags."""

    successes: int
    eligible: int
    rate: float | None
    rate_ci: tuple[float, float] | None
    impact_ratio: float | None
    """None for an excluded category, or when the reference rate is 0."""
    impact_ratio_ci: tuple[float, float] | None
    detectable_ratio: float | None
    """Impact ratio detectable with the configured power; None for the reference category,
    an excluded one, or when even a ratio of 0 would not be detected."""
    flag: Flag


@dataclass(frozen=True)
class CategoryResult:
    """One category of one dimension: its size, whether it takes part in ratios, its rates."""

    name: str
    rows: int
    candidates: int
    share: float
    """Rows of the category ÷ rows of the sample (unknown rows included)."""
    excluded: str | None
    """Why the category has no impact ratio, or None."""
    rates: Mapping[str, RateResult]


@dataclass(frozen=True)
class DimensionResult:
    """One protected dimension (sex, race/ethnicity or their intersection)."""

    name: str
    categories: tuple[CategoryResult, ...]
    unknown_rows: int
    unknown_candidates: int
    reference: Mapping[str, str | None]
    """Per metric, the category with the highest rate (the impact ratios' denominator)."""


@dataclass(frozen=True)
class FlagEntry:
    """An impact ratio below the threshold."""

    dimension: str
    category: str
    metric: str
    impact_ratio: float
    impact_ratio_ci: tuple[float, float] | None
    significant: bool


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _fmt_ci(ci: tuple[float, float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


@dataclass(frozen=True)
class AuditResult:
    """The whole audit; `to_json()` for machines, `to_markdown()` for the published summary."""

    meta: AuditMeta
    config: AuditConfig
    metrics: tuple[MetricInfo, ...]
    dimensions: tuple[DimensionResult, ...]
    rankings: int
    rows: int
    candidates: int
    notes: tuple[str, ...] = ()

    def flags(self) -> list[FlagEntry]:
        """Every impact ratio below the threshold, significant ones first."""
        found: list[FlagEntry] = []
        for dim in self.dimensions:
            for cat in dim.categories:
                for key, r in cat.rates.items():
                    if r.flag and r.impact_ratio is not None:
                        found.append(
                            FlagEntry(
                                dim.name,
                                cat.name,
                                key,
                                r.impact_ratio,
                                r.impact_ratio_ci,
                                r.flag == "significant",
                            )
                        )
        return sorted(found, key=lambda f: (not f.significant, f.impact_ratio))

    def significant_flags(self) -> list[FlagEntry]:
        return [f for f in self.flags() if f.significant]

    def category(self, dimension: str, name: str) -> CategoryResult:
        """One category's result; a `KeyError` naming the known ones when it is not there."""
        for dim in self.dimensions:
            if dim.name == dimension:
                for cat in dim.categories:
                    if cat.name == name:
                        return cat
                known = ", ".join(c.name for c in dim.categories)
                raise KeyError(f"no category {name!r} in {dimension}; known: {known}")
        raise KeyError(f"no dimension {dimension!r}; known: {[d.name for d in self.dimensions]}")

    def as_dict(self) -> dict[str, Any]:
        def rate(r: RateResult) -> dict[str, Any]:
            return {
                "successes": r.successes,
                "eligible": r.eligible,
                "rate": _r(r.rate),
                "rate_ci": None if r.rate_ci is None else [_r(v) for v in r.rate_ci],
                "impact_ratio": _r(r.impact_ratio),
                "impact_ratio_ci": None
                if r.impact_ratio_ci is None
                else [_r(v) for v in r.impact_ratio_ci],
                "detectable_ratio": _r(r.detectable_ratio),
                "flag": r.flag,
            }

        return {
            "meta": asdict(self.meta),
            "config": asdict(self.config),
            "sample": {"rankings": self.rankings, "rows": self.rows, "candidates": self.candidates},
            "metrics": [asdict(m) for m in self.metrics],
            "dimensions": [
                {
                    "name": d.name,
                    "unknown": {"rows": d.unknown_rows, "candidates": d.unknown_candidates},
                    "reference": dict(d.reference),
                    "categories": [
                        {
                            "name": c.name,
                            "rows": c.rows,
                            "candidates": c.candidates,
                            "share": _r(c.share),
                            "excluded": c.excluded,
                            "rates": {k: rate(v) for k, v in c.rates.items()},
                        }
                        for c in d.categories
                    ],
                }
                for d in self.dimensions
            ],
            "flags": [
                {
                    "dimension": f.dimension,
                    "category": f.category,
                    "metric": f.metric,
                    "impact_ratio": _r(f.impact_ratio),
                    "impact_ratio_ci": None
                    if f.impact_ratio_ci is None
                    else [_r(v) for v in f.impact_ratio_ci],
                    "significant": f.significant,
                }
                for f in self.flags()
            ],
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2) + "\n"

    def to_markdown(self) -> str:
        m, c = self.meta, self.config
        conf = f"{c.confidence:.0%}"
        lines = [
            f"# Bias audit: {m.data_source}",
            "",
            "| | |",
            "|---|---|",
            f"| audit date | {m.audit_date} |",
            f"| frame | {m.frame} |",
            f"| data source | {m.data_source} |",
            f"| period | {f'{m.period[0]} to {m.period[1]}' if m.period else 'unknown'} |",
            f"| model version | {m.model_version or ('none: the historical process' if m.frame == 'historical' else 'unknown')} |",
            f"| tool first distributed | {m.distribution_date} |",
        ]
        if m.model_version:
            lines.append(
                f"| version first promoted | {m.version_distribution_date or 'never promoted'} |"
            )
        if m.frame != "historical":
            lines.append(f"| selected | top {c.k} of each ranking |")
        lines += [
            f"| sample | {self.rows} rows, {self.candidates} candidates, {self.rankings} rankings |",
            f"| flag threshold | impact ratio < {c.threshold:g} |",
            f"| small-category rule | categories under {c.min_share:.0%} of rows get no ratio |",
            f"| intervals | {conf} bootstrap over rankings, {c.n_boot} resamples, seed {c.seed} |",
            "",
            "## Flags",
            "",
        ]
        flags = self.flags()
        if not flags:
            lines.append(f"No impact ratio below {c.threshold:g}.")
        for f in flags:
            label = next(x.label for x in self.metrics if x.key == f.metric)
            verdict = (
                f"significant: the whole {conf} interval {_fmt_ci(f.impact_ratio_ci)} is below "
                f"{c.threshold:g}"
                if f.significant
                else f"not significant: {conf} interval {_fmt_ci(f.impact_ratio_ci)}"
            )
            lines.append(
                f"- **{f.dimension} = {f.category}**, {label}: impact ratio "
                f"{f.impact_ratio:.3f} ({verdict})"
            )
        for dim in self.dimensions:
            lines += ["", f"## {dim.name}", ""]
            lines.append(
                f"Unknown category: {dim.unknown_rows} rows ({dim.unknown_candidates} "
                "candidates), counted in the sample, excluded from the ratios."
            )
            if not dim.categories:
                lines.append("")
                lines.append("No row has a known category: nothing to compare.")
                continue
            excluded = [x for x in dim.categories if x.excluded]
            for metric in self.metrics:
                ref = dim.reference.get(metric.key)
                lines += [
                    "",
                    f"### {metric.label}",
                    "",
                    f"{metric.description} Reference (highest rate): {ref or '—'}.",
                    "",
                    f"| category | n | share | passed | rate | {conf} CI | impact ratio "
                    f"| {conf} CI | detectable ratio | flag |",
                    "|---|---:|---:|---:|---:|---|---:|---|---:|---|",
                ]
                for cat in dim.categories:
                    r = cat.rates[metric.key]
                    ir = "excluded" if cat.excluded else _fmt(r.impact_ratio)
                    lines.append(
                        f"| {cat.name} | {r.eligible} | {cat.share:.1%} | {r.successes} "
                        f"| {_fmt(r.rate)} | {_fmt_ci(r.rate_ci)} | {ir} "
                        f"| {_fmt_ci(r.impact_ratio_ci)} | {_fmt(r.detectable_ratio)} "
                        f"| {r.flag or ''} |"
                    )
            if excluded:
                lines += ["", "Excluded from impact ratios:"]
                lines += [f"- {x.name}: {x.excluded}" for x in excluded]
        lines += [
            "",
            "## Notes",
            "",
            "- n: rows in the rate's denominator; share: the category's share of all the "
            "sample's rows (the basis of the small-category rule).",
            "- Detectable ratio: the impact ratio a two-sided two-proportion z-test "
            f"(alpha {c.alpha:g}) detects with power {c.power:g} against the reference, at "
            "the category's effective size (rows ÷ the design effect of rankings). Ratios "
            "between it and 1 cannot be told apart from parity by this sample.",
        ]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


# -- the sample -----------------------------------------------------------------------------


def category_of(protected: Mapping[str, Mapping[str, str]], candidate_id: str, name: str) -> str:
    """The candidate's value of attribute `name`, or `UNKNOWN` when missing, empty or declined."""
    value = protected.get(candidate_id, {}).get(name)
    if value is None or str(value).strip().casefold() in _UNKNOWN_VALUES:
        return UNKNOWN
    return str(value).strip()


def _intersection(a: str, b: str) -> str:
    return UNKNOWN if UNKNOWN in (a, b) else f"{a} × {b}"


@dataclass(frozen=True)
class _Metric:
    info: MetricInfo
    eligible: np.ndarray
    """(n,) bool: rows in the rate's denominator."""
    success: np.ndarray | None
    """(n,) bool: rows in the numerator; None for the scoring rate (above the sample's median)."""


@dataclass(frozen=True)
class _Sample:
    cluster: np.ndarray
    """(n,) int: the ranking (posting) of each row, 0..n_clusters-1; the bootstrap's unit."""
    n_clusters: int
    candidate_ids: tuple[str, ...]
    dimensions: dict[str, list[str]]
    """Per dimension, each row's category."""
    scores: np.ndarray
    """(n,) float64, NaN where the row has no score."""


def _dimensions(
    candidate_ids: Sequence[str],
    protected: Mapping[str, Mapping[str, str]],
    attributes: Sequence[str],
) -> dict[str, list[str]]:
    per_candidate = {
        cid: tuple(category_of(protected, cid, a) for a in attributes) for cid in set(candidate_ids)
    }
    dims = {a: [per_candidate[c][i] for c in candidate_ids] for i, a in enumerate(attributes)}
    if len(attributes) == 2:
        a, b = attributes
        dims[f"{a} × {b}"] = [_intersection(x, y) for x, y in zip(dims[a], dims[b], strict=True)]
    return dims


def _weighted_median(sorted_scores: np.ndarray, sorted_weights: np.ndarray) -> float:
    """np.median of the multiset where score i appears weight i times (integer weights)."""
    cum = np.cumsum(sorted_weights)
    total = int(round(cum[-1]))
    if total == 0:
        return math.nan
    lo = (total - 1) // 2
    hi = total // 2
    a = sorted_scores[np.searchsorted(cum, lo, side="right")]
    b = sorted_scores[np.searchsorted(cum, hi, side="right")]
    return float((a + b) / 2)


def _detectable_ratio(
    p_ref: float, n_ref: float, n_cat: float, alpha: float, power: float
) -> float | None:
    """Largest ratio p/p_ref < 1 a two-proportion z-test detects with `power` (None: none is)."""
    if p_ref <= 0 or n_ref <= 0 or n_cat <= 0:
        return None
    z_a = NormalDist().inv_cdf(1 - alpha / 2)
    z_b = NormalDist().inv_cdf(power)

    def margin(p: float) -> float:
        pbar = (n_ref * p_ref + n_cat * p) / (n_ref + n_cat)
        need = z_a * math.sqrt(pbar * (1 - pbar) * (1 / n_ref + 1 / n_cat)) + z_b * math.sqrt(
            p_ref * (1 - p_ref) / n_ref + p * (1 - p) / n_cat
        )
        return (p_ref - p) - need

    if margin(0.0) < 0:
        return None
    lo, hi = 0.0, p_ref  # margin(lo) >= 0 > margin(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        if margin(mid) >= 0:
            lo = mid
        else:
            hi = mid
    return lo / p_ref


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float] | None:
    finite = values[np.isfinite(values)]
    # An interval from a handful of defined resamples would look precise and be meaningless.
    if len(finite) < max(10, len(values) // 2):
        return None
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class _Codes:
    """One dimension's categories as integer codes; code `len(names)` is the unknown category."""

    names: list[str]
    codes: np.ndarray

    @property
    def width(self) -> int:
        return len(self.names) + 1


def _codes(cats: Sequence[str]) -> _Codes:
    names = sorted(set(cats) - {UNKNOWN})
    code_of = {c: i for i, c in enumerate(names)}
    return _Codes(names, np.array([code_of.get(c, len(names)) for c in cats], dtype=np.int64))


def _per_cluster(sample: _Sample, dim: _Codes, mask: np.ndarray) -> np.ndarray:
    """(rankings, known categories) counts of the rows in `mask`."""
    flat = sample.cluster * dim.width + dim.codes
    counts = np.bincount(
        flat, weights=mask.astype(np.float64), minlength=sample.n_clusters * dim.width
    )
    return counts.reshape(sample.n_clusters, dim.width)[:, :-1]


def _above_median_counts(
    sample: _Sample, eligible: np.ndarray, dims: Sequence[_Codes], boot_w: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per dimension: (point, per-resample) counts of eligible rows above the sample median.

    The median is the resample's own (rows repeated as often as their ranking was drawn), so
    it is recomputed for every resample; one pass over the resamples serves every dimension.
    """
    idx = np.flatnonzero(eligible)
    order = idx[np.argsort(sample.scores[idx], kind="stable")]
    sorted_scores = sample.scores[order]
    clusters = sample.cluster[order]
    codes = [d.codes[order] for d in dims]
    point_above = sorted_scores > float(np.median(sorted_scores))
    out = [
        (
            np.bincount(c, weights=point_above.astype(np.float64), minlength=d.width)[:-1],
            np.zeros((len(boot_w), d.width - 1)),
        )
        for c, d in zip(codes, dims, strict=True)
    ]
    for b in range(len(boot_w)):
        w = boot_w[b, clusters]
        med = _weighted_median(sorted_scores, w)
        weights = w * (sorted_scores > med)
        for (_, boot), c, d in zip(out, codes, dims, strict=True):
            boot[b] = np.bincount(c, weights=weights, minlength=d.width)[:-1]
    return out


def _rate_results(
    names: Sequence[str],
    num: np.ndarray,
    den: np.ndarray,
    boot_num: np.ndarray,
    boot_den: np.ndarray,
    included: np.ndarray,
    config: AuditConfig,
) -> tuple[list[RateResult], str | None]:
    """Rates, impact ratios against the highest included rate, CIs, detectable ratios, flags."""
    n_cat = len(names)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(den > 0, num / np.maximum(den, 1), np.nan)
        boot_rate = np.where(boot_den > 0, boot_num / np.maximum(boot_den, 1), np.nan)
    usable = np.flatnonzero(included & np.isfinite(rate))
    ref = int(usable[np.argmax(rate[usable])]) if len(usable) else None
    ref_rate = float(rate[ref]) if ref is not None else math.nan
    # The reference is re-chosen in every resample: the statistic is "rate ÷ highest rate".
    boot_incl = np.where(included[None, :] & np.isfinite(boot_rate), boot_rate, -np.inf)
    boot_max = boot_incl.max(axis=1) if n_cat else np.zeros(len(boot_rate))
    boot_max = np.where(np.isfinite(boot_max) & (boot_max > 0), boot_max, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot_ratio = boot_rate / boot_max[:, None]
    finite = np.isfinite(boot_rate)
    counts = finite.sum(axis=0)
    boot_mean = np.where(finite, boot_rate, 0.0).sum(axis=0) / np.maximum(counts, 1)
    boot_var = (np.where(finite, boot_rate - boot_mean, 0.0) ** 2).sum(axis=0) / np.maximum(
        counts - 1, 1
    )
    out: list[RateResult] = []
    for i in range(n_cat):
        r = float(rate[i]) if np.isfinite(rate[i]) else None
        ratio: float | None = None
        ratio_ci: tuple[float, float] | None = None
        detectable: float | None = None
        flag: Flag = ""
        if included[i] and r is not None and ref is not None and ref_rate > 0:
            ratio = r / ref_rate
            ratio_ci = _percentile_ci(boot_ratio[:, i], config.confidence)
            if i != ref:
                detectable = _detectable_ratio(
                    ref_rate,
                    _effective_n(ref_rate, float(den[ref]), float(boot_var[ref])),
                    _effective_n(ref_rate, float(den[i]), float(boot_var[i])),
                    config.alpha,
                    config.power,
                )
            if ratio < config.threshold:
                # Several categories are compared with the highest one at once, so the decision
                # uses a Bonferroni-widened interval (the one reported stays at `confidence`).
                m = max(1, len(usable) - 1)
                wide = _percentile_ci(boot_ratio[:, i], 1 - (1 - config.confidence) / m)
                significant = wide is not None and wide[1] < config.threshold
                flag = "significant" if significant else "below"
        out.append(
            RateResult(
                successes=int(round(float(num[i]))),
                eligible=int(den[i]),
                rate=r,
                rate_ci=_percentile_ci(boot_rate[:, i], config.confidence)
                if r is not None
                else None,
                impact_ratio=ratio,
                impact_ratio_ci=ratio_ci,
                detectable_ratio=detectable,
                flag=flag,
            )
        )
    return out, (names[ref] if ref is not None else None)


def _compute(
    sample: _Sample, metrics: Sequence[_Metric], config: AuditConfig
) -> tuple[DimensionResult, ...]:
    n = len(sample.candidate_ids)
    g = sample.n_clusters
    rng = np.random.default_rng(config.seed)
    # One row of boot_w is one bootstrap sample: how often each ranking was drawn.
    boot_w = rng.multinomial(g, np.full(g, 1.0 / g), size=config.n_boot).astype(np.float64)
    dims = [_codes(cats) for cats in sample.dimensions.values()]
    scoring = {
        m.info.key: _above_median_counts(sample, m.eligible, dims, boot_w)
        for m in metrics
        if m.success is None and m.eligible.any()
    }
    cand_arr = np.asarray(sample.candidate_ids, dtype=object)
    results: list[DimensionResult] = []
    for d_i, (dim_name, dim) in enumerate(zip(sample.dimensions, dims, strict=True)):
        n_cat = len(dim.names)
        rows_per = np.bincount(dim.codes, minlength=dim.width)
        shares = rows_per[:n_cat] / n
        excluded = [
            f"{s:.1%} of the sample's rows, under the {config.min_share:.0%} minimum (LL144 "
            "small-category rule)"
            if s < config.min_share
            else None
            for s in shares
        ]
        included = np.array([e is None for e in excluded], dtype=bool)
        rates: dict[str, list[RateResult]] = {}
        reference: dict[str, str | None] = {}
        for m in metrics:
            den_gc = _per_cluster(sample, dim, m.eligible)
            if m.success is not None:
                num_gc = _per_cluster(sample, dim, m.success & m.eligible)
                num, boot_num = num_gc.sum(axis=0), boot_w @ num_gc
            elif m.info.key in scoring:
                num, boot_num = scoring[m.info.key][d_i]
            else:
                num, boot_num = np.zeros(n_cat), np.zeros((config.n_boot, n_cat))
            rates[m.info.key], reference[m.info.key] = _rate_results(
                dim.names, num, den_gc.sum(axis=0), boot_num, boot_w @ den_gc, included, config
            )
        categories = tuple(
            CategoryResult(
                name=name,
                rows=int(rows_per[i]),
                candidates=len(set(cand_arr[dim.codes == i].tolist())),
                share=float(shares[i]),
                excluded=excluded[i],
                rates={k: v[i] for k, v in rates.items()},
            )
            for i, name in enumerate(dim.names)
        )
        unknown = dim.codes == n_cat
        results.append(
            DimensionResult(
                dim_name,
                categories,
                int(unknown.sum()),
                len(set(cand_arr[unknown].tolist())),
                reference,
            )
        )
    return tuple(results)


def _effective_n(p: float, n: float, boot_var: float) -> float:
    """n ÷ the design effect of clustering, estimated from the bootstrap (floored at 1).

    The binomial variance is taken at the reference rate `p`: under the null both categories
    share it, and a category with rate 0 would otherwise have no variance to compare against.
    """
    if n <= 0:
        return 0.0
    binomial = p * (1 - p) / n
    if not np.isfinite(boot_var) or binomial <= 0 or boot_var <= binomial:
        return n
    return n * binomial / float(boot_var)


def _audit(
    sample: _Sample,
    metrics: Sequence[_Metric],
    meta: AuditMeta,
    config: AuditConfig,
    notes: Sequence[str],
) -> AuditResult:
    if not sample.candidate_ids:
        raise InvalidInput(
            "nothing to audit: the sample has no rows; check the period and that the store "
            "holds outcomes or decisions (`ranker ingest`)"
        )
    return AuditResult(
        meta=meta,
        config=config,
        metrics=tuple(m.info for m in metrics),
        dimensions=_compute(sample, metrics, config),
        rankings=sample.n_clusters,
        rows=len(sample.candidate_ids),
        candidates=len(set(sample.candidate_ids)),
        notes=tuple(notes),
    )


# -- frame (a): historical outcomes ---------------------------------------------------------


def audit_outcomes(
    outcomes: Iterable[Outcome],
    protected: Mapping[str, Mapping[str, str]],
    *,
    meta: AuditMeta | None = None,
    config: AuditConfig | None = None,
    attributes: Sequence[str] = DIMENSIONS,
) -> AuditResult:
    """Frame (a): pass-through rate per hiring stage per category, from the stored outcomes.

    Each (posting, applicant) pair is one row; it reached the highest stage of its events
    (`rejected` ends a pair's progress but reaches nothing). The rate of a stage is the share
    of the pairs that reached the previous stage which reached this one. This is the bias in
    the labels a model trained on these outcomes learns from.
    """
    config = config or AuditConfig()
    order = {s: i for i, s in enumerate(PIPELINE)}
    reached: dict[tuple[str, str], int] = {}
    times: list[datetime] = []
    for o in outcomes:
        key = (o.posting_id, o.candidate_id)
        reached[key] = max(reached.get(key, 0), order.get(o.stage, 0))
        times.append(o.at)
    keys = sorted(reached)
    postings = sorted({p for p, _ in keys})
    cluster_of = {p: i for i, p in enumerate(postings)}
    cids = tuple(c for _, c in keys)
    level = np.array([reached[k] for k in keys], dtype=np.int64)
    sample = _Sample(
        cluster=np.array([cluster_of[p] for p, _ in keys], dtype=np.int64),
        n_clusters=len(postings),
        candidate_ids=cids,
        dimensions=_dimensions(cids, protected, attributes),
        scores=np.full(len(keys), np.nan),
    )
    metrics = [
        _Metric(
            MetricInfo(
                stage.value,
                f"{PIPELINE[i - 1].value} → {stage.value}",
                f"Pass-through rate: applicants who reached {stage.value} among those who "
                f"reached {PIPELINE[i - 1].value}.",
            ),
            eligible=level >= i - 1,
            success=level >= i,
        )
        for i, stage in enumerate(PIPELINE)
        if i > 0
    ]
    if meta is None:
        period = (min(times).date().isoformat(), max(times).date().isoformat()) if times else None
        meta = AuditMeta(frame="historical", data_source="historical outcomes", period=period)
    notes = [
        "Historical outcomes: the hiring process that produced the training labels, not the "
        "model. A disparity here is what a model trained on these labels learns to reproduce.",
        "The scoring rate does not apply: the historical process gave no scores.",
    ]
    return _audit(sample, metrics, meta, config, notes)


# -- frames (b) and (c): rankings -----------------------------------------------------------


@dataclass(frozen=True)
class Ranking:
    """One ranking the tool produced, for frames (b) and (c)."""

    cluster: str
    """The bootstrap unit: the posting id (a request id when the ranking has no posting)."""
    candidate_ids: tuple[str, ...]
    """Candidates in rank order, best first."""
    scores: tuple[float, ...] | None = None
    """The tool's score of each candidate in `candidate_ids`, when known."""
    scores_complete: bool = True
    """False when `candidate_ids` is only the top of what the tool scored (a decision log that
    keeps the returned top k): the scoring rate then cannot be computed."""
    unranked: tuple[str, ...] = ()
    """Candidates the ranking chose from that are not in `candidate_ids` (the stored pool that
    retrieval passed over, or scored candidates the log did not keep): they count in the
    selection rate's denominator, are never selected, and carry no score."""

    def __post_init__(self) -> None:
        if self.scores is not None and len(self.scores) != len(self.candidate_ids):
            raise InvalidInput(
                f"ranking {self.cluster}: {len(self.scores)} scores for "
                f"{len(self.candidate_ids)} candidates; send one score per ranked candidate"
            )


def audit_rankings(
    rankings: Sequence[Ranking],
    protected: Mapping[str, Mapping[str, str]],
    *,
    meta: AuditMeta,
    config: AuditConfig | None = None,
    attributes: Sequence[str] = DIMENSIONS,
) -> AuditResult:
    """Frames (b) and (c): selection rate (top k) and, when every score is known, scoring rate.

    Frame (b): the caller ranks held-out postings the way the service does (retrieve from all
    stored candidates, rerank) and passes each posting's ranking with its scores. Frame (c):
    `rankings_from_decisions` turns logged decisions into rankings.
    """
    config = config or AuditConfig()
    clusters = sorted({r.cluster for r in rankings})
    cluster_of = {c: i for i, c in enumerate(clusters)}
    cids: list[str] = []
    cluster: list[int] = []
    selected: list[bool] = []
    scores: list[float] = []
    short = 0
    for r in rankings:
        ranked = list(dict.fromkeys(r.candidate_ids))
        if len(ranked) != len(r.candidate_ids):
            raise InvalidInput(f"ranking {r.cluster} lists a candidate twice; send each once")
        if len(ranked) < config.k:
            short += 1
        seen = set(ranked)
        rest = [c for c in dict.fromkeys(r.unranked) if c not in seen]
        cids += ranked + rest
        cluster += [cluster_of[r.cluster]] * (len(ranked) + len(rest))
        selected += [i < config.k for i in range(len(ranked))] + [False] * len(rest)
        ranked_scores = (
            [float(s) for s in r.scores] if r.scores is not None else [math.nan] * len(ranked)
        )
        scores += ranked_scores + [math.nan] * len(rest)
    score_arr = np.asarray(scores, dtype=np.float64)
    sample = _Sample(
        cluster=np.asarray(cluster, dtype=np.int64),
        n_clusters=len(clusters),
        candidate_ids=tuple(cids),
        dimensions=_dimensions(cids, protected, attributes),
        scores=score_arr,
    )
    n = len(cids)
    metrics = [
        _Metric(
            MetricInfo(
                "selection",
                f"selection rate (top {config.k})",
                f"Share of the category's rows ranked in the top {config.k} of their ranking.",
            ),
            eligible=np.ones(n, dtype=bool),
            success=np.asarray(selected, dtype=bool),
        )
    ]
    notes: list[str] = []
    complete = all(r.scores is not None and r.scores_complete for r in rankings)
    if complete and np.isfinite(score_arr).any():
        metrics.append(
            _Metric(
                MetricInfo(
                    "scoring",
                    "scoring rate (above the sample median)",
                    "Share of the category's scored rows scoring above the median score of "
                    "every row the tool scored.",
                ),
                eligible=np.isfinite(score_arr),
                success=None,
            )
        )
        notes.append(
            "Scoring rate: the median is taken over every score in the sample, as LL144 "
            "defines it. A ranker's scores order candidates within a posting and are not "
            "calibrated across postings, so postings with generally high scores weigh more."
        )
    else:
        notes.append(
            "Scoring rate unavailable: not every scored candidate's score is known (the "
            "decision log keeps only the returned top of each ranking)."
        )
    if any(r.unranked for r in rankings):
        notes.append(
            "Selection rates count the candidates each ranking chose from but did not rank "
            "(the stored pool retrieval passed over): the whole pipeline, retrieval included."
        )
    if short:
        notes.append(
            f"{short} of {len(rankings)} rankings list fewer than {config.k} candidates; all "
            "of their ranked candidates count as selected."
        )
    return _audit(sample, metrics, meta, config, notes)
