"""Fitting the ranker on a Dask cluster (`ranker train --dask`) with lightgbm.dask.DaskLGBMRanker.

Only the fit moves: `training.train.train_model` builds the same feature rows, then exports the
booster to ONNX, checks parity, evaluates, checks the gates and writes the same card, whichever
`Fitter` it is given. This module is the other fitter.

Partitions: lambdarank's gradients compare rows of one query, so every posting's rows must sit
in one partition. The train set (rows already contiguous by posting) is cut between postings
into one partition per worker, each holding about the same number of rows, with the group
sizes of its own postings beside it; each partition is sent to its own worker.

Early stopping: lightgbm.dask has none (it does not support validation-based callbacks). Rather
than train a guessed number of rounds, the cluster trains `TrainConfig.max_rounds`, then this
process computes validation NDCG@10 after every iteration, exactly as LightGBM's early stopping
computes it (same gains, same tie order, a posting without a relevant applicant counting 1), and
keeps the iteration early stopping would have kept (the best one, stopping once
`early_stopping_rounds` pass without a strictly better score). The booster is cut to it. The
cost is the rounds past that point, trained and thrown away; the model card records both counts.

Reproducibility: not to the byte, unlike a fit in one process. LightGBM's data-parallel learner
computes each feature's bins from the partition of one worker, chosen by the worker's rank, and
lightgbm.dask numbers the workers in the order Dask reports where the data sits, which varies
between runs; so two fits on the same data differ slightly (their scores still correlate at
0.96 or more on the test demo set). The model text also names the machines and ports it used.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np

from ranker.features import FEATURE_NAMES
from training.dataset import RankingSet
from training.train import FittedBooster, TrainConfig, check_trainable

if TYPE_CHECKING:
    from distributed import Client

NDCG_AT = 10
"""The cut-off of the validation metric that chooses the iteration (`TrainConfig.params`)."""

CLUSTER_PARAMS = ("num_threads", "metric", "eval_at")
"""Left out of the cluster's parameters: lightgbm.dask sets the threads from each worker's
own, and nothing is evaluated on the cluster (the iteration is chosen here)."""


def posting_partitions(group: Sequence[int] | np.ndarray, parts: int) -> list[tuple[int, int]]:
    """`parts` runs of consecutive postings, `[first, end)` by posting index, with about the same
    number of rows each: a posting is never split, and no run is empty (fewer postings than
    `parts` give one run per posting)."""
    sizes = np.asarray(group, dtype=np.int64)
    n = len(sizes)
    if n == 0:
        return []
    parts = max(1, min(parts, n))
    ends = np.cumsum(sizes)
    bounds = [0]
    for k in range(1, parts):
        target = ends[-1] * k / parts
        i = int(np.searchsorted(ends, target))  # first posting ending at or after the target
        cut = i if i > 0 and target - ends[i - 1] < ends[i] - target else i + 1
        # Leave at least one posting for this run and for each run still to come.
        bounds.append(min(max(cut, bounds[-1] + 1), n - (parts - k)))
    bounds.append(n)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def lightgbm_ndcg(
    labels: np.ndarray, scores: np.ndarray, gains: np.ndarray, k: int = NDCG_AT
) -> float:
    """NDCG@k of one query as LightGBM's metric computes it: `gains[label]`, ranks by score with
    ties in row order (a stable sort), and 1.0 for a query without any gain to find."""
    g = gains[labels]
    ideal = np.sort(g)[::-1][:k]
    discount = 1.0 / np.log2(np.arange(2, len(ideal) + 2))
    best = float(ideal @ discount)
    if best <= 0:
        return 1.0
    order = np.argsort(-scores, kind="stable")[:k]
    return float(g[order] @ discount[: len(order)]) / best


def validation_curve(
    booster: lgb.Booster, valid: RankingSet, label_gain: Sequence[float], k: int = NDCG_AT
) -> np.ndarray:
    """Mean validation NDCG@k after each iteration of `booster` (index i: i + 1 trees)."""
    gains = np.asarray(label_gain, dtype=np.float64)
    labels = np.asarray(valid.y, dtype=np.int64)
    queries = [rows for _, rows in valid.queries()]
    scores = np.zeros(len(labels))
    curve = np.empty(booster.current_iteration())
    for it in range(len(curve)):
        # Each tree's contribution once, summed: the scores after it+1 trees.
        scores += booster.predict(valid.x, start_iteration=it, num_iteration=1, raw_score=True)
        curve[it] = np.mean([lightgbm_ndcg(labels[q], scores[q], gains, k) for q in queries])
    return curve


def early_stopping_choice(curve: Sequence[float] | np.ndarray, patience: int) -> int:
    """The iteration (1-based) `lightgbm.early_stopping(patience)` keeps on this curve: the best
    score so far, training stopping once `patience` iterations pass without a strictly better
    one (a later, higher peak after such a stop is not taken, as it would not be seen)."""
    best, best_i = -np.inf, 0
    for i, score in enumerate(curve):
        if score > best:
            best, best_i = score, i
        elif i - best_i >= patience:
            break
    return best_i + 1


def _num_machines(booster: lgb.Booster) -> int:
    """How many machines trained `booster` (its parameters as stored in its model text)."""
    found = re.search(r"^\[num_machines: (\d+)\]$", booster.model_to_string(), re.MULTILINE)
    return int(found.group(1)) if found else 1


@dataclass(frozen=True)
class DaskFitter:
    """A `training.train.Fitter` on a Dask cluster: `train_model(..., fit=DaskFitter(client))`."""

    client: Client
    partitions: int | None = None
    """Partitions of the train set; default one per worker."""

    def __call__(
        self,
        sets: Mapping[str, RankingSet],
        config: TrainConfig,
        weights: np.ndarray | None = None,
    ) -> FittedBooster:
        import dask.array as da
        from dask.delayed import delayed
        from lightgbm.dask import DaskLGBMRanker

        train, valid = sets["train"], sets["valid"]
        check_trainable(train)
        workers = sorted(self.client.scheduler_info()["workers"])
        runs = posting_partitions(train.group, self.partitions or len(workers))
        row_at = np.concatenate([[0], np.cumsum(train.group)]).astype(np.int64)
        arrays: dict[str, list[Any]] = {"x": [], "y": [], "group": [], "weight": []}
        held: list[Any] = []  # the scattered pieces, kept until the fit is done
        for i, (first, end) in enumerate(runs):
            rows = slice(int(row_at[first]), int(row_at[end]))
            pieces = {"x": train.x[rows], "y": train.y[rows], "group": train.group[first:end]}
            if weights is not None:
                pieces["weight"] = weights[rows]
            # hash=False: fresh keys every fit; content-hashed keys would collide with those of
            # an earlier fit on the same rows while the scheduler is still releasing them.
            futures = self.client.scatter(
                list(pieces.values()), workers=[workers[i % len(workers)]], hash=False
            )
            held += futures
            for (name, piece), future in zip(pieces.items(), futures, strict=True):
                arrays[name].append(
                    da.from_delayed(delayed(future), shape=piece.shape, dtype=piece.dtype)
                )
        params = {k: v for k, v in config.params().items() if k not in CLUSTER_PARAMS}
        model = DaskLGBMRanker(client=self.client, n_estimators=config.max_rounds, **params)
        with warnings.catch_warnings():
            # The scikit-learn wrapper's default n_jobs, which lightgbm.dask replaces anyway.
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
            model.fit(
                da.concatenate(arrays["x"]),
                da.concatenate(arrays["y"]),
                group=da.concatenate(arrays["group"]),
                sample_weight=da.concatenate(arrays["weight"]) if weights is not None else None,
                feature_name=list(FEATURE_NAMES),
            )
        del held
        booster = model.booster_
        rounds = booster.current_iteration()
        fitting: dict[str, Any] = {
            "engine": "lightgbm.dask.DaskLGBMRanker",
            # As LightGBM ran it (Dask might have moved a partition), not as it was planned.
            "workers": _num_machines(booster),
            "partitions": [
                {"postings": end - first, "rows": int(row_at[end] - row_at[first])}
                for first, end in runs
            ],
            "rounds_trained": rounds,
        }
        if valid.n_queries:
            curve = validation_curve(booster, valid, config.label_gain)
            best = early_stopping_choice(curve, config.early_stopping_rounds)
            fitting["validation_ndcg@10"] = round(float(curve[best - 1]), 4)
            fitting["rule"] = (
                "lightgbm.dask has no early stopping: every round trained, then the iteration "
                f"early stopping (patience {config.early_stopping_rounds}) would keep, by "
                "validation NDCG@10 computed after each round"
            )
        else:
            best = rounds
            fitting["rule"] = "no validation postings: every round trained"
        fitting["best_iteration"] = best
        return FittedBooster.truncated(booster, best, fitting)
