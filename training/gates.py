"""Promotion gates: what a new model version must show before it may replace the one in service.

Checked by `ranker train` (before its automatic first promotion, or `--promote`) and stored with
the version as `gates.json` and in its model card; `ranker models promote` refuses a version
whose stored gates failed or were measured against another version than the one now in service
(`ranker gates VERSION` measures them again). `--force --reason TEXT` overrides, recorded with
the actor in the registry history.

The gates, on the held-out postings of the evaluation's **pool view** (what the service does:
retrieve from every stored candidate, rerank; `training.evaluate`), thresholds from
`Settings.gate_*`:

1. `held_out_postings`: at least `gate_min_postings` postings (default 30); fewer give
   intervals too wide, and too narrow in truth (percentile bootstrap undercovers), to decide on.
2. `onnx_parity`: the ONNX model reproduces LightGBM within `PARITY_TOLERANCE` (checked at
   export, which refuses the model otherwise; surfaced here so the record is complete).
3. `beats_retrieval`: NDCG@10 paired difference new - retrieval order, lower end of its 95%
   bootstrap interval above 0: the reranker must add something to the search it reranks.
4. `vs_in_service`: NDCG@10 paired difference new - the version in service (or, before any is
   promoted, the fallback ranker the service runs: `hand_rule` or `retrieval`). Rule
   `not_worse` (default): the interval's upper end is not below 0, i.e. not significantly
   worse. Rule `beats`: the lower end is above 0. Why `not_worse` by default: most retrains
   refresh the same model on newer outcomes, and ~30-100 postings resolve differences of a few
   NDCG points only, so demanding significance would freeze the first version in service
   forever; a regression large enough to measure is still refused, and the comparison is
   always shown. Teams that want every promotion to be a proven gain set `beats`.
5. `impact_ratio_floor`: in the LL144 audit of the new version's pool-view rankings
   (`training.audit.audit_rankings`, selection = top 10, sex and race/ethnicity), no
   category's impact ratio significantly below `gate_impact_floor` (default 0.8, the
   four-fifths rule): its whole 95% interval below it (the audit's `significant` flag).
6. `impact_ratio_vs_service`: no category's impact ratio more than `gate_impact_margin`
   (default 0.05) below the in-service ranker's on the same postings (point estimates: a
   drop is judged against the ranker it would replace, whose ratios carry the same noise).

Without protected attributes in the store the two audit gates pass with "not measured".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from ranker.config import Settings
from ranker.errors import RankerError
from ranker.fallback import FALLBACK_VERSIONS, fallback_bundle
from ranker.features import FEATURE_NAMES
from ranker.prepared import PreparedCandidate, PreparedPosting
from ranker.registry import ModelBundle
from ranker.scorer import PARITY_TOLERANCE
from training.audit import AuditConfig, AuditMeta, AuditResult, Ranking, audit_rankings
from training.evaluate import HAND_RULE_NAME, POOL_VIEW, RETRIEVAL, Evaluation, RankingModel
from training.metrics import Estimate
from training.pool import Pool

GATE_METRIC = "ndcg@10"
"""The pool-view metric the comparison gates decide on."""
AUDITED: tuple[str, ...] = ("sex", "race_ethnicity")
"""Protected dimensions whose impact ratios the gates check (their intersection is not gated:
its categories are small and its intervals too wide to decide on)."""


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds of the promotion gates (defaults: `Settings.gate_*`)."""

    min_postings: int = 30
    vs_service: Literal["not_worse", "beats"] = "not_worse"
    impact_floor: float = 0.8
    impact_margin: float = 0.05

    @classmethod
    def from_settings(cls, settings: Settings) -> GatePolicy:
        return cls(
            min_postings=settings.gate_min_postings,
            vs_service=settings.gate_vs_service,
            impact_floor=settings.gate_impact_floor,
            impact_margin=settings.gate_impact_margin,
        )


@dataclass(frozen=True)
class GateResult:
    """One gate: what it requires, what was measured, and whether it passed."""

    gate: str
    required: str
    measured: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class GateReport:
    """Every gate of one version against the ranker in service when they were checked."""

    in_service: str | None
    """The version in service, the fallback's name (e.g. `fallback-hand-rule`), or None."""
    results: tuple[GateResult, ...]
    policy: GatePolicy
    checked_at: str
    version: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def failed(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def as_dict(self) -> dict[str, Any]:
        """The form stored as `gates.json` and in the model card (`ranker.commands.models`
        prints it)."""
        return {
            "version": self.version,
            "passed": self.passed,
            "in_service": self.in_service,
            "checked_at": self.checked_at,
            "policy": asdict(self.policy),
            "gates": [asdict(r) for r in self.results],
            "rule_note": "NDCG@10 gates: paired 95% bootstrap intervals over the pool view's "
            "held-out postings; impact ratios: LL144 selection rate (top 10), sex and "
            "race/ethnicity.",
        }


@dataclass(frozen=True)
class InService:
    """What the new version is compared with: the version in service or the fallback."""

    name: str | None
    """Version or fallback name; None when nothing ranks (fallback off, nothing promoted)."""
    ranker_key: str | None
    """The evaluation's ranker name for it (`<v> (in service)`, `hand_rule`, `retrieval`)."""
    model: RankingModel | None
    """Its builder and scorer, for the audit; None when it cannot be run."""
    skip_reason: str | None = None
    """Why the comparison passes without measuring (nothing in service, not servable)."""
    fail_reason: str | None = None
    """Why the comparison could not be made and so fails (e.g. no shared held-out postings)."""


def in_service_of(
    evaluation: Evaluation,
    bundle: ModelBundle | None,
    not_compared: str | None,
    fallback: str,
) -> InService:
    """The in-service side of the gates: `bundle` (the version in service, None when none is
    promoted) as the evaluation compared it, or why it was not (`not_compared`)."""
    if bundle is None:
        name = FALLBACK_VERSIONS.get(fallback)
        if name is None:
            return InService(None, None, None, skip_reason="nothing in service (fallback off)")
        key = HAND_RULE_NAME if fallback == "hand_rule" else RETRIEVAL
        return InService(name, key, fallback_bundle(fallback))
    key = f"{bundle.version} (in service)"
    if key in evaluation.views[POOL_VIEW].rankers:
        return InService(bundle.version, key, bundle)
    try:
        if bundle.feature_names != FEATURE_NAMES:
            raise RankerError("its features differ from the new version's")
        bundle.check()
    except RankerError as e:
        return InService(
            bundle.version,
            None,
            None,
            skip_reason=f"{bundle.version} in service cannot be served by this code ({e}); "
            "the service refuses it, so the new version replaces nothing servable",
        )
    return InService(
        bundle.version,
        None,
        None,
        fail_reason=f"not compared with {bundle.version}: {not_compared or 'unknown reason'}",
    )


def _estimate_text(e: Estimate) -> str:
    if e.n == 0 or math.isnan(e.mean):
        return "no postings"
    return f"{e.mean:+.4f} [{e.low:+.4f}, {e.high:+.4f}] (n={e.n})"


def _difference(evaluation: Evaluation, other: str) -> Estimate | None:
    view = evaluation.views[POOL_VIEW]
    lead = view.rankers.get(evaluation.primary)
    them = view.rankers.get(other)
    if lead is None or them is None:
        return None
    return lead.versus(them, GATE_METRIC)


def pool_rankings(
    model: RankingModel,
    postings: Sequence[PreparedPosting],
    pool: Pool,
    retrieve_n: int,
) -> list[Ranking]:
    """Each posting's ranking as the service would serve it with `model`: retrieve from the
    whole pool, rerank by score (ties by similarity); the rest of the pool counts as not
    selected (the whole pipeline, as the served audit frame counts it)."""
    everyone = tuple(c.id for c in pool.candidates)
    out: list[Ranking] = []
    for p in postings:
        cands, sims = pool.retrieve(p, retrieve_n)
        if not cands:
            continue
        x = model.builder.build(p, cands, lexicon=pool.lexicon)
        scores = np.asarray(model.scorer.score(x), dtype=np.float64)
        order = np.lexsort((-np.asarray(sims, dtype=np.float64), -scores))
        ids = tuple(cands[i].id for i in order.tolist())
        out.append(
            Ranking(
                cluster=p.id,
                candidate_ids=ids,
                scores=tuple(float(scores[i]) for i in order.tolist()),
                scores_complete=False,
                unranked=everyone,
            )
        )
    return out


def _audit(
    rankings: Sequence[Ranking],
    protected: Mapping[str, Mapping[str, str]],
    floor: float,
    name: str,
) -> AuditResult:
    return audit_rankings(
        rankings,
        protected,
        meta=AuditMeta(
            frame="model", data_source="held-out postings, pool view", model_version=name
        ),
        config=AuditConfig(k=10, threshold=floor),
        attributes=AUDITED,
    )


def _ratios(result: AuditResult) -> dict[tuple[str, str], tuple[float, str]]:
    """(dimension, category) -> (selection impact ratio, flag), for the gated dimensions."""
    out: dict[tuple[str, str], tuple[float, str]] = {}
    for dim in result.dimensions:
        if dim.name not in AUDITED:
            continue
        for cat in dim.categories:
            r = cat.rates.get("selection")
            if r is not None and r.impact_ratio is not None and not cat.excluded:
                out[(dim.name, cat.name)] = (r.impact_ratio, r.flag)
    return out


def check_gates(
    *,
    evaluation: Evaluation,
    parity_diff: float,
    model: RankingModel,
    in_service: InService,
    candidates: Mapping[str, PreparedCandidate],
    postings: Mapping[str, PreparedPosting],
    protected: Mapping[str, Mapping[str, str]] | None,
    settings: Settings,
    policy: GatePolicy | None = None,
) -> GateReport:
    """Every gate for the evaluated version (`evaluation.primary`) against `in_service`."""
    policy = policy or GatePolicy.from_settings(settings)
    results: list[GateResult] = []
    n = int(evaluation.views[POOL_VIEW].facts.get("postings", 0))
    results.append(
        GateResult(
            "held_out_postings",
            f">= {policy.min_postings} postings",
            f"{n} postings",
            n >= policy.min_postings,
            "" if n >= policy.min_postings else f"short by {policy.min_postings - n}",
        )
    )
    ok = parity_diff <= PARITY_TOLERANCE
    results.append(
        GateResult(
            "onnx_parity",
            f"max |ONNX - LightGBM| <= {PARITY_TOLERANCE:g}",
            f"{parity_diff:.2e}",
            ok,
            "" if ok else f"over by {parity_diff - PARITY_TOLERANCE:.2e}",
        )
    )
    d = _difference(evaluation, RETRIEVAL)
    ok = d is not None and d.n > 0 and d.low > 0
    results.append(
        GateResult(
            "beats_retrieval",
            f"{GATE_METRIC} new - retrieval: 95% CI lower end > 0",
            "not measured" if d is None else _estimate_text(d),
            ok,
            ""
            if ok or d is None or d.n == 0
            else f"lower end {d.low:+.4f}, {-d.low:.4f} short of 0",
        )
    )
    results.append(_vs_service(evaluation, in_service, policy))
    results += _impact_gates(
        model, in_service, evaluation, candidates, postings, protected, settings, policy
    )
    return GateReport(
        in_service=in_service.name,
        results=tuple(results),
        policy=policy,
        checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _vs_service(evaluation: Evaluation, side: InService, policy: GatePolicy) -> GateResult:
    beats = policy.vs_service == "beats"
    name = side.name or "nothing"
    required = (
        f"{GATE_METRIC} new - {name}: 95% CI lower end > 0 (beats)"
        if beats
        else f"{GATE_METRIC} new - {name}: 95% CI upper end >= 0 (not significantly worse)"
    )
    if side.skip_reason is not None:
        return GateResult("vs_in_service", required, "not measured", True, side.skip_reason)
    if side.fail_reason is not None or side.ranker_key is None:
        return GateResult(
            "vs_in_service", required, "not measured", False, side.fail_reason or "not compared"
        )
    d = _difference(evaluation, side.ranker_key)
    if d is None or d.n == 0:
        return GateResult("vs_in_service", required, "no postings", False, "nothing to compare on")
    ok = d.low > 0 if beats else d.high >= 0
    detail = ""
    if not ok:
        detail = (
            f"lower end {d.low:+.4f}, {-d.low:.4f} short of 0"
            if beats
            else f"significantly worse: upper end {d.high:+.4f}, {-d.high:.4f} below 0"
        )
    return GateResult("vs_in_service", required, _estimate_text(d), ok, detail)


def _impact_gates(
    model: RankingModel,
    side: InService,
    evaluation: Evaluation,
    candidates: Mapping[str, PreparedCandidate],
    postings: Mapping[str, PreparedPosting],
    protected: Mapping[str, Mapping[str, str]] | None,
    settings: Settings,
    policy: GatePolicy,
) -> list[GateResult]:
    floor_req = f"no impact ratio significantly < {policy.impact_floor:g} (CI wholly below)"
    margin_req = f"no impact ratio > {policy.impact_margin:g} below {side.name or 'in service'}'s"
    chosen = [postings[pid] for pid in evaluation.posting_ids if pid in postings]
    known = {cid for cid, attrs in (protected or {}).items() if any(attrs.get(a) for a in AUDITED)}
    if not protected or not known or not chosen:
        why = "not measured: no protected attributes in the store (`protected.jsonl`)"
        return [
            GateResult("impact_ratio_floor", floor_req, "not measured", True, why),
            GateResult("impact_ratio_vs_service", margin_req, "not measured", True, why),
        ]
    pool = Pool.build(candidates.values(), settings.index_storage)
    new = _audit(
        pool_rankings(model, chosen, pool, evaluation.retrieve_n),
        protected,
        policy.impact_floor,
        evaluation.primary,
    )
    mine = _ratios(new)
    low = [(k, r) for k, (r, flag) in mine.items() if flag == "significant"]
    lowest = min(mine.items(), key=lambda kv: kv[1][0]) if mine else None
    measured = (
        "no category with a ratio"
        if lowest is None
        else f"lowest {lowest[0][0]}={lowest[0][1]}: {lowest[1][0]:.3f}"
    )
    results = [
        GateResult(
            "impact_ratio_floor",
            floor_req,
            measured,
            not low,
            "; ".join(
                f"{d}={c}: {r:.3f}, {policy.impact_floor - r:.3f} under the floor and significant"
                for (d, c), r in low
            ),
        )
    ]
    if side.model is None:
        results.append(
            GateResult(
                "impact_ratio_vs_service",
                margin_req,
                "not measured",
                side.fail_reason is None,
                side.skip_reason or side.fail_reason or "",
            )
        )
        return results
    old = _ratios(
        _audit(
            pool_rankings(side.model, chosen, pool, evaluation.retrieve_n),
            protected,
            policy.impact_floor,
            side.name or "in service",
        )
    )
    drops = sorted(
        ((k, old[k][0] - r) for k, (r, _) in mine.items() if k in old), key=lambda t: -t[1]
    )
    worst = drops[0] if drops else None
    bad = [(k, drop) for k, drop in drops if drop > policy.impact_margin]
    results.append(
        GateResult(
            "impact_ratio_vs_service",
            margin_req,
            "no common category"
            if worst is None
            else f"largest drop {worst[0][0]}={worst[0][1]}: {mine[worst[0]][0]:.3f} vs "
            f"{old[worst[0]][0]:.3f} ({-worst[1]:+.3f})",
            not bad,
            "; ".join(
                f"{d}={c} dropped {drop:.3f}, {drop - policy.impact_margin:.3f} over the margin"
                for (d, c), drop in bad
            ),
        )
    )
    return results
