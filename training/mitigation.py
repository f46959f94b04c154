"""Training-time bias mitigation (opt-in): reweighing the training rows by category × label.

`ranker train --mitigation reweigh` weights each TRAINING row by `training.reweigh.reweigh` over
(the candidate's category of one protected attribute, the row's graded label), so in the
weighted training data every category has the same label distribution. Validation and test
rows stay unweighted: early stopping and the evaluation measure plain NDCG.

The protected attribute is read from the protected table apart from the features (the training
command loads it separately) and used only to compute the weights: it never becomes a feature,
and the model it trains scores candidates without it.

Graded labels (0..4), not relevant/not: the biased process acts at screening (label 1) and at
interview (label 2), and a cut at one label would leave the other stage's disparity in the
weighted data. Categories under `min_share` of the training rows keep weight 1 (as unknown
rows do): their cells are a handful of rows and their weights would be noise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ranker.errors import InvalidInput
from training.audit import UNKNOWN, category_of
from training.dataset import RankingSet
from training.reweigh import reweigh

Mitigation = Literal["none", "reweigh"]
MITIGATIONS: tuple[Mitigation, ...] = ("none", "reweigh")


@dataclass(frozen=True)
class MitigationConfig:
    """Which training-time mitigation to apply, and over which attribute."""

    method: Mitigation = "none"
    attribute: str = "sex"
    min_share: float = 0.02
    """Categories under this share of the training rows are left at weight 1."""

    def __post_init__(self) -> None:
        if self.method not in MITIGATIONS:
            raise InvalidInput(
                f"unknown mitigation {self.method!r}; use one of {', '.join(MITIGATIONS)}"
            )


def training_weights(
    train: RankingSet,
    protected: Mapping[str, Mapping[str, str]] | None,
    config: MitigationConfig,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Per-row weights of the training set (None: unweighted) and the card's record of them."""
    if config.method == "none":
        return None, {"method": "none"}
    if not protected:
        raise InvalidInput(
            "--mitigation reweigh needs the protected attributes (protected.jsonl, loaded by "
            "`ranker ingest`) to weigh by; load them or train without mitigation"
        )
    cats = [category_of(protected, cid, config.attribute) for cid in train.candidate_ids]
    counts = Counter(cats)
    n = len(cats)
    small = sorted(c for c, m in counts.items() if c != UNKNOWN and m < config.min_share * n)
    cats = [UNKNOWN if c in small else c for c in cats]
    labels = [int(y) for y in train.y]
    weights = reweigh(cats, labels)
    cells: dict[str, float] = {}
    for c, y, w in zip(cats, labels, weights.tolist(), strict=True):
        if c != UNKNOWN:
            cells[f"{c} / label {y}"] = round(float(w), 4)
    record = {
        "method": "reweigh",
        "reference": "Kamiran & Calders 2012: w = P(category) P(label) / P(category, label)",
        "attribute": config.attribute,
        "labels": "graded 0..4",
        "applied_to": f"training split only ({n} rows); validation and test unweighted",
        "left_at_weight_1": {
            "unknown_rows": int(counts.get(UNKNOWN, 0)),
            "small_categories": small,
            "min_share": config.min_share,
        },
        "weights": {
            "min": round(float(weights.min()), 4) if n else None,
            "max": round(float(weights.max()), 4) if n else None,
        },
        "cells": dict(sorted(cells.items())),
    }
    return weights, record
