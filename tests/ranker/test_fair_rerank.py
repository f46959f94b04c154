"""DetConstSort: prefix minimums hold, known orders, inputs refused."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ranker.errors import InvalidInput
from ranker.fair_rerank import det_const_sort, prefix_minimums


def _meets_minimums(order: list[int], cats: list[str], targets: dict[str, float]) -> bool:
    available = Counter(cats)
    return all(
        sum(1 for i in order[:j] if cats[i] == c) >= min(need, available[c])
        for j in range(1, len(order) + 1)
        for c, need in prefix_minimums(targets, j).items()
    )


def test_known_example_worked_by_hand() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    cats = ["A", "A", "A", "A", "B", "B"]
    # Prefix 2 needs one B: B's best (0.5) goes second; prefix 4 needs two.
    assert det_const_sort(scores, cats, {"A": 0.5, "B": 0.5}, 4) == [0, 4, 1, 5]
    # Without a target for B the score order stands.
    assert det_const_sort(scores, cats, {"A": 1.0}, 4) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("cats", "k"),
    [
        (["A", "B", "A", "B", "A", "B", "A", "A"], 6),  # interleaved 50/50
        (["B", "A", "A", "A", "A", "A", "A", "A", "A", "A", "B"], 10),  # one B, on top
        (["A", "B", "C", "A", "A", "B", "A", "C", "A", "A", "B"], 10),
    ],
)
def test_targets_equal_to_the_observed_top_k_leave_the_order_unchanged(
    cats: list[str], k: int
) -> None:
    scores = [float(len(cats) - i) for i in range(len(cats))]  # already in score order
    observed = Counter(cats[:k])
    targets = {c: n / k for c, n in observed.items()}
    assert _meets_minimums(list(range(k)), cats, targets)
    assert det_const_sort(scores, cats, targets, k) == list(range(k))


def test_observed_proportions_still_reorder_when_a_prefix_falls_short() -> None:
    # Top 4 is half B, half C, but the top 2 holds no C: the prefix minimum moves one up.
    # (So "targets = observed top-k shares" leaves the order alone only when every prefix
    # already meets its minimum, as in the cases above.)
    out = det_const_sort([4.0, 3.0, 2.0, 1.0], ["B", "B", "C", "C"], {"B": 0.5, "C": 0.5}, 4)
    assert out == [0, 2, 1, 3]


def test_every_prefix_meets_its_minimum_on_random_instances() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        n = rng.randint(1, 25)
        k = rng.randint(1, n)
        cats = [rng.choice("ABC") for _ in range(n)]
        scores = [round(rng.random(), 2) for _ in range(n)]  # ties included
        raw = [rng.random() for _ in "ABC"]
        targets = {c: r / sum(raw) for c, r in zip("ABC", raw, strict=True)}
        out = det_const_sort(scores, cats, targets, k)
        assert len(out) == k and len(set(out)) == k
        assert _meets_minimums(out, cats, targets), (cats, scores, targets, k, out)
        # Within a category the better-scored item always comes first.
        for c in "ABC":
            mine = [scores[i] for i in out if cats[i] == c]
            assert mine == sorted(mine, reverse=True)


def test_runs_out_of_a_category_and_fills_from_the_rest() -> None:
    # Targets want half B but only one B exists; unlisted C fills the remaining places.
    out = det_const_sort(
        [5.0, 4.0, 3.0, 2.0, 1.0], ["A", "B", "C", "C", "A"], {"A": 0.5, "B": 0.5}, 5
    )
    assert sorted(out) == [0, 1, 2, 3, 4]
    assert set(out[:3]) == {0, 1, 4}  # the constrained categories come first
    assert det_const_sort([1.0, 2.0], ["A", "B"], {"A": 0.5, "B": 0.5}, 10) == [1, 0]
    assert det_const_sort([], [], {"A": 1.0}, 3) == []


def test_refuses_malformed_input() -> None:
    with pytest.raises(InvalidInput, match="sum to"):
        det_const_sort([1.0], ["A"], {"A": 0.7, "B": 0.7}, 1)
    with pytest.raises(InvalidInput, match="one per item"):
        det_const_sort([1.0, 2.0], ["A"], {"A": 1.0}, 1)
    with pytest.raises(InvalidInput, match="non-negative"):
        det_const_sort([1.0], ["A"], {"A": -0.1}, 1)
    with pytest.raises(InvalidInput, match="finite"):
        det_const_sort([float("nan")], ["A"], {"A": 1.0}, 1)
