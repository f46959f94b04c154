"""Training commands: `ranker demo-data`, `ranker train`, `ranker evaluate` (an entry-point plugin)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ranker.config import Settings
from ranker.errors import RankerError

console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


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
    postings: Annotated[int, typer.Option(min=6, help="Number of postings.")] = 100,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Do nothing when the files already exist.")
    ] = False,
) -> None:
    """Generate the demo ATS export: candidates, postings, outcomes and protected.jsonl."""
    from training.demo import DemoConfig, demo_present, generate, write_demo

    out_dir = out if out is not None else Settings().resolved_demo_dir
    if if_missing and demo_present(out_dir):
        console.print(f"demo data already in {out_dir}; skipping")
        return
    started = time.perf_counter()
    data = generate(DemoConfig(candidates=candidates, postings=postings, seed=seed))
    write_demo(data, out_dir)
    console.print(
        f"wrote {len(data.candidates)} candidates, {len(data.postings)} postings, "
        f"{len(data.outcomes)} outcome events and protected.jsonl to {out_dir} "
        f"in {time.perf_counter() - started:.1f}s"
    )


def _load_store(
    settings: Settings,
) -> tuple[list[Any], list[Any], list[Any], dict[str, dict[str, str]]]:
    from ranker.datafiles import PROTECTED_NAMES
    from ranker.store import SqliteStore

    path = settings.resolved_db_path
    if not path.is_file():
        raise _fail(f"no store at {path}; load data first: `ranker ingest`")
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
        raise _fail(
            f"the store holds {len(candidates)} candidates, {len(postings)} postings and "
            f"{len(outcomes)} outcomes; training needs all three: `ranker ingest`"
        )
    return candidates, postings, outcomes, protected


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
            help="Skip when the model in service was trained on exactly the stored data.",
        ),
    ] = False,
) -> None:
    """Train a ranker on the store's outcomes, evaluate it, register it (and maybe promote it)."""
    from ranker.features import FEATURE_NAMES
    from ranker.registry import ModelRegistry
    from training.dataset import data_sha256
    from training.train import TrainConfig, train_and_register

    settings = Settings()
    registry = ModelRegistry(settings.resolved_registry_dir, settings)
    candidates, postings, outcomes, protected = _load_store(settings)
    current = registry.current_version()
    if if_missing and current is not None:
        digest = data_sha256(
            (r.candidate for r in candidates), (r.posting for r in postings), outcomes
        )
        card = registry.card(current)
        # A model of other features would be refused by the service: retrain it whatever the data.
        same_features = card.get("feature_names") == list(FEATURE_NAMES)
        if same_features and card.get("data", {}).get("sha256") == digest:
            console.print(f"model {current} in service was trained on this data; skipping")
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
        raise _fail(str(e)) from None
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
    """Evaluate a version on its held-out postings against the model in service and baselines."""
    from datetime import datetime

    from ranker.registry import ModelRegistry
    from training.dataset import make_datasets, posting_times, prepare_all, split_at
    from training.evaluate import evaluate_all

    settings = Settings()
    registry = ModelRegistry(settings.resolved_registry_dir, settings)
    try:
        bundles = [registry.load(version)]
        bundles[0].check()
        current = registry.current_version()
        if current is not None and current != bundles[0].version:
            bundles.append(registry.load(current))
    except RankerError as e:
        raise _fail(str(e)) from None
    candidates, postings, outcomes, _ = _load_store(settings)
    prepared_c, prepared_p = prepare_all(candidates, postings)
    known = [o for o in outcomes if o.posting_id in prepared_p]
    # The held-out postings of the version evaluated (its card's split dates), plus any newer.
    recorded = bundles[0].card["data"]["split"]
    split = split_at(
        posting_times((r.posting for r in postings), known),
        datetime.fromisoformat(recorded["valid_start"]),
        datetime.fromisoformat(recorded["test_start"]),
    )
    if not split.test:
        raise _fail(f"no stored posting was created after {split.test_start}; nothing to test on")
    scores = {}
    data = None
    for i, bundle in enumerate(bundles):
        # Each version builds features with its own frozen lexicon.
        sets = make_datasets(bundle.builder, prepared_c, prepared_p, known, split).sets
        data = sets["test"] if data is None else data
        name = bundle.version if i == 0 else f"{bundle.version} (in service)"
        if bundle.feature_names == bundles[0].feature_names:
            scores[name] = bundle.scorer.score(sets["test"].x)
    assert data is not None
    title = f"{data.n_queries} postings created since {split.test_start:%Y-%m-%d}"
    console.print(metrics_table(title, evaluate_all(data, scores)))


def register(app: typer.Typer) -> None:
    """Add the training commands to the `ranker` CLI."""
    app.command("demo-data")(demo_data)
    app.command()(train)
    app.command()(evaluate)
