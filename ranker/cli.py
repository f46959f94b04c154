"""The `ranker` command line: serving, querying, models; training adds its commands as a plugin."""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points
from typing import Annotated

import typer
from pydantic import ValidationError

app = typer.Typer(
    name="ranker",
    help="Candidate ranking service: serve, query, manage models, train (see README.md).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from ranker import __version__

        print(f"ranker {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Candidate ranking service: serve, query, manage models, train (see README.md)."""


def _register_builtin() -> None:
    # Each command module adds its commands to `app`; one module per area keeps them apart.
    from ranker.commands import client, encoder, ingest, models, query, serving, tokens, web

    for module in (encoder, models, serving, ingest, client, query, tokens, web):
        module.register(app)


def _register_plugins() -> None:
    # `ranker` must not import `training` (tests/test_layout.py): training registers its commands
    # (demo-data, train, evaluate) through the `ranker.commands` entry-point group.
    for ep in entry_points(group="ranker.commands"):
        ep.load()(app)


def main() -> None:
    """Console-script entry point."""
    # Everything a command writes (store, index, registry, demo exports, tokens, logs) holds or
    # derives from CVs: owner-only by default, whichever module or library creates the file.
    os.umask(0o077)
    from ranker.config import Settings
    from ranker.observability import configure_logging

    try:
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)
    except ValidationError:
        configure_logging()  # the command builds the settings again and reports what to fix
    _register_builtin()
    _register_plugins()
    try:
        app()
    except ValidationError as e:
        if e.title != "Settings":
            raise
        # Malformed or contradictory RANKER_* values: say which to fix, not a traceback.
        from ranker.config import settings_error

        print(f"error: {settings_error(e)}", file=sys.stderr)
        raise SystemExit(1) from None
