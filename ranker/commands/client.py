"""Commands for a live service: push files, erase, read back, model info, logged decisions.

`ranker ingest` owns a stopped service's data folder; these talk to a running one over gRPC
(`--address`, default the settings' host and port), so an operator can feed and inspect it
without stopping it. Like `ranker query`, they import grpc, the stubs and the light conversions
only. `ranker decision` is the exception: it reads the decision log from the store, read-only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ranker.commands import fail
from ranker.commands.progress import duration, progress_for
from ranker.commands.serving import _address, _rpc_failure
from ranker.config import Settings

if TYPE_CHECKING:
    import grpc


console = Console()
err_console = Console(stderr=True)

AddressOption = Annotated[str | None, typer.Option(help="host:port of the service.")]
TimeoutOption = Annotated[float, typer.Option(help="Deadline of each call, in seconds.")]


class Kind(StrEnum):
    candidates = "candidates"
    postings = "postings"
    outcomes = "outcomes"


def _channel(address: str) -> grpc.Channel:
    from ranker.transport.channel import client_channel

    try:
        return client_channel(address)
    except ValueError as e:
        fail(str(e))


def _stub(channel: grpc.Channel) -> Any:
    from ranker.v1 import ranker_pb2_grpc as pb_grpc

    return pb_grpc.CandidateRankerStub(channel)


def _call(method: Callable[..., Any], request: Any, timeout: float, address: str) -> Any:
    import grpc

    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as e:
        _rpc_failure(e, address)


def _code_name(code: int) -> str:
    import grpc

    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


def push(
    kind: Annotated[Kind, typer.Argument(help="What the file holds.")],
    file: Annotated[Path, typer.Argument(help="A .jsonl or .csv file (see README: Data files).")],
    batch: Annotated[
        int, typer.Option(help="Items per call (at most the server's RANKER_MAX_BATCH_ITEMS).")
    ] = 100,
    address: AddressOption = None,
    timeout: TimeoutOption = 120.0,
) -> None:
    """Send a data file to the running service in batches (UpsertCandidates / UpsertPostings /
    RecordOutcomes); each item the service refuses is reported with its file line.

    The file is checked completely first: nothing is sent while it holds a problem. Upserts are
    idempotent by id and repeated outcomes are stored once, so a push that stopped half-way is
    finished by running it again.
    """
    import grpc

    from ranker import datafiles
    from ranker.domain import Candidate, Outcome, Posting
    from ranker.transport.convert import candidate_to_pb, outcome_to_pb, posting_to_pb
    from ranker.v1 import ranker_pb2 as pb

    if batch < 1:
        fail("--batch must be at least 1")
    started = time.monotonic()
    problems = datafiles.FileProblems()
    items: list[tuple[int, Any]]  # (file line, message)
    build: Callable[[list[Any]], Any]
    if kind is Kind.candidates:
        items = [
            (n, candidate_to_pb(r)) for n, r in datafiles.read_numbered(file, Candidate, problems)
        ]
        method, build = "UpsertCandidates", lambda ms: pb.UpsertCandidatesRequest(candidates=ms)
    elif kind is Kind.postings:
        items = [(n, posting_to_pb(r)) for n, r in datafiles.read_numbered(file, Posting, problems)]
        method, build = "UpsertPostings", lambda ms: pb.UpsertPostingsRequest(postings=ms)
    else:
        items = [(n, outcome_to_pb(r)) for n, r in datafiles.read_numbered(file, Outcome, problems)]
        method, build = "RecordOutcomes", lambda ms: pb.RecordOutcomesRequest(outcomes=ms)
    if problems:
        error = problems.error()
        for line in error.problems:
            err_console.print(f"[red]✗[/red] {line}", highlight=False, soft_wrap=True)
        fail(f"{error.total} problem(s) in {file.name}; fix them and push again (nothing was sent)")
    target = _address(Settings(), address)
    sent = ok = created = failed = 0
    with _channel(target) as channel, progress_for(err_console) as progress:
        stub = _stub(channel)
        progress.stage(f"pushing {kind.value}")
        for start in range(0, len(items), batch):
            part = items[start : start + batch]
            lines = [line for line, _ in part]
            try:
                reply = getattr(stub, method)(build([m for _, m in part]), timeout=timeout)
            except grpc.RpcError as e:
                if sent:
                    err_console.print(
                        f"the batch of {file.name} lines {lines[0]}-{lines[-1]} was refused as a "
                        f"whole; the {sent} items before it were sent (push again to finish)"
                    )
                _rpc_failure(e, target)
            for item in reply.items:
                if item.code:
                    failed += 1
                    err_console.print(
                        f"[red]✗[/red] {file.name} line {lines[item.index]} ({item.id}): "
                        f"{_code_name(item.code)}: {item.message}",
                        highlight=False,
                        soft_wrap=True,
                    )
                else:
                    ok += 1
                    if kind is not Kind.outcomes:
                        created += int(item.created)
            if kind is Kind.outcomes:
                created += reply.recorded
            sent += len(part)
            progress.update(sent, len(items))
    took = duration(time.monotonic() - started)
    if kind is Kind.outcomes:
        summary = f"{ok} of {sent} outcome events accepted ({created} new)"
    else:
        summary = f"{ok} of {sent} {kind.value} stored ({created} new, {ok - created} replaced)"
    console.print(f"{summary}; {failed} refused; took {took}")
    if failed:
        raise typer.Exit(code=1)


def erase(
    ids: Annotated[list[str], typer.Argument(help="Candidate ids to erase, for good.")],
    address: AddressOption = None,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Erase candidates (DeleteCandidates) and print the erasure receipt to keep."""
    from ranker.v1 import ranker_pb2 as pb

    target = _address(Settings(), address)
    with _channel(target) as channel:
        reply = _call(
            _stub(channel).DeleteCandidates, pb.DeleteCandidatesRequest(ids=ids), timeout, target
        )
    missing = [i for i in reply.items if i.code]
    for item in missing:
        err_console.print(
            f"[yellow]{item.id}[/yellow]: {_code_name(item.code)}: {item.message}",
            highlight=False,
        )
    if reply.HasField("receipt"):
        r = reply.receipt
        console.print(
            f"erased {r.candidates} candidate(s) at {_when(r.erased_at)}; "
            f"{r.rows_deleted} stored rows removed"
        )
        console.print(f"receipt ids: {', '.join(str(x) for x in r.receipt_ids)}")
        for table, rows in sorted(r.rows_by_table.items()):
            console.print(f"  {table}: {rows}")
    console.print(f"{reply.total_candidates} candidates searchable now")
    if missing:
        raise typer.Exit(code=1)


def _when(ts: Any) -> str:
    return str(ts.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds"))


def candidate(
    candidate_id: Annotated[str, typer.Argument(help="The candidate's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the fields as JSON.")] = False,
    address: AddressOption = None,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Print a stored candidate's fields (GetCandidate)."""
    from google.protobuf.json_format import MessageToDict

    from ranker.v1 import ranker_pb2 as pb

    target = _address(Settings(), address)
    with _channel(target) as channel:
        reply = _call(
            _stub(channel).GetCandidate, pb.GetCandidateRequest(id=candidate_id), timeout, target
        )
    fields = MessageToDict(
        reply.candidate, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    if as_json:
        console.print_json(json.dumps(fields))
        return
    cv = fields.pop("cv_text", "")
    for name, value in fields.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        console.print(f"[bold]{name}[/bold]: {shown}", highlight=False)
    console.print(f"[bold]cv_text[/bold] ({len(cv)} characters):\n{cv}", highlight=False)


def postings(
    limit: Annotated[int, typer.Option(help="Show at most this many (0 = all).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    address: AddressOption = None,
    timeout: TimeoutOption = 10.0,
) -> None:
    """List the stored postings (ListPostings, every page up to --limit)."""
    from google.protobuf.json_format import MessageToDict

    from ranker.v1 import ranker_pb2 as pb

    target = _address(Settings(), address)
    found: list[Any] = []
    token = ""
    with _channel(target) as channel:
        stub = _stub(channel)
        while True:
            size = 1000 if limit == 0 else min(1000, limit - len(found))
            page = _call(
                stub.ListPostings,
                pb.ListPostingsRequest(page_size=size, page_token=token),
                timeout,
                target,
            )
            found.extend(page.postings)
            token = page.next_page_token
            if not token or (limit and len(found) >= limit):
                break
    if as_json:
        for p in found:
            print(json.dumps(MessageToDict(p, preserving_proto_field_name=True)))
        return
    table = Table()
    for column in ("id", "title", "location", "remote", "min years", "required skills"):
        table.add_column(column)
    for p in found:
        table.add_row(
            p.id,
            p.title,
            p.location,
            "yes" if p.remote else "",
            f"{p.min_years:g}",
            ", ".join(p.required_skills),
        )
    console.print(table)
    more = " (more stored: raise --limit)" if token else ""
    console.print(f"{len(found)} postings{more}")


def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply as JSON.")] = False,
    address: AddressOption = None,
    timeout: TimeoutOption = 10.0,
) -> None:
    """What the service serves (GetModelInfo): version, features, metrics, challenger."""
    from google.protobuf.json_format import MessageToDict

    from ranker.v1 import ranker_pb2 as pb

    target = _address(Settings(), address)
    with _channel(target) as channel:
        r = _call(_stub(channel).GetModelInfo, pb.GetModelInfoRequest(), timeout, target)
    if as_json:
        data = MessageToDict(r, preserving_proto_field_name=True)
        data.pop("card_json", None)
        console.print_json(json.dumps(data))
        return
    kind = " (fallback: no trained version promoted)" if r.fallback else ""
    console.print(f"[bold]model[/bold]: {r.version}{kind}", highlight=False)
    console.print(f"loaded at {_when(r.loaded_at)}; {r.total_candidates} candidates searchable")
    if r.refused_version:
        console.print(f"[red]refused[/red] {r.refused_version}: {r.refused_error}")
    if r.challenger_version:
        console.print(
            f"challenger {r.challenger_version} in shadow: {r.shadow_scored} scored, "
            f"{r.shadow_dropped} dropped"
        )
    if r.refused_challenger:
        console.print(
            f"[red]refused challenger[/red] {r.refused_challenger}: {r.refused_challenger_error}"
        )
    console.print(f"features ({len(r.feature_names)}): {', '.join(r.feature_names)}")
    shown = {k: v for k, v in sorted(r.metrics.items()) if "ndcg@10" in k or "mrr" in k}
    for name, value in list(shown.items())[:12]:
        console.print(f"  {name}: {value:.4f}", highlight=False)


def decision(
    request_id: Annotated[str, typer.Argument(help="The request id of a ranking.")],
    features: Annotated[
        int, typer.Option(help="Features shown per candidate, by value in words (0 = all).")
    ] = 0,
) -> None:
    """A logged ranking decision: model, posting, and each candidate's features in words.

    Reads the decision log from the store (RANKER_DATABASE_URL, or RANKER_DB_PATH /
    RANKER_DATA_DIR) read-only, so it works beside a running service, which writes decisions
    within moments of serving them.
    """
    from ranker.errors import RankerError
    from ranker.features import FEATURES_BY_NAME
    from ranker.store_api import open_decision_reader

    settings = Settings()
    try:
        with open_decision_reader(settings) as reader:
            d = reader.get(request_id)
    except RankerError as e:
        fail(str(e))
    posting = d.posting_id or f"inline posting {d.posting_hash[:12]}"
    console.print(
        f"request [bold]{d.request_id}[/bold] · {d.at.isoformat(timespec='seconds')} · model "
        f"[bold]{d.model_version}[/bold] · {posting} · top {d.top_k}",
        highlight=False,
    )
    if d.params:
        console.print(f"parameters: {json.dumps(d.params, sort_keys=True, default=str)}")
    table = Table(show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("candidate")
    table.add_column("score", justify="right")
    table.add_column("features served")
    for rank, (cid, score, row) in enumerate(
        zip(d.candidate_ids, d.scores, d.features, strict=True), start=1
    ):
        words = _in_words(d.feature_names, row, FEATURES_BY_NAME)
        table.add_row(str(rank), cid, f"{score:.3f}", "\n".join(words[: features or None]))
    console.print(table)
    if not d.candidate_ids:
        console.print("no candidate was served")


def drift(
    version: Annotated[
        str | None, typer.Argument(help="Model version; default: the one promoted.")
    ] = None,
    window: Annotated[
        int | None, typer.Option(help="Most recent served rows to use (RANKER_DRIFT_WINDOW).")
    ] = None,
) -> None:
    """Feature drift: PSI of each feature of the served rows against the version's training
    distribution (decision log and registry, read-only); a running service exports the same
    figures as the gauge ranker_feature_psi."""
    from ranker.drift import MIN_ROWS, PSI_SHIFT, PSI_WATCH, served_drift
    from ranker.errors import RankerError
    from ranker.registry import ModelRegistry

    settings = Settings()
    try:
        version = version or ModelRegistry(settings.resolved_registry_dir).current_version()
        if version is None:
            fail(
                "no model version is promoted, so there is no training distribution to compare "
                "with; name a version: `ranker drift v0001`"
            )
        report = served_drift(settings, version, window or settings.drift_window)
    except RankerError as e:
        fail(str(e))
    rows = max((d.rows for d in report), default=0)
    console.print(
        f"model [bold]{version}[/bold] · {rows} most recent served rows (top-k of logged "
        f"rankings) against its training distribution · PSI < {PSI_WATCH} stable, "
        f"> {PSI_SHIFT} shift",
        highlight=False,
    )
    if rows == 0:
        console.print(f"no ranking served by {version} is in the decision log yet")
        return
    table = Table()
    table.add_column("feature")
    table.add_column("PSI", justify="right")
    table.add_column("")
    colour = {"shift": "red", "watch": "yellow", "stable": "green", "too few rows": "dim"}
    for d in sorted(report, key=lambda d: -d.psi):
        table.add_row(d.name, f"{d.psi:.3f}", f"[{colour[d.verdict]}]{d.verdict}[/]")
    console.print(table)
    if rows < MIN_ROWS:
        console.print(f"fewer than {MIN_ROWS} rows: PSI reads high on few rows; wait for more")


def _in_words(names: Sequence[str], row: Any, specs: dict[str, Any]) -> list[str]:
    out = []
    for name, value in zip(names, row, strict=True):
        spec = specs.get(name)
        out.append(
            f"{spec.in_words(float(value))}  ({name} = {value:.3g})"
            if spec
            else f"{name} = {value:.3g}"
        )
    return out


def register(app: typer.Typer) -> None:
    """Add the live-service client commands to the `ranker` CLI."""
    app.command()(push)
    app.command()(erase)
    app.command()(candidate)
    app.command()(postings)
    app.command()(info)
    app.command()(decision)
    app.command()(drift)
