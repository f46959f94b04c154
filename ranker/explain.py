"""Reasons a recruiter can read: skill and experience fit, plus the features that moved the score."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np

from ranker.domain import Posting
from ranker.features import FitSummary, PreparedCandidate, fit_summary


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _signed_years(v: float, above: str, below: str, level: str) -> str:
    if v > 0:
        return f"{_plural_years(v)} {above}"
    if v < 0:
        return f"{_plural_years(-v)} {below}"
    return level


def _plural_years(y: float) -> str:
    return f"{y:g} year" + ("" if y == 1 else "s")


def _yes_no(v: float, yes: str, no: str) -> str:
    return yes if v >= 0.5 else no


# A feature's value in words, for a recruiter: "1 required skill missing", not "required_missing
# = 1.0". Unknown names fall back to the raw name and value.
_IN_WORDS: dict[str, Callable[[float], str]] = {
    "dense_cosine": lambda v: f"CV similarity of {v:.2f}",
    "chunk_max_cosine": lambda v: f"best-matching CV section similarity of {v:.2f}",
    "bm25": lambda v: f"keyword match of {v:.0%}",
    "bm25_required": lambda v: f"keyword match on required skills of {v:.0%}",
    "required_coverage": lambda v: f"{v:.0%} of the required skills listed",
    "required_missing": lambda v: (
        "no required skill missing"
        if round(v) == 0
        else _plural(round(v), "required skill") + " missing"
    ),
    "nice_coverage": lambda v: f"{v:.0%} of the nice-to-have skills listed",
    "required_text_coverage": lambda v: f"{v:.0%} of the required skills mentioned in the CV",
    "years_experience": lambda v: f"{_plural_years(v)} of experience",
    "experience_gap": lambda v: _signed_years(
        v,
        "above the minimum experience",
        "below the minimum experience",
        "exactly the minimum experience",
    ),
    "under_min_years": lambda v: _yes_no(
        v, "experience below the minimum", "experience meeting the minimum"
    ),
    "same_location": lambda v: _yes_no(
        v, "same location as the job", "a location other than the job's"
    ),
    "remote_fit": lambda v: _yes_no(v, "remote work wanted and accepted", "no remote match"),
    "relocation_needed": lambda v: _yes_no(
        v, "willing to relocate for the job", "no relocation involved"
    ),
    "location_fit": lambda v: (
        "a location fit"
        if v >= 0.75
        else "a location fit through relocation"
        if v >= 0.25
        else "no location fit"
    ),
    "title_overlap": lambda v: f"job title overlap of {v:.0%}",
    "seniority_gap": lambda v: (
        f"a title {_plural(round(abs(v)), 'seniority level')} "
        + ("above" if v > 0 else "below")
        + " the posting's"
        if round(v)
        else "a title at the posting's seniority"
    ),
    "skills_listed": lambda v: _plural(round(v), "skill") + " listed",
    "cv_log_length": lambda v: f"a CV of about {round(math.expm1(v))} words",
}


_LOCATION_FEATURES = frozenset({"same_location", "remote_fit", "relocation_needed", "location_fit"})


def describe_feature(name: str, value: float) -> str:
    """A feature's value in words, e.g. `1 required skill missing`."""
    words = _IN_WORDS.get(name)
    return words(value) if words is not None else f"{name} = {value:.3g}"


@dataclass(frozen=True)
class FeatureContribution:
    """One feature's value and its additive TreeSHAP contribution to a candidate's score."""

    name: str
    value: float
    contribution: float


@dataclass(frozen=True)
class Explanation:
    """Why a candidate ranks where it does: sentences plus the structured facts behind them."""

    reasons: tuple[str, ...]
    fit: FitSummary
    top_features: tuple[FeatureContribution, ...]


def _fmt_years(y: float) -> str:
    return f"{y:g} year" + ("" if y == 1 else "s")


def fit_reasons(posting: Posting, fit: FitSummary) -> list[str]:
    """Sentences about skills, experience and location, most decisive first."""
    reasons: list[str] = []
    n_req = len(fit.required_matched) + len(fit.required_missing)
    if n_req == 0:
        reasons.append("The posting lists no required skills")
    elif not fit.required_missing:
        reasons.append(f"Has all {n_req} required skills: {', '.join(fit.required_matched)}")
    else:
        has = f"Has {len(fit.required_matched)} of {n_req} required skills"
        if fit.required_matched:
            has += f" ({', '.join(fit.required_matched)})"
        reasons.append(f"{has}; missing: {', '.join(fit.required_missing)}")
    if fit.nice_matched:
        reasons.append(f"Also has nice-to-have skills: {', '.join(fit.nice_matched)}")
    if fit.min_years <= 0:
        reasons.append(f"{_fmt_years(fit.years_experience)} of experience (no minimum asked)")
    elif fit.meets_experience:
        reasons.append(
            f"{_fmt_years(fit.years_experience)} of experience, meets the "
            f"{fit.min_years:g} required"
        )
    else:
        short = fit.min_years - fit.years_experience
        reasons.append(
            f"{_fmt_years(fit.years_experience)} of experience, {short:g} short of the "
            f"{fit.min_years:g} required"
        )
    if not posting.location and not posting.remote:
        reasons.append("The posting names no location")
        return reasons
    where = posting.location or "the job's location"
    reasons.append(
        {
            "remote": "Accepts remote work, and the job is remote",
            "same location": f"Located in {where}",
            "willing to relocate": f"Would relocate to {where}",
            "location mismatch": (
                "Does not accept remote work"
                if posting.remote and not posting.location
                else f"Not in {where}, not open to relocating or remote work"
            ),
        }.get(fit.location_fit, f"Location: {fit.location_fit}")
    )
    return reasons


def contribution_sentences(top: Sequence[FeatureContribution]) -> list[str]:
    """One sentence per feature that moved the score, e.g.
    `1 required skill missing lowered the score (−0.06)`."""
    out = []
    for f in top:
        if f.contribution == 0:
            continue
        words = describe_feature(f.name, f.value)
        verb = "raised" if f.contribution > 0 else "lowered"
        # U+2212 minus: reads as a sign, not a hyphen, next to the number.
        amount = f"+{f.contribution:.2f}" if f.contribution > 0 else f"\u2212{-f.contribution:.2f}"
        out.append(f"{words[0].upper()}{words[1:]} {verb} the score ({amount})")
    return out


class TreeExplainer:
    """TreeSHAP contributions from the LightGBM booster the served ONNX model was exported from.

    The booster is loaded on first use: most requests do not ask for reasons, and a model swap
    should not pay for it up front.
    """

    def __init__(self, booster_path: Path, feature_names: Sequence[str], n_top: int = 3) -> None:
        self.booster_path = Path(booster_path)
        self.feature_names = tuple(feature_names)
        self.n_top = n_top
        self._booster: lgb.Booster | None = None
        self._lock = threading.Lock()

    def _load(self) -> lgb.Booster:
        with self._lock:
            if self._booster is None:
                self._booster = lgb.Booster(model_file=str(self.booster_path))
            return self._booster

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """(n, n_features) per-feature contributions; the expected value column is dropped."""
        if len(x) == 0:
            return np.zeros((0, len(self.feature_names)), dtype=np.float32)
        # One thread: this runs inside a request already on a worker thread; more would
        # oversubscribe the two cores.
        contrib = self._load().predict(
            np.asarray(x, dtype=np.float64), pred_contrib=True, num_threads=1
        )
        return np.asarray(contrib, dtype=np.float32)[:, : len(self.feature_names)]

    def explain(
        self, posting: Posting, candidates: Sequence[PreparedCandidate], x: np.ndarray
    ) -> list[Explanation]:
        """One explanation per candidate (row of `x`), in the same order."""
        contrib = self.contributions(x)
        # A posting without a location gives every candidate the same location features, so
        # crediting "a location fit" for the score would mislead; leave them out of the sentences.
        silent = _LOCATION_FEATURES if not posting.location and not posting.remote else frozenset()
        out: list[Explanation] = []
        for row, cand in enumerate(candidates):
            fit = fit_summary(posting, cand.candidate)
            c = contrib[row].copy()
            for j, name in enumerate(self.feature_names):
                if name in silent:
                    c[j] = 0.0
            order = np.argsort(-np.abs(c), kind="stable")[: self.n_top]
            top = tuple(
                FeatureContribution(
                    name=self.feature_names[j], value=float(x[row, j]), contribution=float(c[j])
                )
                for j in order
                if c[j] != 0
            )
            reasons = fit_reasons(posting, fit) + contribution_sentences(top)
            out.append(Explanation(reasons=tuple(reasons), fit=fit, top_features=top))
        return out
