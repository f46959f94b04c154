"""Serving commands: `ranker serve`, `ranker query` and `ranker health`.

`query` and `health` are clients: they import only grpc, the generated stubs and the light
message conversions, never the pipeline (FAISS, LightGBM), so they start fast and quietly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from ranker.commands import fail
from ranker.config import Settings

if TYPE_CHECKING:
    import grpc

    from ranker.v1 import ranker_pb2 as pb

console = Console()
err_console = Console(stderr=True)


def _address(settings: Settings, address: str | None) -> str:
    return address or f"{settings.host}:{settings.port}"


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


def query(
    posting_id: Annotated[str | None, typer.Option(help="A stored posting's id.")] = None,
    posting_file: Annotated[
        Path | None,
        typer.Option(help="A .jsonl or .csv file holding the posting to rank for (first row)."),
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="How many candidates to show.")] = 10,
    explain: Annotated[bool, typer.Option(help="Show the reasons for each candidate.")] = True,
    location: Annotated[
        list[str] | None, typer.Option(help="Only candidates located here (repeatable).")
    ] = None,
    include_remote: Annotated[
        bool,
        typer.Option(help="Also (with --location) or only (without) candidates open to remote."),
    ] = False,
    include_relocating: Annotated[
        bool,
        typer.Option(help="Also (with --location) or only (without) candidates who'd relocate."),
    ] = False,
    remote_only: Annotated[bool, typer.Option(help="Only candidates open to remote work.")] = False,
    min_years: Annotated[
        float | None, typer.Option(help="Only candidates with this much experience.")
    ] = None,
    skill: Annotated[
        list[str] | None, typer.Option(help="Only candidates listing this skill (repeatable).")
    ] = None,
    address: Annotated[str | None, typer.Option(help="host:port of the service.")] = None,
    timeout: Annotated[float, typer.Option(help="Deadline in seconds.")] = 30.0,
) -> None:
    """Ask the running service for the top-k candidates of a posting; print them with reasons."""
    import grpc

    from ranker.v1 import ranker_pb2 as pb
    from ranker.v1 import ranker_pb2_grpc as pb_grpc

    settings = Settings()
    if (posting_id is None) == (posting_file is None):
        fail("give exactly one of --posting-id or --posting-file")
    request = pb.RankCandidatesRequest(top_k=k, explain=explain)
    if posting_id is not None:
        request.posting_id = posting_id
    else:
        from ranker import datafiles
        from ranker.errors import InvalidInput
        from ranker.transport.convert import posting_to_pb

        assert posting_file is not None
        try:
            postings = datafiles.read_postings(posting_file)
        except (InvalidInput, OSError) as e:
            fail(str(e))
        if not postings:
            fail(f"{posting_file} holds no posting")
        if len(postings) > 1:
            err_console.print(f"{posting_file} holds {len(postings)} postings; ranking the first")
        request.posting.CopyFrom(posting_to_pb(postings[0]))
    if location or include_remote or include_relocating or remote_only or min_years is not None:
        request.filters.CopyFrom(
            pb.Filters(
                locations=location or [],
                include_remote=include_remote,
                include_relocating=include_relocating,
                remote_only=remote_only,
            )
        )
    if skill:
        request.filters.must_have_skills.extend(skill)
    if min_years is not None:
        request.filters.min_years = min_years
    target = _address(settings, address)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.CandidateRankerStub(channel)
        try:
            response = stub.RankCandidates(request, timeout=timeout)
        except grpc.RpcError as e:
            _rpc_failure(e, target)
    _print_ranking(response)


def _print_ranking(r: pb.RankCandidatesResponse) -> None:
    console.print(
        f"posting [bold]{r.posting_id}[/bold] · model [bold]{r.model_version}[/bold] · "
        f"{r.eligible} eligible, {r.retrieved} reranked · {r.timings.total_ms:.1f} ms · "
        f"request {r.request_id}"
    )
    table = Table(show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("candidate")
    table.add_column("score", justify="right")
    table.add_column("similarity", justify="right")
    table.add_column("reasons")
    for c in r.results:
        reasons = "\n".join(c.explanation.reasons) if c.HasField("explanation") else ""
        table.add_row(str(c.rank), c.candidate_id, f"{c.score:.3f}", f"{c.similarity:.3f}", reasons)
    console.print(table)
    if not r.results:
        console.print("no candidate passed the filters")


def health(
    address: Annotated[str | None, typer.Option(help="host:port of the service.")] = None,
    timeout: Annotated[float, typer.Option(help="Deadline in seconds.")] = 5.0,
) -> None:
    """Print the service's gRPC health status; exit 1 unless SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = _address(Settings(), address)
    with grpc.insecure_channel(target) as channel:
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
    app.command()(query)
    app.command()(health)
