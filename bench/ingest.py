"""Ingestion: candidates/s through `UpsertCandidates` beside sentence-transformers; the bulk path at
scale (vectors given) stage by stage; the fp32 and the int8 encoder through the service."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench._baseline import sentence_transformer, st_encode
from bench._data import BaseSet, base_set, bench_root, build_candidate_set, fresh_candidates
from bench._ingest_scale import (
    FOLDER,
    BulkRun,
    EncodedRun,
    bulk_into,
    copy_set,
    encoded_runs,
    ingest_threads,
    new_rows,
)
from bench._report import rate_ratio, table
from bench._server import ServerProcess
from embeddings import load_encoder
from embeddings.chunking import chunk_spans
from embeddings.runtime import intra_op_threads
from ranker.config import Settings
from ranker.domain import Candidate
from ranker.prepared import candidate_text
from ranker.transport.convert import candidate_to_pb
from ranker.v1 import ranker_pb2 as pb

log = logging.getLogger(__name__)

TITLE = "Ingestion"
BULK_NEW = 20_000
"""Size knob: synthetic candidates (vectors given) the bulk path adds to each folder."""
HELD = 100_000
"""Size knob: candidates the large folder holds (a copy of that bench set, made and removed
here); the encoded path's service runs on it too."""


def _windows(texts: Sequence[str], settings: Settings) -> list[list[int]]:
    """The token windows the service encodes for each text (its chunking, its tokenizer)."""
    encoder = load_encoder(settings.resolved_encoder_dir, settings)
    window = encoder.max_seq_length - 2
    out: list[list[int]] = []
    for ids in encoder.tokenize(list(texts)):
        out += [ids[a:b] for a, b in chunk_spans(len(ids), window, settings.chunk_overlap)]
    return out


def st_encode_windows(windows: Sequence[Sequence[int]], batch_size: int = 32) -> float:
    """Seconds sentence-transformers' model takes on exactly the service's token windows."""
    import torch

    st = sentence_transformer()
    tok = st.tokenizer
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))
    started = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            members = [windows[i] for i in order[b : b + batch_size]]
            width = max(len(w) for w in members) + 2
            ids = torch.full((len(members), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(members), width), dtype=torch.long)
            for row, w in enumerate(members):
                ids[row, : len(w) + 2] = torch.tensor(
                    [tok.cls_token_id, *w, tok.sep_token_id], dtype=torch.long
                )
                mask[row, : len(w) + 2] = 1
            st.forward({"input_ids": ids, "attention_mask": mask})
    return time.perf_counter() - started


def _through_grpc(
    base: BaseSet, candidates: Sequence[Candidate], batch: int, root: Path
) -> tuple[float, int]:
    """(seconds for all upserts, candidates stored) on a fresh, empty store under `root`."""
    folder = root / "ingest"
    if folder.exists():
        shutil.rmtree(folder)
    settings = Settings(
        data_dir=folder,
        registry_dir=base.registry_dir,
        encoder_dir=base.encoder_dir,
        max_batch_items=max(batch, 1),
    )
    with ServerProcess(settings, root / "logs" / "ingest.log") as server:
        stub = server.stub()
        # One untimed call so the first timed batch does not pay for ONNX Runtime's warm-up.
        warm = [candidate_to_pb(c) for c in fresh_candidates(min(4, batch), seed=99)]
        stub.UpsertCandidates(pb.UpsertCandidatesRequest(candidates=warm), timeout=300)
        stored = 0
        started = time.perf_counter()
        for start in range(0, len(candidates), batch):
            part = [candidate_to_pb(c) for c in candidates[start : start + batch]]
            r = stub.UpsertCandidates(pb.UpsertCandidatesRequest(candidates=part), timeout=600)
            stored += r.stored
        seconds = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    return seconds, stored


def run(
    n: int = 96,
    batch: int = 32,
    base: BaseSet | None = None,
    root: Path | None = None,
    bulk: int = BULK_NEW,
    held: int = HELD,
) -> str:
    """Upsert `n` fresh realistic candidates through gRPC; encode the same texts the plain way;
    then the bulk path (`bulk` candidates, vectors given) into an empty folder and a copy of the
    `held`-candidate set, and the same `n` through the service there with fp32 and int8."""
    base = base if base is not None else base_set()
    root = root if root is not None else bench_root()
    settings = Settings(encoder_dir=base.encoder_dir)
    candidates = fresh_candidates(n)
    texts = [candidate_text(c) for c in candidates]
    words = np.median([len(t.split()) for t in texts])
    windows = _windows(texts, settings)

    grpc_s, stored = _through_grpc(base, candidates, batch, root)
    if stored != n:
        raise RuntimeError(f"the service stored {stored} of {n} candidates; see the server log")

    encoder = load_encoder(base.encoder_dir, settings)
    encoder.encode_documents(texts[:4])
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        encoder.encode_documents(texts[start : start + batch])
    onnx_s = time.perf_counter() - t0

    st_encode(texts[:4])
    t0 = time.perf_counter()
    st_encode(texts, batch_size=batch)
    st_s = time.perf_counter() - t0
    st_windows_s = st_encode_windows(windows, batch)

    threads = intra_op_threads(settings.ort_session)
    per = len(windows) / n
    rows = [
        [
            "service: `UpsertCandidates` (encode every window, store durably, index)",
            f"{n / grpc_s:.1f}",
            f"{len(windows) / grpc_s:.1f}",
            "1.00×",
        ],
        [
            "ONNX encoder alone, in-process (`encode_documents`)",
            f"{n / onnx_s:.1f}",
            f"{len(windows) / onnx_s:.1f}",
            rate_ratio(n / grpc_s, n / onnx_s),
        ],
        [
            "sentence-transformers `encode` of the same texts (truncates each at 256 tokens)",
            f"{n / st_s:.1f}",
            f"{n / st_s:.1f} (one window each)",
            rate_ratio(n / grpc_s, n / st_s),
        ],
        [
            "sentence-transformers' model on the service's exact windows",
            f"{n / st_windows_s:.1f}",
            f"{len(windows) / st_windows_s:.1f}",
            rate_ratio(n / grpc_s, n / st_windows_s),
        ],
    ]
    lines = [
        f"## {TITLE}",
        "",
        f"{n} new demo candidates with realistic CVs ({words:.0f} words median, {per:.1f} "
        f"encoder windows each on average, {len(windows)} in all), sent in batches of {batch} "
        "to a fresh `ranker serve` process; a batch is acknowledged once stored durably "
        "(SQLite, synchronous=FULL) and searchable. Against it: the same texts encoded in the "
        f"bench process, in batches of {batch}. torch and ONNX Runtime both get {threads} "
        "threads. Ratio = service rate / that row's rate (above 1: the service is faster).",
        "",
        table(["path", "candidates/s", "windows/s", "service ratio"], rows),
        "",
        "sentence-transformers' plain `encode` reads only the first 256 tokens of a CV and "
        "drops the rest; the service encodes whole CVs, so the last row (same windows, same "
        "work) is the like-for-like comparison of the runtimes.",
        "",
        *_at_scale(base, candidates, batch, root, bulk, held),
    ]
    return "\n".join(lines) + "\n"


def _at_scale(
    base: BaseSet,
    candidates: Sequence[Candidate],
    batch: int,
    root: Path,
    bulk: int,
    held: int,
) -> list[str]:
    """Measure and report the bulk path and the encoders at scale; the copies are removed."""
    data = build_candidate_set(base, held, root)
    try:
        copy, copy_s = copy_set(data, root)
        # The service first, on the copy as built: a folder holding exactly `held`.
        encoded = encoded_runs(copy, base, candidates, batch, root)
        rows = new_rows(base, bulk)
        empty = bulk_into(root / FOLDER / "empty", base, rows)
        full = bulk_into(copy, base, rows)
    finally:
        shutil.rmtree(root / FOLDER, ignore_errors=True)
    return [
        *_bulk_report(empty, full, held, copy_s),
        "",
        *_encoded_report(encoded, held, len(candidates), batch, ingest_threads(base)),
        "",
        *_first_load(full, encoded),
    ]


_BULK_ROWS = (
    ("check", "`ranker ingest`: read and check the data file (`check_files`)", "the file check"),
    (
        "store",
        "`ranker ingest`: store writes (`upsert_candidates`, 256 per durable transaction)",
        "the store writes",
    ),
    (
        "rebuild",
        "`ranker ingest`: index rebuilt from the whole store (`index_from_store`)",
        "`ranker ingest`'s index rebuild",
    ),
    (
        "prepare",
        "catch-up: `prepare_candidate` (tokenise each CV, term counts, skills)",
        "preparing the catalog entries (`prepare_candidate`)",
    ),
    ("put", "catch-up: `CandidateCatalog.put_many`, 1,000 per call", "the catalog's `put_many`"),
    ("add", "catch-up: `FaissIndex.add`, 1,000 per call", "the index adds"),
    ("save", "save the catalog's state and the index file", "the saves"),
)
INCREMENTAL = ("store", "prepare", "put", "add", "save")
"""The stages of the incremental bulk path: store, catalog, index, saved."""
FIRST_LOAD = ("check", "store", "rebuild", "prepare", "put", "add", "save")
"""Every stage a first load runs: `ranker ingest`, then the start-up catch-up."""


def _cells(run: BulkRun, *stages: str) -> list[str]:
    seconds = sum(run.seconds.get(s, float("nan")) for s in stages)
    rate = run.rate(*stages)
    if not np.isfinite(rate):
        return ["–", "–"]
    return [f"{seconds:.2f}" if seconds >= 1 else f"{seconds:.3g}", f"{rate:,.0f}"]


def _bulk_report(empty: BulkRun, full: BulkRun, held: int, copy_s: float) -> list[str]:
    def row(label: str, *stages: str) -> list[str]:
        return [
            label,
            *_cells(empty, *stages),
            *_cells(full, *stages),
            rate_ratio(full.rate(*stages), empty.rate(*stages)),
        ]

    rows = [row(label, key) for key, label, _ in _BULK_ROWS]
    rows.append(
        row("**store + catalog + index, incremental** (store, catch-up, save)", *INCREMENTAL)
    )
    rows.append(
        row("**first load: `ranker ingest`, then the catch-up** (every row above)", *FIRST_LOAD)
    )
    labels = {key: short for key, _, short in _BULK_ROWS}
    bound = max(INCREMENTAL, key=lambda s: full.seconds[s])
    bound_first = max(FIRST_LOAD, key=lambda s: full.seconds[s])
    share = full.seconds[bound] / sum(full.seconds[s] for s in INCREMENTAL)
    share_first = full.seconds[bound_first] / sum(full.seconds[s] for s in FIRST_LOAD)
    where = f"Into the {full.held:,}-candidate folder"
    if bound == bound_first:
        bound_text = (
            f"{where} both the incremental path and a first load as the product runs it are "
            f"bound by {labels[bound]} ({share:.0%} and {share_first:.0%} of their time)"
        )
    else:
        bound_text = (
            f"{where} the incremental path is bound by {labels[bound]} ({share:.0%} of its "
            f"time), and a first load as the product runs it by {labels[bound_first]} "
            f"({share_first:.0%})"
        )
    layout = (
        "IVF lists in the large folder, an exact scan in the empty one"
        if full.ivf
        else "an exact scan in both"
    )
    return [
        "### At scale: the bulk path, vectors already computed",
        "",
        f"{full.new:,} synthetic candidates (real demo CVs copied with perturbed vectors and "
        "fields, `bench/_data.py`) whose vectors are given, written with the product's own "
        f"functions into an empty folder and into a copy of the {held:,}-candidate bench set "
        f"(copied in {copy_s:.0f} s, not counted; removed at the end; {full.held:,} candidates "
        "by then, the service runs below having gone first). First `ranker ingest`'s "
        "`ingest_files` as it is, its encoding replaced by a lookup of the given vectors: the "
        "file check, the erasure screen, the store writes and its closing index rebuild over "
        "everything stored (IVF lists, trained then, past `RANKER_INDEX_IVF_MIN_CANDIDATES`; "
        "an exact index below). Then what `ranker serve` does at start for "
        "candidates its saved catalog lacks (the change feed's catch-up): prepare them, put "
        f"them in the catalog, add them to the folder's saved index ({layout}), save both. "
        "One pass each, in the bench "
        "process; FAISS with its default OpenMP threads. Size knobs: `BULK_NEW` and `HELD` "
        "in `bench/ingest.py`. Ratio = rate into the large folder ÷ rate into the empty one.",
        "",
        table(
            [
                "stage (product code)",
                "empty: s",
                "empty: cand/s",
                f"{full.held:,}: s",
                f"{full.held:,}: cand/s",
                "rate ratio",
            ],
            rows,
        ),
        "",
        f"{bound_text}. `prepare_candidate`'s time is the CV's term statistics "
        "(`candidate_text_terms`: redaction, tokenising, and a hash per term computed one by "
        "one in Python). The index rebuild and the saves read or write the whole folder, so "
        "their cost grows with what it holds; the other stages cost the same per candidate at "
        "any size.",
    ]


def _median(xs: Sequence[float]) -> float:
    return float(np.median(xs)) if len(xs) else float("nan")


def _encoded_report(
    runs: dict[bool, EncodedRun], held: int, n: int, batch: int, threads: int
) -> list[str]:
    fp32, int8 = runs[False], runs[True]
    k = len(fp32.service)

    def pair(label: str, a: float, b: float) -> list[str]:
        return [label, f"{a:.1f}", f"{b:.1f}", rate_ratio(b, a)]

    svc = (_median(fp32.service), _median(int8.service))
    alone = (_median(fp32.alone), _median(int8.alone))
    rows = [
        pair(f"service: `UpsertCandidates` into {held:,} (median of {k} batches)", *svc),
        pair("the encoder alone, the service's threads (`encode_documents`, median)", *alone),
        [
            "service ÷ encoder alone",
            rate_ratio(svc[0], alone[0]),
            rate_ratio(svc[1], alone[1]),
            "",
        ],
        pair(
            f"`ranker ingest`-style in process ({threads} threads): encode + store",
            fp32.ingest_rate("store"),
            int8.ingest_rate("store"),
        ),
        pair(
            "`ranker ingest`-style: whole (file check, encode + store, index)",
            fp32.ingest_rate(),
            int8.ingest_rate(),
        ),
    ]
    serving_threads = fp32.threads
    note = (
        ""
        if int8.quantized
        else " **This encoder export has no int8 model, so the int8 column ran fp32.**"
    )
    return [
        "### At scale: encoding included, fp32 and int8",
        "",
        f"The same {n} demo candidates (the texts above) sent as `UpsertCandidates` in batches of "
        f"{batch} to a `ranker serve` started on the copy of the {held:,}-candidate set, once "
        "with the fp32 encoder and once with `RANKER_ENCODER_QUANTIZED=true` (`model.int8.onnx`, "
        "which `ranker export-encoder` writes beside the fp32 model when its cosine to fp32 "
        "reaches 0.99; otherwise the setting falls back to fp32 with a warning). Same texts "
        "under new ids, so both servers insert as many new candidates; one untimed batch first. "
        f"The service's encoder runs {serving_threads} ONNX Runtime thread(s) (one fewer than "
        "the physical cores: the other serves rankings), and so does the encoder-alone row, "
        "fp32 and int8 in turn batch by batch. `ranker ingest`-style is `ingest_files` in "
        f"this process into an empty folder with its default {threads} threads. Ratio = int8 "
        f"rate ÷ fp32 rate.{note}",
        "",
        table(["path", "fp32 cand/s", "int8 cand/s", "int8 ÷ fp32"], rows),
    ]


def _first_load(full: BulkRun, runs: dict[bool, EncodedRun]) -> list[str]:
    million = 1_000_000
    stored = full.held + full.new
    # Per candidate as measured at this size; the rebuild and the saves scale with the store.
    per = sum(full.seconds[s] for s in ("check", "store", "prepare", "put", "add")) / full.new
    whole = (full.seconds["rebuild"] + full.seconds["save"]) / stored
    bulk_s = million * (per + whole)
    fp32, int8 = runs[False], runs[True]
    svc = (_median(fp32.service), _median(int8.service))
    alone1 = _median(fp32.alone)
    ingest = (fp32.ingest_rate("store"), int8.ingest_rate("store"))
    rate = million / bulk_s
    return [
        "### A first load of 1,000,000 candidates",
        "",
        f"Extrapolated from the {stored:,}-candidate folder (per-candidate stages as measured, "
        "the index rebuild and the saves linear in what the folder holds): with the vectors "
        f"already computed, `ranker ingest` and the start-up catch-up take about "
        f"{bulk_s / 60:.0f} minutes for 10^6 on this machine ({rate:,.0f} candidates/s), the IVF lists trained within `ranker ingest`'s index rebuild. "
        "With encoding, the encoder bounds everything: `ranker ingest` in this process "
        f"encodes and stores {ingest[0]:.1f} (fp32) or {ingest[1]:.1f} (int8) candidates/s, "
        f"{rate / ingest[0]:,.0f}× and {rate / ingest[1]:,.0f}× slower than without encoding, "
        f"so a million take about {million / ingest[0] / 3600:.0f} or "
        f"{million / ingest[1] / 3600:.0f} hours; through `UpsertCandidates` "
        f"({svc[0]:.1f} or {svc[1]:.1f} candidates/s, the service's encoder on "
        f"{fp32.threads} thread(s)) {million / svc[0] / 3600:.0f} or "
        f"{million / svc[1] / 3600:.0f} hours. What scales it out is the encoding alone: "
        "`ranker ingest --dask ADDR` (`ranker/dask_ingest.py`) sends batches of 256 to Dask "
        "workers (each loads the encoder once; two batches in flight per worker thread) and "
        "stores what comes back in file order, so the encoding grows with the workers while "
        "the store writes, the index and the catalog stay in one process. At the fp32 "
        f"encoder-alone rate on {fp32.threads} thread(s) ({alone1:.1f} candidates/s), about "
        f"{rate / alone1:,.0f} such workers would encode as fast as that one process stores and "
        "indexes; below that the workers are the bound. Not measured here: on 2 cores "
        "`--dask local:2` has no more cores than the in-process encoder's threads "
        "(`tests/ranker/test_dask_ingest.py` runs it on a real `LocalCluster`).",
    ]
