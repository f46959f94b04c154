"""CLI command modules; each exposes `register(app: typer.Typer) -> None`."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str) -> NoReturn:
    """Print `message` as an error on stderr and exit with status 1 (every command's way out)."""
    # Imported here: rich's console costs import time every command would otherwise pay.
    from rich.console import Console
    from rich.markup import escape

    # Escaped: a message may hold brackets (`pip install 'x[extra]'`) that are not markup.
    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(code=1)
