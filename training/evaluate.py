"""Evaluation on held-out postings in two views, with baselines and paired comparisons.

**Applicant view**: each held-out posting's applicants (at least two), ranked by each ranker,
scored against their graded labels (`training.labels`). Their features are the rows serving would
build for them: relative to the set the pool view retrieves, with the pool's BM25 statistics.

**Pool view**, what the service does: for each held-out posting, retrieve `retrieve_n` candidates
from *every* stored candidate by cosine of the posting vector and the candidates' document vectors
(`training.pool.Pool`: `ranker.index.FaissIndex`, the service's storage setting), build features
with the model version's builder (BM25 on the pool's statistics, as the live lexicon holds them;
the retrieved set as the reference set), score with its ONNX scorer and rank. The posting's applicants keep their
labels; candidates who did not apply are unlabelled and count as not relevant (label 0). Recall
is over *all* the posting's relevant applicants, so those retrieval misses count as misses.

**Rankers**: the model version(s), and the baselines a skeptic would pick (`BASELINES`): the
service's own retrieval order, a hand-weighted rule (`HAND_RULE`) and three single features.

**Statistics** (`training.metrics`): every metric is the mean over postings with a 95%
percentile-bootstrap interval over postings, the number of postings it is defined on, and the
number it is not (e.g. no applicant reached the relevance threshold). Every comparison of the
first ranker with another is a paired difference on the same postings; an interval that includes
0 is reported as "no significant difference". Ties: expectation over the orders of tied
candidates, one rule for every ranker (`TIE_RULE`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from ranker.config import Settings
from ranker.domain import Outcome
from ranker.errors import InvalidInput, RankerError
from ranker.fallback import HAND_RULE, hand_rule
from ranker.features import FeatureBuilder, ReferenceStats
from ranker.index import Storage
from ranker.lexicon import TermStatistics
from ranker.prepared import PreparedCandidate, PreparedPosting
from ranker.registry import ModelBundle
from training.dataset import (
    CandidateLike,
    PostingLike,
    RankingSet,
    data_sha256,
    posting_times,
    prepare_all,
    time_split,
)
from training.labels import RELEVANT_LABEL, as_utc, labels_from_outcomes
from training.metrics import (
    BOOTSTRAP_LEVEL,
    BOOTSTRAP_SAMPLES,
    Estimate,
    PostingMetrics,
    posting_metrics,
    served_metrics,
)
from training.pool import Pool

APPLICANT_VIEW = "applicants"
POOL_VIEW = "pool"
VIEWS = (APPLICANT_VIEW, POOL_VIEW)

RETRIEVAL = "retrieval"
HAND_RULE_NAME = "hand_rule"
# The hand rule lives in `ranker.fallback`: the service ranks with it before any version is
# promoted, so the baseline every version is compared with is exactly that fallback.
FEATURE_BASELINES = ("dense_cosine", "bm25", "required_coverage")
"""Single-feature baselines: rank by the column, higher first."""
BASELINES: dict[str, str] = {
    RETRIEVAL: "the service's retrieval order: cosine of the posting vector and the CV's document "
    "vector as the FAISS index holds it (the pool view's first stage)",
    HAND_RULE_NAME: "3 required_coverage + 1 location_fit + 1 meets_min_years + 0.5 dense_cosine "
    "(weights set a priori as a recruiter's rule of thumb, not fitted)",
    **{name: f"the `{name}` feature alone" for name in FEATURE_BASELINES},
}
"""Every baseline and what it ranks by."""

HEADLINE: dict[str, tuple[str, ...]] = {
    APPLICANT_VIEW: ("ndcg@10", "mrr", "recall@10"),
    POOL_VIEW: ("recall@10", "recall@100", "ndcg@10", "mrr"),
}
"""Metrics whose paired differences are printed; every metric's is stored."""

TIE_RULE = (
    "Tied scores: every metric is the exact expectation over all orders of the tied candidates "
    "(each equally likely), the same rule for every ranker, so no ranker gains from a lucky "
    "tie-break."
)
UNLABELLED_NOTE = (
    "Pool view: candidates who did not apply to the posting have no label and count as not "
    "relevant (label 0), so a good match who never applied is scored like a poor one; recall is "
    "over all of the posting's relevant applicants, so those retrieval misses count as misses."
)
FEW_POSTINGS = 20
"""Below this many postings a view carries `FEW_POSTINGS_WARNING`."""
FEW_POSTINGS_WARNING = (
    "few postings: percentile-bootstrap intervals over so few are too narrow (they undercover), "
    "so read every interval and verdict here as indicative only"
)
INTERVALS_NOTE = (
    f"Means over postings with {BOOTSTRAP_LEVEL:.0%} percentile-bootstrap intervals "
    f"({BOOTSTRAP_SAMPLES} resamples of the postings); n = postings the metric is defined on. "
    "Differences are paired (same postings); one whose interval includes 0 is reported as "
    "'no significant difference'."
)


class Scorer(Protocol):
    """Scores feature rows; `ranker.scorer.OnnxScorer` is the one serving uses."""

    def score(self, x: np.ndarray) -> np.ndarray: ...


class RankingModel(Protocol):
    """A model version as it is served: its feature builder and its scorer (e.g. `ModelBundle`)."""

    @property
    def builder(self) -> FeatureBuilder: ...
    @property
    def scorer(self) -> Scorer: ...
    @property
    def feature_names(self) -> tuple[str, ...]: ...


def _column(x: np.ndarray, names: Sequence[str], name: str) -> np.ndarray:
    try:
        return np.asarray(x[:, list(names).index(name)], dtype=np.float64)
    except ValueError:
        raise InvalidInput(
            f"the baselines need the feature {name!r}, which the model's features "
            f"{list(names)} lack; update training.evaluate's baselines to the new features"
        ) from None


def baseline_scores(x: np.ndarray, names: Sequence[str], sims: np.ndarray) -> dict[str, np.ndarray]:
    """Every baseline's scores of the rows `x`, `sims` being their retrieval similarities."""
    out = {RETRIEVAL: np.asarray(sims, dtype=np.float64), HAND_RULE_NAME: hand_rule(x, names)}
    for name in FEATURE_BASELINES:
        out[name] = _column(x, names, name)
    return out


def _all_scores(
    models: Mapping[str, RankingModel],
    posting: PreparedPosting,
    cands: Sequence[PreparedCandidate],
    sims: np.ndarray,
    lexicon: TermStatistics,
    references: Mapping[str, ReferenceStats] | None = None,
) -> dict[str, np.ndarray]:
    """Each model's and each baseline's scores of `cands` (baselines on the first model's rows).

    `references`: each model's reference statistics of the posting; None when `cands` are the
    retrieved set (they are then the reference set, as in serving).
    """
    out: dict[str, np.ndarray] = {}
    first: np.ndarray | None = None
    for name, model in models.items():
        ref = None if references is None else references[name]
        x = model.builder.build(posting, cands, ref, lexicon=lexicon)
        first = x if first is None else first
        out[name] = np.asarray(model.scorer.score(x), dtype=np.float64)
    assert first is not None
    lead = next(iter(models.values()))
    return out | baseline_scores(first, lead.feature_names, sims)


def _estimate_dict(e: Estimate) -> dict[str, Any]:
    def num(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 6)

    return {"mean": num(e.mean), "ci_low": num(e.low), "ci_high": num(e.high), "n": e.n}


@dataclass(frozen=True)
class View:
    """The per-posting metrics of every ranker in one view, and facts about its postings."""

    name: str
    rankers: dict[str, PostingMetrics]
    facts: dict[str, Any] = field(default_factory=dict)

    def differences(self, primary: str) -> dict[str, dict[str, Estimate]]:
        """`primary - other` paired on the same postings, per other ranker and metric."""
        lead = self.rankers[primary]
        return {
            f"{primary} - {other}": {m: lead.versus(pm, m) for m in lead.metric_names}
            for other, pm in self.rankers.items()
            if other != primary
        }

    def as_dict(self, primary: str) -> dict[str, Any]:
        metrics: dict[str, dict[str, Any]] = {}
        for ranker, pm in self.rankers.items():
            metrics[ranker] = {
                m: _estimate_dict(pm.estimate(m)) | {"undefined": pm.n_undefined(m)}
                for m in pm.metric_names
            }
        differences = {
            pair: {m: _estimate_dict(e) | {"verdict": e.verdict} for m, e in per.items()}
            for pair, per in self.differences(primary).items()
        }
        return {**self.facts, "metrics": metrics, "differences": differences}


@dataclass(frozen=True)
class Evaluation:
    """Both views of the same held-out postings for a primary ranker, other versions, baselines."""

    primary: str
    posting_ids: tuple[str, ...]
    """Held-out postings with at least one labelled applicant in the store."""
    views: dict[str, View]
    retrieve_n: int
    index_storage: str

    def means(self, view: str = APPLICANT_VIEW) -> dict[str, dict[str, float | None]]:
        """ranker -> metric -> mean (no intervals): the short summary `ranker models list` reads."""
        out: dict[str, dict[str, float | None]] = {}
        for ranker, pm in self.views[view].rankers.items():
            out[ranker] = {m: _estimate_dict(pm.estimate(m))["mean"] for m in pm.metric_names}
        return out

    def as_dict(self) -> dict[str, Any]:
        """The JSON form the model card and `ranker evaluate`'s record hold (and print from)."""
        return {
            "primary": self.primary,
            "postings": len(self.posting_ids),
            "relevant_at_or_above": RELEVANT_LABEL,
            "retrieve_n": self.retrieve_n,
            "index_storage": self.index_storage,
            "ties": TIE_RULE,
            "intervals": INTERVALS_NOTE,
            "unlabelled": UNLABELLED_NOTE,
            "baselines": dict(BASELINES),
            "hand_rule_weights": dict(HAND_RULE),
            "views": {name: view.as_dict(self.primary) for name, view in self.views.items()},
        }


def evaluate_postings(
    models: Mapping[str, RankingModel],
    postings: Sequence[PreparedPosting],
    candidates: Mapping[str, PreparedCandidate],
    labels: Mapping[tuple[str, str], int],
    *,
    retrieve_n: int,
    index_storage: Storage,
    pool: Pool | None = None,
) -> Evaluation:
    """Both views for `postings`; the first of `models` is compared with every other ranker.

    `labels` are the graded labels of (posting, candidate) pairs; candidates missing from
    `candidates` (erased) are left out. `pool` defaults to every one of `candidates`.
    """
    if not models:
        raise InvalidInput("nothing to evaluate: pass at least one model")
    pool = pool if pool is not None else Pool.build(candidates.values(), index_storage)
    where = pool.position()
    by_posting: dict[str, dict[str, int]] = defaultdict(dict)
    for (pid, cid), label in labels.items():
        if cid in where:
            by_posting[pid][cid] = label
    app: dict[str, list[tuple[str, Mapping[str, float | None]]]] = defaultdict(list)
    served: dict[str, list[tuple[str, Mapping[str, float | None]]]] = defaultdict(list)
    counted: list[str] = []
    single = rows = relevant = relevant_retrieved = 0
    for p in postings:
        mine = by_posting.get(p.id)
        if not mine:
            continue  # no applicant left in the store: nothing to find
        counted.append(p.id)
        cands, sims = pool.retrieve(p, retrieve_n)
        got = {c.id for c in cands}
        y = np.array([mine.get(c.id, 0) for c in cands], dtype=np.int64)
        applied = np.array([c.id in mine for c in cands], dtype=bool)
        missed = np.array([lab for cid, lab in mine.items() if cid not in got], dtype=np.int64)
        relevant += sum(lab >= RELEVANT_LABEL for lab in mine.values())
        relevant_retrieved += int((y >= RELEVANT_LABEL).sum())
        for name, s in _all_scores(models, p, cands, sims, pool.lexicon).items():
            served[name].append((p.id, served_metrics(y, s, missed, applied, RELEVANT_LABEL)))
        if len(mine) < 2:
            single += 1  # one applicant ranks nothing
            continue
        # The applicants are scored against the same reference set as the retrieved ones: the
        # rows they would get if served.
        references = {
            name: m.builder.reference(p, cands, lexicon=pool.lexicon) for name, m in models.items()
        }
        among = np.array(sorted(where[cid] for cid in mine), dtype=np.int64)
        cands, sims = pool.retrieve(p, len(among), among)
        y = np.array([mine[c.id] for c in cands], dtype=np.int64)
        rows += len(cands)
        for name, s in _all_scores(models, p, cands, sims, pool.lexicon, references).items():
            app[name].append((p.id, posting_metrics(y, s, RELEVANT_LABEL)))

    def view(name: str, values: Mapping[str, list[Any]], facts: dict[str, Any]) -> View:
        rankers = {r: PostingMetrics.collect(v) for r, v in values.items()}
        lead = rankers.get(next(iter(models)), PostingMetrics({}))
        facts = {
            **facts,
            "postings_without_relevant": lead.n_undefined("mrr"),
            "postings_all_labels_zero": lead.n_undefined("ndcg@10"),
        }
        if facts["postings"] < FEW_POSTINGS:
            facts["warning"] = FEW_POSTINGS_WARNING
        return View(name, rankers, facts)

    applicant_view = view(
        APPLICANT_VIEW,
        app,
        {
            "description": "each held-out posting's applicants, ranked; graded labels",
            "postings": len(counted) - single,
            "postings_skipped_one_applicant": single,
            "candidates_ranked": rows,
        },
    )
    pool_view = view(
        POOL_VIEW,
        served,
        {
            "description": f"retrieve {retrieve_n} of all {len(pool)} stored candidates by "
            f"cosine (FAISS, {index_storage}), rerank; non-applicants unlabelled = not relevant",
            "postings": len(counted),
            "pool_candidates": len(pool),
            "relevant_applicants": relevant,
            "relevant_retrieved": relevant_retrieved,
            "unlabelled": UNLABELLED_NOTE,
        },
    )
    return Evaluation(
        primary=next(iter(models)),
        posting_ids=tuple(counted),
        views={APPLICANT_VIEW: applicant_view, POOL_VIEW: pool_view},
        retrieve_n=retrieve_n,
        index_storage=index_storage,
    )


def evaluate_set(data: RankingSet, scores: np.ndarray) -> dict[str, float | None]:
    """Mean applicant-view metrics of precomputed scores on a ranking set (no intervals)."""
    pm = PostingMetrics.collect(
        (pid, posting_metrics(data.y[rows], scores[rows], RELEVANT_LABEL))
        for pid, rows in data.queries()
    )
    return {m: _estimate_dict(pm.estimate(m))["mean"] for m in pm.metric_names}


def held_out_start(cards: Iterable[Mapping[str, Any]]) -> datetime:
    """The latest `test_start` of the cards: postings from then on trained none of the models.

    A model in service that is newer than the version evaluated was trained (or early-stopped)
    on some of the older version's test postings; comparing them there would be in-sample for it.
    """
    starts = []
    for card in cards:
        try:
            starts.append(as_utc(datetime.fromisoformat(card["data"]["split"]["test_start"])))
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidInput(
                f"model card of {card.get('version', '?')} records no split dates ({e}); "
                "retrain it with `ranker train`"
            ) from e
    if not starts:
        raise InvalidInput("no model version to evaluate; train one: `ranker train`")
    return max(starts)


HELD_OUT_RULE = (
    "postings created at or after the latest test_start of the versions compared, so none of "
    "them trained or early-stopped on these postings"
)


def held_out_postings(
    postings: Mapping[str, PreparedPosting], outcomes: Sequence[Outcome], start: datetime
) -> tuple[list[PreparedPosting], dict[tuple[str, str], int]]:
    """Postings with outcomes created at or after `start`, and their labels (every event)."""
    known = [o for o in outcomes if o.posting_id in postings]
    labelled = {o.posting_id for o in known}
    times = posting_times((postings[pid].posting for pid in sorted(labelled)), known)
    test_ids = time_split(times, at=(start, start)).test if times else ()
    if not test_ids:
        raise InvalidInput(
            f"no stored posting with outcomes was created on or after {start:%Y-%m-%d %H:%M}, "
            "after every compared version's training data; record outcomes of newer postings "
            "(`ranker ingest`) and evaluate again"
        )
    mine = set(test_ids)
    labels = labels_from_outcomes(o for o in known if o.posting_id in mine)
    return [postings[pid] for pid in test_ids], labels


@dataclass(frozen=True)
class Comparison:
    """Versions and baselines evaluated on the postings none of the versions has seen."""

    held_out_from: datetime
    evaluation: Evaluation
    left_out: dict[str, str]
    """Versions not compared, with the reason."""

    def record(self, versions: Sequence[str], data_sha: str) -> dict[str, Any]:
        """What `ranker evaluate` stores beside the evaluated version."""
        ev = self.evaluation.as_dict()
        return {
            "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "version": versions[0],
            "compared_with": list(versions[1:]),
            "left_out": dict(self.left_out),
            "held_out_from": self.held_out_from.isoformat(),
            "held_out_rule": HELD_OUT_RULE,
            "data_sha256": data_sha,
            **ev,
            "metrics": self.evaluation.means(),
        }


def compare_versions(
    bundles: Sequence[ModelBundle],
    candidates: Sequence[CandidateLike],
    postings: Sequence[PostingLike],
    outcomes: Sequence[Outcome],
    settings: Settings | None = None,
) -> Comparison:
    """Evaluate every bundle (`ModelBundle`s) and the baselines on postings none has seen.

    Each version builds features with its own lexicon; a later version whose features differ
    from the first one's, or that this code cannot serve (`ModelBundle.check`), is left out and
    the reason recorded. The first is named by its version, the others `<version> (in service)`.
    """
    settings = settings if settings is not None else Settings()
    models: dict[str, ModelBundle] = {}
    left_out: dict[str, str] = {}
    for i, bundle in enumerate(bundles):
        if i and bundle.feature_names != bundles[0].feature_names:
            left_out[bundle.version] = "its features differ from the evaluated version's"
            continue
        if i:
            try:
                bundle.check()
            except RankerError as e:
                left_out[bundle.version] = f"not servable by this code: {e}"
                continue
        models[bundle.version if i == 0 else f"{bundle.version} (in service)"] = bundle
    start = held_out_start(b.card for b in models.values())
    prepared_c, prepared_p = prepare_all(candidates, postings)
    chosen, labels = held_out_postings(prepared_p, outcomes, start)
    evaluation = evaluate_postings(
        models,
        chosen,
        prepared_c,
        labels,
        retrieve_n=settings.retrieve_n,
        index_storage=settings.index_storage,
    )
    return Comparison(held_out_from=start, evaluation=evaluation, left_out=left_out)


def data_digest(
    candidates: Sequence[CandidateLike],
    postings: Sequence[PostingLike],
    outcomes: Sequence[Outcome],
) -> str:
    """`training.dataset.data_sha256` of stored rows (the digest model cards record)."""
    return data_sha256((r.candidate for r in candidates), (r.posting for r in postings), outcomes)
