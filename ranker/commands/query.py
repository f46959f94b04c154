"""`ranker query`: a posting's top-k with reasons, as a table, JSON or CSV; `--why A B` says what
separates two candidates.

A client: it imports grpc, the generated stubs and the light conversions, never the pipeline
(FAISS, LightGBM), so it starts fast and quietly.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ranker.commands import fail
from ranker.commands.serving import (
    CaOpt,
    CertOpt,
    KeyOpt,
    TlsOpt,
    TokenOpt,
    _address,
    client_channel_for,
)
from ranker.config import Settings

if TYPE_CHECKING:
    from ranker.domain import Posting
    from ranker.transport.client import GrpcRankerClient
    from ranker.v1 import ranker_pb2 as pb

console = Console()
err_console = Console(stderr=True)


def query(
    posting_id: Annotated[str | None, typer.Option(help="A stored posting's id.")] = None,
    posting_file: Annotated[
        Path | None,
        typer.Option(
            help="A .json, .jsonl or .csv file holding the posting to rank for (its first one)."
        ),
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="How many candidates to show.")] = 10,
    explain: Annotated[bool, typer.Option(help="Show the reasons for each candidate.")] = True,
    why: Annotated[
        tuple[str, str] | None,
        typer.Option(help="Two candidate ids A B: what separates their scores for the posting."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (docs/query.schema.json).")
    ] = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print CSV, one row per candidate.")
    ] = False,
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
    token: TokenOpt = None,
    tls: TlsOpt = False,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Ask the running service for the top-k candidates of a posting; print them with reasons."""
    from ranker.transport.client import GrpcRankerClient, ServiceError
    from ranker.v1 import ranker_pb2 as pb

    if (posting_id is None) == (posting_file is None):
        fail("give exactly one of --posting-id or --posting-file")
    if as_json and as_csv:
        fail("give at most one of --json and --csv")
    settings = Settings()
    target = _address(settings, address)
    inline = _read_posting(posting_file) if posting_file is not None else None
    channel = client_channel_for(settings, target, token, tls, ca, cert, key)
    with GrpcRankerClient(target, timeout, channel=channel) as client:
        try:
            if why is not None:
                _compare(client, posting_id, inline, why, as_json)
                return
            request = pb.RankCandidatesRequest(top_k=k, explain=explain)
            if inline is not None:
                from ranker.transport.convert import posting_to_pb

                request.posting.CopyFrom(posting_to_pb(inline))
            else:
                request.posting_id = posting_id or ""
            _add_filters(
                request, location, include_remote, include_relocating, remote_only, min_years, skill
            )
            response = client.rank(request)
            posting = inline if inline is not None else client.posting(response.posting_id)
            candidates = client.candidates(c.candidate_id for c in response.results)
        except ServiceError as e:
            fail(str(e))
    from ranker.transport.client import ranking_view

    view = ranking_view(posting, response, candidates, explain)
    if as_json:
        sys.stdout.write(json.dumps(view, indent=2, ensure_ascii=False) + "\n")
    elif as_csv:
        sys.stdout.write(_csv(view, explain))
    else:
        _print_table(posting, view, response, explain)


def _read_posting(path: Path) -> Posting:
    from ranker import datafiles
    from ranker.errors import InvalidInput

    try:
        postings = datafiles.read_postings(path)
    except (InvalidInput, OSError) as e:
        fail(str(e))
    if not postings:
        fail(f"{path} holds no posting")
    if len(postings) > 1:
        err_console.print(f"{path} holds {len(postings)} postings; ranking the first")
    return postings[0]


def _add_filters(
    request: pb.RankCandidatesRequest,
    location: list[str] | None,
    include_remote: bool,
    include_relocating: bool,
    remote_only: bool,
    min_years: float | None,
    skill: list[str] | None,
) -> None:
    f = request.filters
    if location or include_remote or include_relocating or remote_only:
        f.locations.extend(location or [])
        f.include_remote = include_remote
        f.include_relocating = include_relocating
        f.remote_only = remote_only
    if skill:
        f.must_have_skills.extend(skill)
    if min_years is not None:
        f.min_years = min_years
    if not f.ListFields():
        request.ClearField("filters")


def _print_table(
    posting: Posting, view: dict[str, Any], r: pb.RankCandidatesResponse, explain: bool
) -> None:
    from ranker.transport.client import DECISION_AID_NOTICE, posting_header

    head = posting_header(posting)
    head[0] = f"[bold]{posting.title}[/bold] ({view['posting']['id']})"
    for line in head:
        console.print(line, highlight=False)
    console.print(
        f"model {r.model_version} · request {r.request_id} · {r.eligible} eligible, "
        f"{r.retrieved} reranked",
        highlight=False,
    )
    console.print(f"[italic]{DECISION_AID_NOTICE}[/italic]")
    if not view["results"]:
        console.print("no candidate passed the filters")
        return
    table = Table(show_lines=explain)
    table.add_column("#", justify="right")
    table.add_column("candidate")
    table.add_column("title")
    table.add_column("location")
    if explain:
        table.add_column("reasons")
    for row in view["results"]:
        cells = [str(row["rank"]), row["candidate_id"], row["title"], row["location"]]
        if explain:
            cells.append("\n".join(row["reasons"]))
        table.add_row(*cells)
    console.print(table)


def _csv(view: dict[str, Any], explain: bool) -> str:
    out = io.StringIO()
    columns = ["rank", "candidate_id", "title", "location", "score"]
    if explain:
        columns.append("reasons")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["posting_id", *columns])
    for row in view["results"]:
        values = [row[c] for c in columns if c != "reasons"]
        if explain:
            values.append(" | ".join(row["reasons"]))
        w.writerow([view["posting"]["id"], *values])
    return out.getvalue()


def _compare(
    client: GrpcRankerClient,
    posting_id: str | None,
    inline: Posting | None,
    ids: tuple[str, str],
    as_json: bool,
) -> None:
    from ranker.transport.client import comparison_view
    from ranker.v1 import ranker_pb2 as pb

    request = pb.CompareCandidatesRequest(candidate_a=ids[0], candidate_b=ids[1])
    if inline is not None:
        from ranker.transport.convert import posting_to_pb

        request.posting.CopyFrom(posting_to_pb(inline))
    else:
        request.posting_id = posting_id or ""
    view = comparison_view(client.compare(request))
    if as_json:
        sys.stdout.write(json.dumps(view, indent=2, ensure_ascii=False) + "\n")
        return
    console.print(f"[bold]{view['summary']}[/bold]", highlight=False)
    console.print(
        f"posting {view['posting_id']} · model {view['model_version']} · "
        f"request {view['request_id']}",
        highlight=False,
    )
    for key in ("a", "b"):
        side = view[key]
        where = f"rank {side['rank']}" if side["rank"] is not None else "not in the top retrieved"
        console.print(f"\n[bold]{side['candidate_id']}[/bold] ({where})", highlight=False)
        for reason in side["reasons"]:
            console.print(f"  - {reason}", highlight=False)
    console.print("\n[bold]What separates them[/bold]")
    for s in view["separating"] or [{"reason": "no single topic stands out"}]:
        console.print(f"  - {s['reason']}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `ranker query` to the `ranker` CLI."""
    app.command()(query)
