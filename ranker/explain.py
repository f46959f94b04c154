"""Reasons a recruiter can read: skill and experience fit, plus the features that moved the score."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np

from ranker.domain import Candidate, Posting
from ranker.features import FEATURES, FEATURES_BY_NAME
from ranker.prepared import PreparedCandidate
from ranker.text import phrase_key, skill_keys

# Location features of a posting that names no location are the same for every candidate, so
# crediting "a location fit" for the score would mislead.
_LOCATION_FEATURES = frozenset(f.name for f in FEATURES if f.location)


def describe_feature(name: str, value: float) -> str:
    """A feature's value in words (its spec's `in_words`), e.g. `1 required skill missing`.

    A name that is no feature (a model's column the code no longer knows) reads as name = value.
    """
    spec = FEATURES_BY_NAME.get(name)
    return spec.in_words(value) if spec is not None else f"{name} = {value:.3g}"


@dataclass(frozen=True)
class FitSummary:
    """A recruiter-readable account of how a candidate fits a posting."""

    required_matched: tuple[str, ...]
    required_missing: tuple[str, ...]
    nice_matched: tuple[str, ...]
    years_experience: float
    min_years: float
    meets_experience: bool
    location_fit: str
    """One of: "remote", "same location", "willing to relocate", "location mismatch", or
    "no location requirement" (an on-site posting that names no location; the location features
    are then the same for every candidate)."""

    def describe(self) -> str:
        """One line, e.g. `3/4 required skills (missing: sql); 6 yrs vs 5 required; remote`."""
        n_req = len(self.required_matched) + len(self.required_missing)
        parts = [f"{len(self.required_matched)}/{n_req} required skills"]
        if self.required_missing:
            parts[-1] += f" (missing: {', '.join(self.required_missing)})"
        if self.nice_matched:
            parts.append(f"nice-to-have: {', '.join(self.nice_matched)}")
        parts.append(f"{self.years_experience:g} yrs vs {self.min_years:g} required")
        parts.append(self.location_fit)
        return "; ".join(parts)


def fit_summary(p: Posting, c: Candidate) -> FitSummary:
    """Skills matched and missing, experience against the minimum, and location fit.

    Compares exactly as `FeatureBuilder` does (`phrase_key`), so the reasons agree with the
    `required_coverage`, `nice_coverage` and location columns.
    """
    skills = skill_keys(c.skills)
    required = skill_keys(p.required_skills)
    nice = skill_keys(p.nice_skills)
    location = phrase_key(p.location)
    if p.remote and c.remote_ok:
        where = "remote"
    elif not location:
        where = "location mismatch" if p.remote else "no location requirement"
    elif location == phrase_key(c.location):
        where = "same location"
    elif not p.remote and c.willing_to_relocate:
        where = "willing to relocate"
    else:
        where = "location mismatch"
    return FitSummary(
        required_matched=tuple(s for k, s in required.items() if k in skills),
        required_missing=tuple(s for k, s in required.items() if k not in skills),
        nice_matched=tuple(s for k, s in nice.items() if k in skills),
        years_experience=c.years_experience,
        min_years=p.min_years,
        meets_experience=c.years_experience >= p.min_years,
        location_fit=where,
    )


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

    def __init__(
        self,
        booster_path: Path,
        feature_names: Sequence[str],
        n_top: int = 3,
        blend: tuple[int, float] | None = None,
    ) -> None:
        self.booster_path = Path(booster_path)
        self.feature_names = tuple(feature_names)
        self.n_top = n_top
        self.blend = blend
        """(column, weight) of the served score's blend term (`ranker.scorer.BlendedScorer`):
        it is that feature's own contribution, so it is added to it."""
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
        out = np.asarray(contrib, dtype=np.float32)[:, : len(self.feature_names)]
        if self.blend is not None and self.blend[1]:
            column, weight = self.blend
            out[:, column] += np.float32(weight) * np.asarray(x, dtype=np.float32)[:, column]
        return out

    def explain(
        self, posting: Posting, candidates: Sequence[PreparedCandidate], x: np.ndarray
    ) -> list[Explanation]:
        """One explanation per candidate (row of `x`), in the same order."""
        contrib = self.contributions(x)
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
