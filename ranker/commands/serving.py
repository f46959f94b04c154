"""Serving commands: `ranker serve` and `ranker health` (`ranker query` lives in
`ranker.commands.query`, `ranker ingest` in `ranker.commands.ingest`).

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


def _address(settings: Settings, address: str | None) -> str:
    """Where a client command calls: `--address`, else RANKER_TARGET (one address or several
    replicas), else the server's own host and port."""
    return address or settings.target or f"{settings.host}:{settings.port}"


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


def _require_encoder(settings: Settings) -> None:
    """Refuse to serve without an exported encoder: exporting needs torch, serving must not."""
    from embeddings.manifest import is_valid_export

    folder = settings.resolved_encoder_dir
    if not is_valid_export(folder):
        fail(
            f"no exported encoder in {folder}; run `ranker export-encoder` first (it needs the "
            "`export` extra: pip install 'candidate-ranker[export]'), or point "
            "RANKER_ENCODER_DIR at an exported one"
        )


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
    _require_encoder(settings)
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


def register(app: typer.Typer) -> None:
    """Add the serving commands to the `ranker` CLI."""
    app.command()(serve)
    app.command()(health)
