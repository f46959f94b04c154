"""Access commands: `ranker tokens create NAME --scope ... | list | revoke NAME`, and
`ranker reconsent ID --reason ...` (lift an erased id's tombstone, logged)."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ranker.commands import fail
from ranker.config import Settings
from ranker.errors import RankerError
from ranker.tokens import TokenFile, parse_scopes

console = Console()
err_console = Console(stderr=True)

tokens_app = typer.Typer(
    name="tokens",
    help="Create, list and revoke the bearer tokens clients send (stored hashed).",
    no_args_is_help=True,
)


def _tokens() -> TokenFile:
    return TokenFile(Settings().resolved_tokens_file)


@tokens_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Who or what uses it, e.g. ats-sync.")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            "-s",
            help="read, rank, write, erase or admin; repeat or comma-separate.",
        ),
    ],
) -> None:
    """Create a token and print its secret once (only its SHA-256 is kept)."""
    tokens = _tokens()
    try:
        token, secret = tokens.create(name, parse_scopes(scope))
    except RankerError as e:
        fail(str(e))
    err_console.print(
        f"token {token.name!r} created with scope {token.scope_names} in {tokens.path}. The "
        "secret below is shown once; keep it in the client's secret store. A running server "
        "that already requires tokens accepts it at once; one that did not must be restarted.",
        highlight=False,
    )
    # Alone on stdout so a script can capture it: `TOKEN=$(ranker tokens create ...)`.
    print(secret)


@tokens_app.command("list")
def list_tokens() -> None:
    """Every token: name, scopes, when created (never the secret)."""
    tokens = _tokens()
    try:
        found = tokens.tokens()
    except RankerError as e:
        fail(str(e))
    if not found:
        console.print(
            f"no tokens in {tokens.path}: a loopback server serves without them; create one "
            "with `ranker tokens create NAME --scope ...`"
        )
        return
    table = Table()
    for col in ("name", "scopes", "created"):
        table.add_column(col)
    for t in found:
        table.add_row(t.name, t.scope_names, t.created_at.isoformat(timespec="seconds"))
    console.print(table)


@tokens_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke a token; a running server refuses it from its next call."""
    tokens = _tokens()
    try:
        gone = tokens.revoke(name)
    except RankerError as e:
        fail(str(e))
    if not gone:
        fail(f"no token named {name!r} in {tokens.path}; `ranker tokens list` shows them")
    console.print(f"revoked {name!r}")


def reconsent(
    candidate_id: Annotated[str, typer.Argument(help="The erased candidate's id.")],
    reason: Annotated[
        str, typer.Option(help="Why it may be stored again (e.g. the consent's reference).")
    ],
) -> None:
    """Allow an erased candidate id to be stored again, after the person consented anew.

    Run with the service stopped (it holds the data folder). Logged in the store with the
    reason and the operating-system user; the erasure receipts stay.
    """
    from ranker.datalock import DataDirBusy, DataDirLock
    from ranker.store_api import describe_store, open_store, store_exists

    settings = Settings()
    db = describe_store(settings)
    try:
        if not store_exists(settings):
            fail(f"no store at {db}; nothing was erased there")
        with DataDirLock(settings.data_dir):
            store = open_store(settings)
            try:
                lifted = store.reconsent(candidate_id, reason, actor=f"cli:{getpass.getuser()}")
            finally:
                store.close()
    except (DataDirBusy, RankerError) as e:
        fail(str(e))
    if not lifted:
        fail(f"{candidate_id[:40]!r} is not an erased id in {db}; it can be stored as it is")
    console.print(
        f"re-consent recorded: {candidate_id[:40]!r} may be stored again (send it with "
        "UpsertCandidates or `ranker ingest`)"
    )


def register(app: typer.Typer) -> None:
    """Add the access commands to the `ranker` CLI."""
    app.add_typer(tokens_app)
    app.command()(reconsent)
