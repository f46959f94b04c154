"""Reweighing: category and label independent in the weighted data; LightGBM lambdarank honours it."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from ranker.errors import InvalidInput
from training.reweigh import UNKNOWN, reweigh


def test_weights_make_category_and_label_independent() -> None:
    cats = ["f"] * 10 + ["m"] * 10 + [UNKNOWN] * 3
    labels = [1] * 2 + [0] * 8 + [1] * 6 + [0] * 4 + [1, 0, 0]
    w = reweigh(cats, labels)
    # Kamiran-Calders by hand: N = 20, P(y=1) = 8/20; f: n_c = 10, n_c1 = 2 -> 10*8/(20*2) = 2.
    assert w[0] == pytest.approx(2.0)
    assert w[2] == pytest.approx(10 * 12 / (20 * 8))
    assert w[10] == pytest.approx(10 * 8 / (20 * 6))
    assert list(w[20:]) == [1.0, 1.0, 1.0]  # unknown rows untouched
    known = np.array(cats) != UNKNOWN
    assert w[known].mean() == pytest.approx(1.0)
    y = np.array(labels)
    for c in ("f", "m"):
        mask = np.array(cats) == c
        assert w[mask & (y == 1)].sum() / w[mask].sum() == pytest.approx(8 / 20)
        assert w[mask].sum() == pytest.approx(mask.sum())  # each category keeps its mass


def test_graded_labels_are_separate_cells_and_lengths_must_match() -> None:
    w = reweigh(["a", "a", "b", "b"], [0, 2, 0, 4])
    assert w.tolist() == pytest.approx([1.0, 0.5, 1.0, 0.5])
    assert reweigh([UNKNOWN], [1]).tolist() == [1.0]
    with pytest.raises(InvalidInput, match="one of each"):
        reweigh(["a"], [0, 1])


def _biased_ranking_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Postings of 20 applicants; feature 1 is a proxy of category b the labels penalise."""
    rng = np.random.default_rng(seed)
    xs, ys, cats = [], [], []
    for _ in range(150):
        b = rng.random(20) < 0.5
        skill = rng.normal(size=20)
        proxy = b.astype(float) + rng.normal(scale=0.1, size=20)
        relevant = skill - 1.2 * b + rng.normal(scale=0.5, size=20) > 0.3
        xs.append(np.column_stack([skill, proxy]))
        ys.append(relevant.astype(int))
        cats += ["b" if v else "a" for v in b]
    return np.vstack(xs), np.concatenate(ys), np.full(150, 20), cats


def _b_share_of_top5(weights: np.ndarray | None) -> float:
    x, y, group, cats = _biased_ranking_data(seed=3)
    params = {
        "objective": "lambdarank",
        "num_leaves": 7,
        "learning_rate": 0.1,
        "min_data_in_leaf": 20,
        "seed": 7,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "verbosity": -1,
    }
    booster = lgb.train(params, lgb.Dataset(x, y, group=group, weight=weights), num_boost_round=40)
    # Fresh postings with equal skill distributions: how often does b reach the top 5?
    tx, _, tgroup, tcats = _biased_ranking_data(seed=11)
    scores = booster.predict(tx)
    top = 0
    for start in range(0, len(tx), 20):
        order = np.argsort(-scores[start : start + 20], kind="stable")[:5]
        top += sum(tcats[start + i] == "b" for i in order)
    return top / (5 * len(tgroup))


def test_lightgbm_lambdarank_honours_row_weights() -> None:
    # LightGBM multiplies each row's lambdarank gradient and hessian by its weight; the
    # reweighed model ranks the penalised category higher than the unweighted one.
    x, y, _, cats = _biased_ranking_data(seed=3)
    plain = _b_share_of_top5(None)
    fair = _b_share_of_top5(reweigh(cats, y.tolist()))
    assert plain < 0.25
    assert fair > plain + 0.05
