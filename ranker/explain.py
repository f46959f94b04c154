"""Why a candidate ranks where it does: the facts of its fit (skills listed and mentioned,
experience, location) and the TreeSHAP contributions behind its score, worded by `ranker.reasons`;
and what separates two candidates' scores for one posting."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np

from ranker.domain import Candidate, Posting
from ranker.features import FEATURES_BY_NAME
from ranker.prepared import PreparedCandidate, candidate_text
from ranker.reasons import (
    CandidateFacts,
    Separation,
    candidate_reasons,
    comparison_summary,
    separations,
    silent_topics,
    topic_of,
    weigh,
)
from ranker.text import phrase_key, skill_keys, tokenize


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
    required_mentioned: tuple[str, ...] = ()
    """Required skills not listed but mentioned in the CV text (every word of the skill occurs
    in it, as the `required_text_coverage` feature counts them)."""

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
    """Skills matched, missing and mentioned, experience against the minimum, and location fit.

    Compares exactly as `FeatureBuilder` does (`phrase_key` for listed skills, the CV's words
    for mentions), so the reasons agree with the `required_coverage`, `required_text_coverage`,
    `nice_coverage` and location columns.
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
        required_mentioned=_mentioned(
            [s for k, s in required.items() if k not in skills], candidate_text(c)
        ),
    )


def _mentioned(skills: Sequence[str], text: str) -> tuple[str, ...]:
    """The skills whose every word occurs in `text` (a skill of no words counts as itself)."""
    if not skills:
        return ()
    words = set(tokenize(text))
    return tuple(s for s in skills if all(w in words for w in (tuple(tokenize(s)) or (s,))))


def candidate_facts(p: Posting, c: Candidate, fit: FitSummary) -> CandidateFacts:
    """What the reasons say about `c` for `p`: its fit, with mentions apart from absences."""
    return CandidateFacts(
        required_matched=fit.required_matched,
        required_mentioned=fit.required_mentioned,
        required_absent=tuple(s for s in fit.required_missing if s not in fit.required_mentioned),
        nice_matched=fit.nice_matched,
        nice_total=len(skill_keys(p.nice_skills)),
        years_experience=fit.years_experience,
        min_years=fit.min_years,
        location_fit=fit.location_fit,
        candidate_location=c.location,
        posting_location=p.location,
        posting_remote=p.remote,
        title=c.title,
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


@dataclass(frozen=True)
class PairExplanation:
    """Two candidates for one posting: each one's explanation, and what separates them."""

    a: Explanation
    b: Explanation
    separating: tuple[Separation, ...]
    summary: str


_BASELINE_ROWS = 100
"""Reference rows whose contributions set the posting's average candidate (`_baseline`)."""


class ContributionExplainer:
    """Reasons and pairwise separations from additive per-feature contributions to a score.

    Subclasses say where the contributions come from (`contributions`): TreeSHAP for a trained
    model, the rule's own terms for the fallback ranker. Everything a recruiter reads is built
    the same way from them.
    """

    def __init__(self, feature_names: Sequence[str], n_top: int = 3) -> None:
        self.feature_names = tuple(feature_names)
        self.n_top = n_top

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """(n, n_features) additive contribution of each feature to each row's score."""
        raise NotImplementedError

    def explain(
        self,
        posting: Posting,
        candidates: Sequence[PreparedCandidate],
        x: np.ndarray,
        reference: np.ndarray | None = None,
    ) -> list[Explanation]:
        """One explanation per candidate (row of `x`), in the same order.

        `reference` holds the feature rows of all the posting's candidates in this request
        (default: `x`): percentiles are among them, and a topic the same for all of them is left
        out of the reasons.
        """
        reference = x if reference is None else reference
        contrib = self.contributions(x) - self._baseline(reference)
        ref = self._columns(reference)
        return [
            self._explain_row(posting, cand.candidate, x[row], contrib[row], ref)[0]
            for row, cand in enumerate(candidates)
        ]

    def compare(
        self,
        posting: Posting,
        pair: tuple[PreparedCandidate, PreparedCandidate],
        x: np.ndarray,
        reference: np.ndarray,
        scores: tuple[float, float],
        ranks: tuple[int | None, int | None] = (None, None),
    ) -> PairExplanation:
        """Both candidates' explanations (rows 0 and 1 of `x`) and the topics that separate
        their scores: TreeSHAP contributions are additive, so A's minus B's, summed per topic,
        add up to the score difference (the posting's baseline cancels out)."""
        contrib = self.contributions(x) - self._baseline(reference)
        ref = self._columns(reference)
        (a, silent), (b, _) = (
            self._explain_row(posting, pc.candidate, x[i], contrib[i], ref)
            for i, pc in enumerate(pair)
        )
        ids = (pair[0].id, pair[1].id)
        facts = (
            candidate_facts(posting, pair[0].candidate, a.fit),
            candidate_facts(posting, pair[1].candidate, b.fit),
        )
        found = separations(
            ids,
            facts,
            (self._values(x[0]), self._values(x[1])),
            dict(zip(self.feature_names, (contrib[0] - contrib[1]).tolist(), strict=True)),
            ref,
            silent,
        )
        summary = comparison_summary(ids, scores, found, ranks)
        return PairExplanation(a, b, tuple(found), summary)

    def _baseline(self, reference: np.ndarray) -> np.ndarray:
        """The mean contribution of each feature among the posting's candidates.

        TreeSHAP measures a contribution against the training data's average candidate, so a
        CV closer to the posting than most of its candidates could still read "weighed against".
        Taken against this posting's own candidates instead, "in favour" means "lifted this
        candidate above the posting's average one", which is what a recruiter asks. Estimated
        on at most `_BASELINE_ROWS` rows spread over the reference.
        """
        if len(reference) == 0:
            return np.zeros(len(self.feature_names), dtype=np.float32)
        rows = np.unique(np.linspace(0, len(reference) - 1, _BASELINE_ROWS).astype(np.intp))
        base: np.ndarray = self.contributions(reference[rows]).mean(axis=0)
        return base

    def _columns(self, m: np.ndarray) -> dict[str, np.ndarray]:
        return {name: m[:, j] for j, name in enumerate(self.feature_names)}

    def _values(self, row: np.ndarray) -> dict[str, float]:
        return {name: float(row[j]) for j, name in enumerate(self.feature_names)}

    def _explain_row(
        self,
        posting: Posting,
        candidate: Candidate,
        row: np.ndarray,
        contrib: np.ndarray,
        reference: Mapping[str, np.ndarray],
    ) -> tuple[Explanation, frozenset[str]]:
        """One candidate's explanation, and the topics left out for this posting."""
        fit = fit_summary(posting, candidate)
        facts = candidate_facts(posting, candidate, fit)
        has_location = bool(phrase_key(posting.location)) or posting.remote
        silent = silent_topics(facts, has_location, reference)
        values = self._values(row)
        spoken = [j for j, n in enumerate(self.feature_names) if topic_of(n).key not in silent]
        weights = weigh({self.feature_names[j]: float(contrib[j]) for j in spoken}, silent)
        reasons = candidate_reasons(facts, weights, values, reference, silent, self.n_top)
        order = sorted(spoken, key=lambda j: -abs(float(contrib[j])))[: self.n_top]
        top = tuple(
            FeatureContribution(self.feature_names[j], float(row[j]), float(contrib[j]))
            for j in order
            if contrib[j] != 0
        )
        return Explanation(reasons=tuple(reasons), fit=fit, top_features=top), silent


class TreeExplainer(ContributionExplainer):
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
        super().__init__(feature_names, n_top)
        self.booster_path = Path(booster_path)
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
