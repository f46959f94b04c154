"""The `ranker` command line: serving, querying, models; training adds its commands as a plugin."""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import entry_points

import typer
from pydantic import ValidationError

app = typer.Typer(
    name="ranker",
    help="Candidate ranking service: serve, query, manage models, train (see README.md).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register_builtin() -> None:
    # Each command module adds its commands to `app`; one module per area keeps them apart.
    from ranker.commands import encoder, models, query, serving, tokens, web

    for module in (encoder, models, serving, query, tokens, web):
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
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # faiss logs which SIMD build it tried at INFO on every import: noise for a CLI user.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
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
