"""Training commands: `ranker demo-data`, `ranker train`, `ranker evaluate` (an entry-point plugin)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ranker.commands import fail
from ranker.config import Settings
from ranker.errors import RankerError

if TYPE_CHECKING:  # imported lazily below: `ranker --help` should not load LightGBM and ONNX
    from ranker.registry import ModelRegistry

console = Console()


def metrics_table(title: str, results: Mapping[str, Mapping[str, float]]) -> Table:
    """A rich table: one row per ranker (model, baselines), one column per metric."""
    from training.evaluate import METRICS

    table = Table(title=title)
    table.add_column("ranker")
    for m in METRICS:
        table.add_column(m, justify="right")
    best = {m: max(r[m] for r in results.values()) for m in METRICS}
    for name, values in results.items():
        cells = [
            f"[bold]{values[m]:.4f}[/bold]" if values[m] == best[m] else f"{values[m]:.4f}"
            for m in METRICS
        ]
        table.add_row(name, *cells)
    return table


def demo_data(
    out: Annotated[
        Path | None, typer.Option(help="Folder for the files (default: <data_dir>/demo).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 7,
    candidates: Annotated[int, typer.Option(min=10, help="Number of candidates.")] = 2000,
    postings: Annotated[int, typer.Option(min=6, help="Number of postings.")] = 420,
    bias: Annotated[
        str | None,
        typer.Option(
            help="Make the historical hiring process biased against ATTRIBUTE=CATEGORY (e.g. "
            "sex=female, age_band=45-59) through --bias-proxy; default: unbiased.",
        ),
    ] = None,
    bias_proxy: Annotated[
        str,
        typer.Option(
            help="CV trait the biased process penalises: career_break, part_time or "
            "graduation_year (a degree from 2003 or earlier).",
        ),
    ] = "career_break",
    bias_strength: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Screening and interview pass probabilities of proxy holders are each "
            "multiplied by 1 - strength.",
        ),
    ] = 0.5,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Do nothing when the files already exist.")
    ] = False,
) -> None:
    """Generate the demo ATS export: candidates, postings, outcomes and protected.jsonl."""
    from training.demo import Bias, DemoConfig, demo_present, generate, write_demo

    out_dir = out if out is not None else Settings().resolved_demo_dir
    if if_missing and demo_present(out_dir):
        console.print(f"demo data already in {out_dir}; skipping")
        return
    started = time.perf_counter()
    try:
        scenario = Bias.parse(bias, bias_proxy, bias_strength) if bias is not None else None
        data = generate(
            DemoConfig(candidates=candidates, postings=postings, seed=seed, bias=scenario)
        )
    except RankerError as e:
        fail(str(e))
    write_demo(data, out_dir)
    console.print(
        f"wrote {len(data.candidates)} candidates, {len(data.postings)} postings, "
        f"{len(data.outcomes)} outcome events and protected.jsonl to {out_dir} "
        f"in {time.perf_counter() - started:.1f}s"
        + (f"; historical process biased against {scenario.describe()}" if scenario else "")
    )


def _load_store(
    settings: Settings,
) -> tuple[list[Any], list[Any], list[Any], dict[str, dict[str, str]]]:
    from ranker.datafiles import PROTECTED_NAMES
    from ranker.store import SqliteStore

    path = settings.resolved_db_path
    if not path.is_file():
        fail(f"no store at {path}; load data first: `ranker ingest`")
    store = SqliteStore(path)
    try:
        candidates = list(store.iter_candidates())
        postings = store.list_postings()
        outcomes = store.list_outcomes()
        protected: dict[str, dict[str, str]] = {}
        for name in sorted(PROTECTED_NAMES):
            for cid, value in store.protected_attributes(name).items():
                protected.setdefault(cid, {})[name] = value
    finally:
        store.close()
    if not candidates or not postings or not outcomes:
        fail(
            f"the store holds {len(candidates)} candidates, {len(postings)} postings and "
            f"{len(outcomes)} outcomes; training needs all three: `ranker ingest`"
        )
    return candidates, postings, outcomes, protected


def _trained_on(registry: ModelRegistry, digest: str) -> str | None:
    """The newest registered version trained on data with `digest` by this code's features."""
    from ranker.features import FEATURE_NAMES, FEATURES_VERSION

    for version in reversed(registry.versions()):
        try:
            card = registry.card(version)
        except (RankerError, ValueError):
            continue  # an unreadable card cannot vouch for anything
        if (
            card.get("data", {}).get("sha256") == digest
            and card.get("feature_names") == list(FEATURE_NAMES)
            and card.get("features_version") == FEATURES_VERSION
        ):
            return str(version)
    return None


def train(
    seed: Annotated[int, typer.Option(help="LightGBM seed.")] = 7,
    promote: Annotated[
        bool | None,
        typer.Option(
            "--promote/--no-promote",
            help="Put the new version in service (default: only if none is in service).",
        ),
    ] = None,
    if_missing: Annotated[
        bool,
        typer.Option(
            "--if-missing",
            help="Skip when a registered version was already trained on exactly the stored data "
            "(promoting it instead if nothing is in service).",
        ),
    ] = False,
) -> None:
    """Train a ranker on the store's outcomes, evaluate it, register it (and maybe promote it)."""
    from ranker.registry import ModelRegistry
    from training.evaluate import data_digest
    from training.train import TrainConfig, train_and_register

    settings = Settings()
    registry = ModelRegistry(settings.resolved_registry_dir, settings)
    candidates, postings, outcomes, protected = _load_store(settings)
    current = registry.current_version()
    if current is not None and promote is None:
        try:
            registry.load(current).check()
        except RankerError as e:
            # The version in service cannot be served by this code (e.g. trained on an older
            # feature version): the service would refuse to start, so the new one replaces it.
            console.print(f"{current} in service is no longer servable ({e}); replacing it")
            promote = True
    if if_missing:
        # Any version counts, promoted or not: otherwise every run while a model is in service
        # would register yet another copy of the same model.
        done = _trained_on(registry, data_digest(candidates, postings, outcomes))
        if done is not None and done == current:
            console.print(f"model {current} in service was trained on this data; skipping")
            return
        if done is not None and (promote or (promote is None and current is None)):
            try:
                registry.promote(done)
            except RankerError as e:
                fail(str(e))
            console.print(f"{done} was trained on this data; promoted it (was {current or 'none'})")
            return
        if done is not None:
            console.print(
                f"{done} was trained on this data and is waiting for promotion (in service: "
                f"{current}); skipping. Promote it: `ranker models promote {done}`"
            )
            return
    started = time.perf_counter()
    try:
        result = train_and_register(
            candidates,
            postings,
            outcomes,
            registry,
            config=TrainConfig(seed=seed),
            promote=promote,
            protected=protected or None,
            settings=settings,
        )
    except RankerError as e:
        fail(str(e))
    card = result.card
    console.print(metrics_table(f"test postings, model {result.version}", card["metrics"]["test"]))
    split = card["data"]["split"]
    console.print(
        f"trained {result.version} in {time.perf_counter() - started:.1f}s: "
        f"{card['model']['best_iteration']} trees, "
        f"{split['postings']['train']}/{split['postings']['valid']}/{split['postings']['test']} "
        f"train/valid/test postings, ONNX parity {card['parity']['max_abs_diff']:.1e}"
    )
    where = registry.version_dir(str(result.version))
    if result.promoted:
        console.print(f"promoted {result.version} ({where}); a running service picks it up")
    else:
        console.print(
            f"registered {result.version} ({where}), not promoted; "
            f"in service: {registry.current_version()}. Promote: "
            f"`ranker models promote {result.version}`"
        )


def evaluate(
    version: Annotated[
        str | None, typer.Argument(help="Version to evaluate (default: the one in service).")
    ] = None,
) -> None:
    """Evaluate a version against the model in service and baselines; store the result.

    Both are scored on the postings neither has seen: those created from the later of the two
    versions' test-split starts on. The result is stored in the evaluated version's folder
    (`evaluations/<UTC time>.json`).
    """
    from ranker.registry import ModelRegistry
    from training.evaluate import compare_versions, data_digest

    settings = Settings()
    registry = ModelRegistry(settings.resolved_registry_dir, settings)
    candidates, postings, outcomes, _ = _load_store(settings)
    try:
        bundles = [registry.load(version)]
        bundles[0].check()
        current = registry.current_version()
        if current is not None and current != bundles[0].version:
            bundles.append(registry.load(current))
        comparison = compare_versions(bundles, candidates, postings, outcomes)
        record = comparison.record(
            [b.version for b in bundles], data_digest(candidates, postings, outcomes)
        )
        path = registry.record_evaluation(bundles[0].version, record)
    except RankerError as e:
        fail(str(e))
    title = (
        f"{comparison.test.n_queries} postings created since "
        f"{comparison.held_out_from:%Y-%m-%d %H:%M} (held out from every version compared)"
    )
    console.print(metrics_table(title, comparison.results))
    console.print(f"stored in {path}")


def register(app: typer.Typer) -> None:
    """Add the training commands to the `ranker` CLI."""
    app.command("demo-data")(demo_data)
    app.command()(train)
    app.command()(evaluate)
