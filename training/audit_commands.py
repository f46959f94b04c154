"""`ranker audit`: the LL144 bias-audit summary of the historical process, a model, or what was served."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ranker.commands import fail
from ranker.config import Settings
from ranker.errors import RankerError

if TYPE_CHECKING:  # imported lazily below: `ranker --help` should not load numpy and the store
    from collections.abc import Sequence

    import numpy as np

    from ranker.store_api import Store
    from training.audit import AuditConfig, AuditResult

_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]


class AuditFrame(StrEnum):
    """What the audit looks at."""

    HISTORICAL = "historical"
    MODEL = "model"
    SERVED = "served"


def audit(
    frame: Annotated[
        AuditFrame,
        typer.Option(
            help="historical: the stored hiring outcomes (the bias a model learns); model: a "
            "version on held-out postings; served: the decision log over a period."
        ),
    ] = AuditFrame.HISTORICAL,
    version: Annotated[
        str | None,
        typer.Option(help="Model version (frame model; frame served: only its decisions)."),
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(formats=_DATE_FORMATS, help="Start of the period (UTC when no zone)."),
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(formats=_DATE_FORMATS, help="End of the period, exclusive (UTC)."),
    ] = None,
    attribute: Annotated[
        list[str] | None,
        typer.Option(
            help="Protected attribute to audit (repeat for several; two give their "
            "intersection too). Default: sex and race_ethnicity, LL144's categories.",
        ),
    ] = None,
    k: Annotated[int, typer.Option(min=1, help="Selected = in the top k of a ranking.")] = 10,
    threshold: Annotated[
        float, typer.Option(min=0.01, max=1.0, help="Flag impact ratios below this.")
    ] = 0.8,
    min_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.5, help="Categories under this share of rows get no impact ratio."
        ),
    ] = 0.02,
    boot: Annotated[int, typer.Option(min=10, help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the result as JSON here.")
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option(help="Also write the readable report (Markdown) here.")
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Exit with status 2 when an impact ratio is significantly low."
        ),
    ] = False,
) -> None:
    """Bias audit (NYC Local Law 144 form): selection and scoring rates, impact ratios, CIs.

    Categories: sex, race/ethnicity and their intersections, from the protected table.
    """
    from training.audit import DIMENSIONS, AuditConfig

    settings = Settings()
    attributes = tuple(attribute) if attribute else DIMENSIONS
    try:
        config = AuditConfig(k=k, threshold=threshold, min_share=min_share, n_boot=boot, seed=seed)
        if frame is AuditFrame.HISTORICAL:
            result = _historical(settings, config, since, until, attributes)
        elif frame is AuditFrame.SERVED:
            result = _served(settings, config, since, until, version, attributes)
        else:
            result = _model(settings, config, version, attributes)
    except RankerError as e:
        fail(str(e))
    text = result.to_markdown()
    typer.echo(text, nl=False)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(result.to_json(), encoding="utf-8")
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text, encoding="utf-8")
    if strict and result.significant_flags():
        raise typer.Exit(code=2)


def _open_store(settings: Settings) -> Store:
    from ranker.store_api import describe_store, open_store, store_exists

    if not store_exists(settings):
        fail(f"no store at {describe_store(settings)}; load data first: `ranker ingest`")
    return open_store(settings)


def _period(since: datetime | None, until: datetime | None) -> tuple[str, str] | None:
    if since is None and until is None:
        return None
    return (
        since.date().isoformat() if since else "start",
        until.date().isoformat() if until else "now",
    )


def _historical(
    settings: Settings,
    config: AuditConfig,
    since: datetime | None,
    until: datetime | None,
    attributes: Sequence[str],
) -> AuditResult:
    from training.audit import AuditMeta, audit_outcomes
    from training.audit_sources import load_protected, outcomes_in_period, promotion_dates

    store = _open_store(settings)
    try:
        outcomes = outcomes_in_period(store.list_outcomes(), since, until)
        protected = load_protected(store, attributes)
    finally:
        store.close()
    if not outcomes:
        fail("no stored outcomes in that period; record outcomes first (`ranker ingest`)")
    times = [o.at for o in outcomes]
    first, _ = promotion_dates(settings.resolved_registry_dir)
    meta = AuditMeta(
        frame="historical",
        data_source="historical outcomes",
        period=_period(since, until)
        or (min(times).date().isoformat(), max(times).date().isoformat()),
        distribution_date=first or "unknown",
    )
    return audit_outcomes(outcomes, protected, meta=meta, config=config, attributes=attributes)


def _model(
    settings: Settings, config: AuditConfig, version: str | None, attributes: Sequence[str]
) -> AuditResult:
    """Frame (b): the version (default: in service) ranking its held-out postings as served,
    with the serving re-ranker when `Settings.fair_rerank` enables it."""
    from ranker.registry import ModelRegistry
    from training.audit_model import Reranker, estimate_json, held_out_audit
    from training.audit_sources import load_protected, promotion_dates
    from training.dataset import prepare_all
    from training.evaluate import held_out_start

    registry = ModelRegistry(settings.resolved_registry_dir, settings.ort_session)
    name = version or registry.current_version()
    if name is None:
        fail("no model version in service; name one (--version V) or train one: `ranker train`")
    bundle = registry.load(name)
    bundle.check()
    store = _open_store(settings)
    try:
        candidates = list(store.iter_candidates())
        postings = store.list_postings()
        outcomes = store.list_outcomes()
        wanted = (
            [*attributes, settings.fair_rerank_attribute]
            if settings.fair_rerank != "off"
            else attributes
        )
        protected = load_protected(store, tuple(dict.fromkeys(wanted)))
    finally:
        store.close()
    prepared_c, prepared_p = prepare_all(candidates, postings)
    rerank: Reranker | None = None
    if settings.fair_rerank != "off":
        from ranker.fair_serving import FairReranker

        attr = settings.fair_rerank_attribute
        fair = FairReranker(
            attr,
            {cid: a[attr] for cid, a in protected.items() if attr in a},
            settings.fair_rerank_targets,
        )

        def rerank(ids: Sequence[str], scores: np.ndarray, order: np.ndarray, k: int) -> np.ndarray:
            return fair.rerank_order(ids, scores, order, k)[0]

    audit = held_out_audit(
        bundle,
        prepared_c,
        prepared_p,
        outcomes,
        held_out_start([bundle.card]),
        protected,
        retrieve_n=settings.retrieve_n,
        index_storage=settings.index_storage,
        config=config,
        rerank=rerank,
        attributes=attributes,
    )
    first, per_version = promotion_dates(settings.resolved_registry_dir)
    result = audit.result
    ndcg = estimate_json(audit.ndcg10)
    return replace(
        result,
        meta=replace(
            result.meta,
            model_version=name,
            distribution_date=first or "unknown",
            version_distribution_date=per_version.get(name),
        ),
        notes=(
            *result.notes,
            f"Ranking quality of the same rankings: pool-view NDCG@10 {ndcg['mean']} "
            f"[{ndcg['ci_low']}, {ndcg['ci_high']}] over {ndcg['n']} postings.",
        ),
    )


def _served(
    settings: Settings,
    config: AuditConfig,
    since: datetime | None,
    until: datetime | None,
    version: str | None,
    attributes: Sequence[str],
) -> AuditResult:
    from ranker.store_api import open_decision_reader
    from training.audit import AuditMeta, audit_rankings
    from training.audit_sources import load_protected, promotion_dates, rankings_from_decisions

    store = _open_store(settings)
    try:
        with open_decision_reader(settings) as reader:
            ids = reader.decision_ids(since, until)
            pool = reader.candidate_ids()
        decisions = [store.get_decision(i) for i in ids]
        if version is not None:
            decisions = [d for d in decisions if d.model_version == version]
        protected = load_protected(store, attributes)
    finally:
        store.close()
    if not decisions:
        fail(
            "no decisions logged in that period"
            + (f" by {version}" if version else "")
            + "; rankings served by `ranker serve` are logged in the store"
        )
    first, per_version = promotion_dates(settings.resolved_registry_dir)
    versions = sorted({d.model_version for d in decisions})
    times = [d.at for d in decisions]
    meta = AuditMeta(
        frame="served",
        data_source=f"served rankings ({len(decisions)} logged decisions)",
        period=_period(since, until)
        or (min(times).date().isoformat(), max(times).date().isoformat()),
        model_version=", ".join(versions),
        distribution_date=first or "unknown",
        version_distribution_date=", ".join(per_version.get(v, "never promoted") for v in versions),
    )
    result = audit_rankings(
        rankings_from_decisions(decisions, pool=pool),
        protected,
        meta=meta,
        config=config,
        attributes=attributes,
    )
    if any(d.scored is not None and d.top_k < config.k for d in decisions):
        result = replace(
            result,
            notes=(
                *result.notes,
                f"Some requests returned fewer than {config.k} candidates; past what they "
                "returned, positions follow the logged scores.",
            ),
        )
    # Why the pool is today's: `stored_at` moves on every re-upsert, so it cannot tell who was
    # in the store at request time; erased candidates are gone from the log as well.
    return replace(
        result,
        notes=(
            *result.notes,
            f"Each request is taken to have chosen from the {len(pool)} candidates stored now; "
            "candidates added after a request count as not selected by it.",
        ),
    )
