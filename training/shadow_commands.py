"""`ranker models compare`: the challenger scored in shadow against the champion it shadows."""

from __future__ import annotations

import math
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ranker.commands import fail
from ranker.config import Settings
from ranker.errors import RankerError

console = Console()


def _est(e: object, signed: bool = False) -> str:
    from training.metrics import Estimate

    assert isinstance(e, Estimate)
    if e.n == 0 or math.isnan(e.mean):
        return "-"
    f = "+.3f" if signed else ".3f"
    return f"{e.mean:{f}} [{e.low:{f}}, {e.high:{f}}]"


def compare(
    challenger: Annotated[
        str | None,
        typer.Option(help="Challenger version (default: the registry's challenger alias)."),
    ] = None,
    k: Annotated[int, typer.Option(min=1, help="Top k compared for agreement.")] = 10,
) -> None:
    """Agreement of the challenger's shadow orders with the champion's, and both versions'
    NDCG@10 on those rankings once outcomes arrived (95% bootstrap intervals over postings)."""
    from ranker.registry import CHALLENGER, ModelRegistry
    from ranker.store_api import describe_store, open_store, store_exists
    from training.shadow_comparison import NDCG_AT, compare_shadow

    settings = Settings()
    registry = ModelRegistry(settings.resolved_registry_dir, settings.ort_session)
    try:
        if not store_exists(settings):
            fail(f"no store at {describe_store(settings)}; serve rankings first: `ranker serve`")
        wanted = challenger or registry.aliases().get(CHALLENGER)
        store = open_store(settings)
        try:
            rankings = store.shadow_rankings(wanted)
            outcomes = store.list_outcomes()
        finally:
            store.close()
    except RankerError as e:
        fail(str(e))
    if not rankings:
        fail(
            f"no shadow rankings logged{' for ' + wanted if wanted else ''}; set a challenger "
            "(`ranker models alias challenger VERSION`) and let the service rank"
        )
    for pair in compare_shadow(rankings, outcomes, k):
        table = Table(
            title=f"champion {pair.champion} vs challenger {pair.challenger}: "
            f"{pair.rankings} rankings of {pair.postings} postings",
            caption="means over postings [95% bootstrap interval]; outcomes favour the champion "
            "(recruiters acted on its order)",
            caption_justify="left",
        )
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_column("postings", justify="right")
        table.add_row(f"top-{k} overlap", _est(pair.agreement["overlap"]), str(pair.postings))
        table.add_row(
            f"Kendall tau-b over the top {k}s",
            _est(pair.agreement["kendall_tau"], signed=True),
            str(pair.agreement["kendall_tau"].n),
        )
        table.add_row(
            f"Spearman rho over the top {k}s",
            _est(pair.agreement["spearman"], signed=True),
            str(pair.agreement["spearman"].n),
        )
        for name, est in pair.ndcg.items():
            table.add_row(
                f"NDCG@{NDCG_AT} {name} (outcomes)",
                _est(est, signed="-" in name),
                str(est.n),
            )
        console.print(table)
        diff = pair.ndcg["challenger - champion"]
        if diff.n == 0:
            console.print(
                "no outcomes recorded yet for these rankings' postings: NDCG will follow once "
                "the ATS records them (RecordOutcomes)"
            )
        else:
            console.print(f"challenger - champion NDCG@{NDCG_AT}: {diff.verdict}")
