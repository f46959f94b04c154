"""Reasons a recruiter can read: skill and experience fit, plus the features that moved the score."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np

from ranker.domain import Posting
from ranker.features import FitSummary, PreparedCandidate, fit_summary

# Recruiter-facing names of the model's features; unknown names fall back to the raw name.
_LABELS = {
    "dense_cosine": "overall CV similarity",
    "chunk_max_cosine": "best-matching CV section",
    "bm25": "keyword match",
    "bm25_required": "keyword match on required skills",
    "required_coverage": "required skills listed",
    "required_missing": "required skills missing",
    "nice_coverage": "nice-to-have skills listed",
    "required_text_coverage": "required skills mentioned in the CV",
    "years_experience": "years of experience",
    "experience_gap": "experience against the minimum",
    "under_min_years": "below the minimum experience",
    "same_location": "same location",
    "remote_fit": "remote fit",
    "relocation_needed": "relocation needed",
    "location_fit": "location fit",
    "title_overlap": "job title match",
    "seniority_gap": "seniority against the posting",
    "skills_listed": "number of skills listed",
    "cv_log_length": "CV detail",
}


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


def _contribution_sentence(top: Sequence[FeatureContribution]) -> str | None:
    up = [
        f"{_LABELS.get(f.name, f.name)} (+{f.contribution:.2f})" for f in top if f.contribution > 0
    ]
    down = [
        f"{_LABELS.get(f.name, f.name)} ({f.contribution:.2f})" for f in top if f.contribution < 0
    ]
    parts = []
    if up:
        parts.append("raised most by " + ", ".join(up))
    if down:
        parts.append("lowered most by " + ", ".join(down))
    return ("Score " + "; ".join(parts)) if parts else None


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
        out: list[Explanation] = []
        for row, cand in enumerate(candidates):
            fit = fit_summary(posting, cand.candidate)
            c = contrib[row]
            order = np.argsort(-np.abs(c), kind="stable")[: self.n_top]
            top = tuple(
                FeatureContribution(
                    name=self.feature_names[j], value=float(x[row, j]), contribution=float(c[j])
                )
                for j in order
                if c[j] != 0
            )
            reasons = fit_reasons(posting, fit)
            sentence = _contribution_sentence(top)
            if sentence:
                reasons.append(sentence)
            out.append(Explanation(reasons=tuple(reasons), fit=fit, top_features=top))
        return out
