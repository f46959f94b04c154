"""`ranker web`: the recruiter's review page, a separate process that calls the gRPC service."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from ranker.commands import fail
from ranker.commands.serving import _address
from ranker.config import Settings


def web(
    target: Annotated[
        str | None, typer.Option(help="host:port of the gRPC service (default: settings).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address the page is served on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the page; 0 picks a free one.")] = 8080,
    timeout: Annotated[float, typer.Option(help="Deadline of each call, in seconds.")] = 30.0,
) -> None:
    """Serve the review page: postings, top k with reasons, why A above B, shortlist / reject."""
    import uvicorn

    from ranker.transport.client import GrpcRankerClient
    from ranker.web.app import create_app

    settings = Settings()
    service = _address(settings, target)
    # Bound here, not by uvicorn, so port 0 can be reported before serving.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        fail(f"cannot serve on {host}:{port} ({e.strerror}); pick another --port")
    bound = sock.getsockname()[1]
    print(
        f"review page on http://{host}:{bound}/ (service at {service}); Ctrl-C stops it", flush=True
    )
    with GrpcRankerClient(service, timeout) as client:
        config = uvicorn.Config(create_app(client), log_level="warning", access_log=False)
        uvicorn.Server(config).run(sockets=[sock])


def register(app: typer.Typer) -> None:
    """Add `ranker web` to the `ranker` CLI."""
    app.command()(web)
