"""Serving commands: `ranker serve`, `ranker health` and `ranker ingest` (`ranker query` lives in
`ranker.commands.query`).

`health` is a client: it imports only grpc and the health stubs, never the pipeline (FAISS,
LightGBM), so it starts fast and quietly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from ranker.commands import fail
from ranker.config import Settings

if TYPE_CHECKING:
    import grpc

console = Console()
err_console = Console(stderr=True)

_DEMO_FILES = {
    "candidates": "candidates.jsonl",
    "postings": "postings.jsonl",
    "outcomes": "outcomes.jsonl",
    "protected": "protected.jsonl",
}


def _address(settings: Settings, address: str | None) -> str:
    return address or f"{settings.host}:{settings.port}"


# The client's credentials, shared by `query` and `health`; each falls back to its RANKER_CLIENT_*
# setting, so a token need not appear on the command line (or in the shell history).
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="Bearer token to send (default: RANKER_CLIENT_TOKEN)."),
]
TlsOpt = Annotated[
    bool, typer.Option("--tls", help="Use TLS with the system's trusted CAs (or --ca).")
]
CaOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca", help="CA file to trust for the server (implies TLS; RANKER_CLIENT_CA_FILE)."
    ),
]
CertOpt = Annotated[
    Path | None,
    typer.Option("--cert", help="Client certificate for mutual TLS (RANKER_CLIENT_CERT_FILE)."),
]
KeyOpt = Annotated[
    Path | None, typer.Option("--key", help="Client key for mutual TLS (RANKER_CLIENT_KEY_FILE).")
]


def client_channel_for(
    settings: Settings,
    target: str,
    token: str | None,
    tls: bool,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
) -> grpc.Channel:
    from ranker.transport.channel import client_channel

    secret = settings.client_token.get_secret_value() if settings.client_token else None
    try:
        return client_channel(
            target,
            token=token or secret,
            tls=tls,
            ca_file=ca or settings.client_ca_file,
            cert_file=cert or settings.client_cert_file,
            key_file=key or settings.client_key_file,
        )
    except ValueError as e:
        fail(str(e))


def _rpc_failure(e: grpc.RpcError, address: str) -> NoReturn:
    import grpc

    code = e.code()  # type: ignore[attr-defined]
    details = e.details()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (details or "").lower():
        fail(f"no service answers at {address}; start it with `ranker serve`")
    fail(f"{code.name}: {details}")


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings).")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port; 0 picks a free one.")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus port; 0 disables it.")
    ] = None,
) -> None:
    """Serve the CandidateRanker gRPC service until SIGTERM or Ctrl-C."""
    from ranker.datalock import DataDirBusy, DataDirLock
    from ranker.errors import RankerError
    from ranker.transport.server import StartError
    from ranker.transport.server import serve as run_server

    updates = {
        k: v
        for k, v in {"host": host, "port": port, "metrics_port": metrics_port}.items()
        if v is not None
    }
    settings = Settings(**updates)  # type: ignore[arg-type]
    try:
        with DataDirLock(settings.data_dir):
            asyncio.run(run_server(settings))
    except KeyboardInterrupt:
        pass
    except (RankerError, StartError, DataDirBusy) as e:
        fail(str(e))


def health(
    address: Annotated[str | None, typer.Option(help="host:port of the service.")] = None,
    timeout: Annotated[float, typer.Option(help="Deadline in seconds.")] = 5.0,
    tls: TlsOpt = False,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Print the service's gRPC health status; exit 1 unless SERVING (needs no token)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    settings = Settings()
    target = _address(settings, address)
    with client_channel_for(settings, target, None, tls, ca, cert, key) as channel:
        try:
            status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
                .status
            )
        except grpc.RpcError as e:
            _rpc_failure(e, target)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    console.print(name)
    if status != health_pb2.HealthCheckResponse.SERVING:
        raise typer.Exit(code=1)


def ingest(
    candidates: Annotated[
        Path | None, typer.Option(help="Candidates (.jsonl/.csv); default: the demo file.")
    ] = None,
    postings: Annotated[
        Path | None, typer.Option(help="Postings (.jsonl/.csv); default: the demo file.")
    ] = None,
    outcomes: Annotated[
        Path | None, typer.Option(help="Outcomes (.jsonl/.csv); default: the demo file.")
    ] = None,
    protected: Annotated[
        Path | None,
        typer.Option(help="Protected attributes, kept apart for audits; default: the demo file."),
    ] = None,
    if_missing: Annotated[
        bool,
        typer.Option(help="Skip when these very files were already ingested to completion."),
    ] = False,
) -> None:
    """Encode and store candidates, postings and outcomes, and build the index (service stopped).

    An ingest that was interrupted is finished by running it again: what it already stored is
    kept, and only the rest is encoded.
    """
    from rich.progress import Progress

    from ranker.datalock import DataDirBusy, DataDirLock
    from ranker.errors import InvalidInput
    from ranker.index import ensure_index
    from ranker.ingest import ingest_files, is_ingested

    settings = Settings()
    files: dict[str, Path | None] = {
        "candidates": candidates,
        "postings": postings,
        "outcomes": outcomes,
        "protected": protected,
    }
    if all(v is None for v in files.values()):
        demo = settings.resolved_demo_dir
        if not (demo / _DEMO_FILES["candidates"]).exists():
            fail(
                f"no data files given and no demo data in {demo}; generate it with "
                "`ranker demo-data` or pass --candidates/--postings/--outcomes"
            )
        files = {k: demo / name for k, name in _DEMO_FILES.items() if (demo / name).exists()}
    lock = DataDirLock(settings.data_dir)
    try:
        lock.acquire()
    except DataDirBusy as e:
        fail(str(e))
    try:
        try:
            done = if_missing and is_ingested(settings, files)
        except (InvalidInput, OSError) as e:  # e.g. a store of another schema: says what to do
            fail(str(e))
        if done:
            size, rebuilt = ensure_index(settings)
            note = "index rebuilt" if rebuilt else "index up to date"
            console.print(f"these files are already ingested ({size} indexed, {note}); skipping")
            return
        from embeddings import load_encoder

        encoder = load_encoder(settings=settings)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("encoding candidates", total=None)
            try:
                report = ingest_files(
                    settings,
                    encoder,
                    candidates=files.get("candidates"),
                    postings=files.get("postings"),
                    outcomes=files.get("outcomes"),
                    protected=files.get("protected"),
                    progress=lambda done, total: progress.update(task, completed=done, total=total),
                )
            except (InvalidInput, OSError) as e:
                fail(str(e))
    finally:
        lock.release()
    for line in report.rejected:
        err_console.print(f"[yellow]skipped[/yellow] {line}", highlight=False)
    resumed = f" ({report.unchanged} already stored)" if report.unchanged else ""
    console.print(
        f"stored {report.candidates} candidates{resumed}, {report.postings} postings, "
        f"{report.outcomes} new outcomes, {report.protected} protected attributes; "
        f"index holds {report.index_size} candidates"
    )
    if report.erased:
        shown = ", ".join(repr(cid[:40]) for cid in report.erased[:10])
        more = f" and {len(report.erased) - 10} more" if len(report.erased) > 10 else ""
        err_console.print(
            f"[yellow]skipped {len(report.erased)} erased candidates ({shown}{more}), "
            f"{report.erased_outcomes} of their outcomes and {report.erased_protected} protected "
            "attributes: an erased id is stored again only after `ranker reconsent ID --reason "
            "...`[/yellow]",
            highlight=False,
        )
    if report.rejected:
        err_console.print(
            f"[yellow]{len(report.rejected)} items could not be encoded and were skipped; fix "
            "their text in the files and run `ranker ingest` again[/yellow]"
        )


def register(app: typer.Typer) -> None:
    """Add the serving commands to the `ranker` CLI."""
    app.command()(serve)
    app.command()(health)
    app.command()(ingest)
