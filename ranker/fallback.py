"""The fallback ranker: what the service ranks with before any trained version is promoted.

An ATS can connect on day one, before any outcome exists to train on. Until the first version
passes the promotion gates (`training.gates`) and is promoted, the service ranks with one of
two transparent rules, chosen by `Settings.fallback`, and says so in every response's
`model_version`, in `GetModelInfo` and in the decision log:

- `hand_rule` (default), served as `fallback-hand-rule`: a recruiter's rule of thumb over the
  same features the models use, `HAND_RULE` (weights fixed a priori, never fitted). Each
  candidate's explanation gives the usual fit reasons (skills, experience, location) and each
  term's exact additive share of the score.
- `retrieval`, served as `fallback-retrieval`: the search order itself (cosine of the posting
  vector and the CV's document vector); every score is 0 and ties follow the similarity.
- `none`: no fallback; the service is NOT_SERVING until a version is promoted.

`training.evaluate` imports `HAND_RULE` from here for its `hand_rule` baseline, so the rule the
service falls back on is exactly the baseline every trained version is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ranker.domain import Posting
from ranker.errors import InvalidInput
from ranker.explain import ContributionExplainer, Explanation
from ranker.features import FEATURE_NAMES, FEATURES_VERSION, FeatureBuilder
from ranker.lexicon import Lexicon
from ranker.prepared import PreparedCandidate

HAND_RULE: dict[str, float] = {
    "required_coverage": 3.0,
    "location_fit": 1.0,
    "meets_min_years": 1.0,
    "dense_cosine": 0.5,
}
"""A recruiter's rule of thumb, weights fixed a priori (never fitted to any data):

- required skills are the first screen, so covering all of them (3) outweighs location and
  experience together (1 + 1): a candidate missing a third of the required skills loses as much
  as one in the wrong place;
- location fit (1 same place or remote, 0.5 relocating, 0 otherwise) and meeting the minimum
  years (1 or 0; `1 - under_min_years`) are pass/fail checks of equal weight;
- dense cosine (typically 0.2..0.8) at 0.5 only orders candidates equal on the checks: its whole
  range is worth less than one check.
"""

HAND_RULE_VERSION = "fallback-hand-rule"
RETRIEVAL_VERSION = "fallback-retrieval"
FALLBACK_VERSIONS = {"hand_rule": HAND_RULE_VERSION, "retrieval": RETRIEVAL_VERSION}
"""`Settings.fallback` -> the version name the fallback is served under."""


def _column(x: np.ndarray, names: Sequence[str], name: str) -> np.ndarray:
    try:
        return np.asarray(x[:, list(names).index(name)], dtype=np.float64)
    except ValueError:
        raise InvalidInput(
            f"the hand rule needs the feature {name!r}, which the features {list(names)} lack; "
            "update ranker.fallback.HAND_RULE to the new features"
        ) from None


def hand_rule_terms(x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Each `HAND_RULE` term's share of the score of each feature row (weight x value), keyed
    by the feature it reads (`meets_min_years` reads `under_min_years`)."""
    terms: dict[str, np.ndarray] = {}
    for name, weight in HAND_RULE.items():
        if name == "meets_min_years":
            terms["under_min_years"] = weight * (1.0 - _column(x, names, "under_min_years"))
        else:
            terms[name] = weight * _column(x, names, name)
    return terms


def hand_rule(x: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """`HAND_RULE`'s score of each feature row."""
    score = np.zeros(len(x), dtype=np.float64)
    for term in hand_rule_terms(x, names).values():
        score += term
    return score


class HandRuleScorer:
    """Scores feature rows with `HAND_RULE` (the `OnnxScorer` interface)."""

    def __init__(self, feature_names: Sequence[str] = FEATURE_NAMES) -> None:
        self.feature_names = tuple(feature_names)
        self.n_features: int | None = len(self.feature_names)

    def score(self, x: np.ndarray) -> np.ndarray:
        return hand_rule(np.asarray(x), self.feature_names).astype(np.float32)


class RetrievalScorer:
    """Scores every row 0, so the ranking keeps the retrieval order (ties go to similarity)."""

    n_features: int | None = None

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.zeros(len(x), dtype=np.float32)


class FallbackExplainer(ContributionExplainer):
    """Reasons for a fallback ranking, worded like a trained model's: for the hand rule the
    contributions are its terms' exact shares of the score; retrieval order has none, so only
    the fit facts and similarities speak."""

    def __init__(self, rule: str, feature_names: Sequence[str] = FEATURE_NAMES) -> None:
        super().__init__(feature_names)
        self.rule = rule

    def explain(
        self,
        posting: Posting,
        candidates: Sequence[PreparedCandidate],
        x: np.ndarray,
        reference: np.ndarray | None = None,
    ) -> list[Explanation]:
        """The usual reasons, and a last one saying which rule ranked (no model is trained yet)."""
        note = (
            "Ranked by the fallback rule of thumb (no trained model in service): required skills, "
            "location, minimum years, then similarity"
            if self.rule == "hand_rule"
            else "Ranked by search similarity (no trained model in service)"
        )
        return [
            replace(e, reasons=(*e.reasons, note))
            for e in super().explain(posting, candidates, x, reference)
        ]

    def contributions(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), len(self.feature_names)), dtype=np.float32)
        if self.rule == "hand_rule" and len(x):
            for name, values in hand_rule_terms(np.asarray(x), self.feature_names).items():
                out[:, self.feature_names.index(name)] = values
        return out


@dataclass(frozen=True)
class FallbackBundle:
    """The fallback ranker in the shape the model slot serves (a `ModelBundle`'s fields)."""

    version: str
    rule: str
    scorer: HandRuleScorer | RetrievalScorer
    builder: FeatureBuilder
    feature_names: tuple[str, ...] = FEATURE_NAMES
    card: dict[str, Any] = field(default_factory=dict)


def fallback_bundle(rule: str) -> FallbackBundle:
    """The fallback named by `Settings.fallback` (`hand_rule` or `retrieval`)."""
    if rule not in FALLBACK_VERSIONS:
        raise InvalidInput(
            f"no fallback ranker {rule!r}; set RANKER_FALLBACK to hand_rule, retrieval or none"
        )
    version = FALLBACK_VERSIONS[rule]
    # BM25 is in no fallback rule; a one-document lexicon keeps the builder's contract (idf of
    # every term = that of an unseen term) without any training data.
    builder = FeatureBuilder(Lexicon(n_docs=1, avgdl=1.0, df={}))
    scorer: HandRuleScorer | RetrievalScorer = (
        HandRuleScorer() if rule == "hand_rule" else RetrievalScorer()
    )
    card = {
        "version": version,
        "fallback": True,
        "rule": rule,
        "description": (
            "fallback ranker (no trained version promoted yet): "
            + (
                " + ".join(f"{w:g} {n}" for n, w in HAND_RULE.items())
                if rule == "hand_rule"
                else "retrieval order (cosine of posting and CV vectors)"
            )
        ),
        "feature_names": list(FEATURE_NAMES),
        "features_version": FEATURES_VERSION,
        "weights": dict(HAND_RULE) if rule == "hand_rule" else {},
    }
    return FallbackBundle(version=version, rule=rule, scorer=scorer, builder=builder, card=card)
