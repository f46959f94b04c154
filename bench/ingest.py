"""Ingestion: candidates per second through `UpsertCandidates`, beside sentence-transformers."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench._baseline import sentence_transformer, st_encode
from bench._data import BaseSet, base_set, bench_root, fresh_candidates
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


def run(n: int = 96, batch: int = 32, base: BaseSet | None = None, root: Path | None = None) -> str:
    """Upsert `n` fresh realistic candidates through gRPC; encode the same texts the plain way."""
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
    ]
    return "\n".join(lines) + "\n"
