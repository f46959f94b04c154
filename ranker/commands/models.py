"""Model registry commands: `ranker models list | show VERSION | promote VERSION | rollback`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ranker.commands import fail
from ranker.config import Settings
from ranker.errors import RankerError
from ranker.registry import CARD_MD_FILE, ModelRegistry

console = Console()

models_app = typer.Typer(
    name="models", help="List, inspect, promote and roll back model versions.", no_args_is_help=True
)


def _registry() -> ModelRegistry:
    settings = Settings()
    return ModelRegistry(settings.resolved_registry_dir, settings.ort_session)


def _metric(card: dict, ranker: str, name: str) -> str:
    value = card.get("metrics", {}).get("test", {}).get(ranker, {}).get(name)
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


@models_app.command("list")
def list_versions() -> None:
    """Every registered version, with its test metrics and the one in service marked."""
    registry = _registry()
    versions = registry.versions()
    if not versions:
        console.print(f"no model versions in {registry.root}; train one: `ranker train`")
        return
    current = registry.current_version()
    table = Table(title=f"model registry {registry.root} (metrics: held-out test postings)")
    for col, justify in (
        ("", "left"),
        ("version", "left"),
        ("created", "left"),
        ("trees", "right"),
        ("NDCG@10", "right"),
        ("dense NDCG@10", "right"),
        ("MRR", "right"),
        ("data", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for v in versions:
        try:
            card = registry.card(v)
        except (RankerError, ValueError) as e:
            table.add_row("", v, f"[red]unreadable card: {e}[/red]", "", "", "", "", "")
            continue
        table.add_row(
            "[green]*[/green]" if v == current else "",
            v,
            str(card.get("created_at", "-"))[:16].replace("T", " "),
            str(card.get("model", {}).get("best_iteration", "-")),
            _metric(card, "model", "ndcg@10"),
            _metric(card, "dense_cosine", "ndcg@10"),
            _metric(card, "model", "mrr"),
            str(card.get("data", {}).get("sha256", "-"))[:8],
        )
    console.print(table)
    console.print(f"in service: {current or 'none (promote one: `ranker models promote VERSION`)'}")


@models_app.command()
def show(
    version: Annotated[str, typer.Argument(help="Version, e.g. v0001.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print model_card.json instead.")] = False,
) -> None:
    """Print a version's model card."""
    registry = _registry()
    try:
        folder = registry.version_dir(version)
        card = registry.card(version)
    except RankerError as e:
        fail(str(e))
    if as_json:
        console.print_json(json.dumps(card))
        return
    from rich.markdown import Markdown

    md = folder / CARD_MD_FILE
    console.print(Markdown(md.read_text(encoding="utf-8")) if md.is_file() else card)


@models_app.command()
def promote(version: Annotated[str, typer.Argument(help="Version to put in service.")]) -> None:
    """Check a version (features, test prediction) and put it in service."""
    registry = _registry()
    before = registry.current_version()
    try:
        registry.promote(version)
    except RankerError as e:
        fail(str(e))
    console.print(f"in service: {version} (was {before or 'none'}); a running service swaps it in")


@models_app.command()
def rollback() -> None:
    """Put the previously promoted version back in service."""
    registry = _registry()
    before = registry.current_version()
    try:
        version = registry.rollback()
    except RankerError as e:
        fail(str(e))
    console.print(f"rolled back: in service {version} (was {before})")


def register(app: typer.Typer) -> None:
    """Add `ranker models ...` to the CLI."""
    app.add_typer(models_app, name="models")
