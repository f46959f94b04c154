"""`ranker ingest`: data files checked completely, then encoded and stored, with progress."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ranker.commands import fail
from ranker.commands.progress import duration, progress_for
from ranker.config import Settings

console = Console()
err_console = Console(stderr=True)

_DEMO_FILES = {
    "candidates": "candidates.jsonl",
    "postings": "postings.jsonl",
    "outcomes": "outcomes.jsonl",
    "protected": "protected.jsonl",
}


def _encoder(settings: Settings, dask: str | None, stack: contextlib.ExitStack) -> Any:
    """The encoder here, or (with `dask`) batches sent to the cluster's workers."""
    from embeddings import load_encoder

    if not dask:
        return load_encoder(settings=settings)
    from embeddings.manifest import is_valid_export
    from ranker.dask_cluster import dask_client
    from ranker.dask_ingest import DaskBatches

    folder = settings.resolved_encoder_dir
    if not is_valid_export(folder):
        # Exported here once, never by each worker on its own.
        fail(f"no exported encoder at {folder}; run `ranker export-encoder` first")
    client = stack.enter_context(dask_client(dask))
    console.print(f"encoding on Dask: {client.scheduler.address}, {len(client.nthreads())} workers")
    return DaskBatches(client, folder, settings, settings.dask_encoder_threads)


def _report_problems(problems: tuple[str, ...], total: int) -> None:
    for line in problems:
        err_console.print(f"[red]✗[/red] {line}", highlight=False, markup=True, soft_wrap=True)
    if total > len(problems):
        err_console.print(f"... and {total - len(problems)} more", highlight=False)


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
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Only check the files and report every problem; store nothing."
        ),
    ] = False,
    dask: Annotated[
        str | None,
        typer.Option(
            help="Encode the candidates on a Dask cluster: a scheduler address "
            "(tcp://host:8786) or local:N worker processes; default RANKER_DASK, else here.",
        ),
    ] = None,
) -> None:
    """Check, encode and store candidates, postings and outcomes, and build the index.

    Every file is read and checked before anything is written: all problems are reported at
    once (file, line, field) and nothing is stored while any remains. Run it with the service
    stopped. An ingest that was interrupted is finished by running it again: what it already
    stored is kept, and only the rest is encoded.
    """
    from ranker.datafiles import DataFilesInvalid
    from ranker.datalock import DataDirBusy, DataDirLock
    from ranker.errors import InvalidInput
    from ranker.index import ensure_index
    from ranker.ingest import check_files, ingest_files, is_ingested

    started = time.monotonic()
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
    if check:
        try:
            checked = check_files(files)
        except DataFilesInvalid as e:
            _report_problems(e.problems, e.total)
            fail(f"{e.total} problem(s) in the data files; fix them and check again")
        console.print(
            f"files are valid: {len(checked.candidates)} candidates, {len(checked.postings)} "
            f"postings, {len(checked.outcomes)} outcome events, {len(checked.protected)} "
            f"candidates with protected attributes ({duration(time.monotonic() - started)})"
        )
        return
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
        with contextlib.ExitStack() as stack, progress_for(err_console) as progress:
            try:
                encoder = _encoder(settings, dask or settings.dask, stack)
                report = ingest_files(
                    settings,
                    encoder,
                    candidates=files.get("candidates"),
                    postings=files.get("postings"),
                    outcomes=files.get("outcomes"),
                    protected=files.get("protected"),
                    progress=progress.update,
                    on_stage=progress.stage,
                )
            except DataFilesInvalid as e:
                _report_problems(e.problems, e.total)
                fail(
                    f"{e.total} problem(s) in the data files; fix them and run again (nothing was stored)"
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
        f"index holds {report.index_size} candidates; took {duration(time.monotonic() - started)}"
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
    """Add `ranker ingest` to the `ranker` CLI."""
    app.command()(ingest)
