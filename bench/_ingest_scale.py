"""Ingestion at scale: the bulk path with vectors given, stage by stage, into an empty folder and
into a copy of a large set; and candidates/s with the fp32 and the int8 encoder."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bench._data import SEED, BaseSet, BenchData, synthesize
from bench._server import ServerProcess
from embeddings import load_encoder
from embeddings.runtime import intra_op_threads
from ranker.catalog import CandidateCatalog
from ranker.config import Settings
from ranker.datafiles import write_jsonl
from ranker.domain import Candidate, Posting, to_plain
from ranker.encoding import TextEncoder
from ranker.errors import InvalidInput
from ranker.follower import BATCH as CATCH_UP_BATCH
from ranker.index import FaissIndex, IvfOptions, load_index_if_current
from ranker.ingest import Batch, BatchEncoder, ingest_files
from ranker.prepared import candidate_text, prepare_candidate
from ranker.rows import CandidateRow, PostingRow
from ranker.store_api import open_store
from ranker.transport.convert import candidate_to_pb
from ranker.v1 import ranker_pb2 as pb
from ranker.warmup import CATALOG_DIR

FOLDER = "ingest-scale"
"""Below the bench root: the copies and fresh folders this section writes, removed at its end."""
_INGEST_STAGES = {
    "checking files": "check",
    "encoding candidates": "store",
    "building the index": "rebuild",
}
"""`ingest_files`' stages (its `on_stage` names) under the names the report uses."""


class Precomputed(BatchEncoder):
    """`ingest_files` with the encoding replaced by a lookup of vectors computed beforehand:
    the rest of `ranker ingest` (file checks, erasure screen, store writes, index) as it is."""

    def __init__(self, rows: Sequence[CandidateRow]) -> None:
        self._rows = {r.candidate.id: r for r in rows}
        self._dim = len(rows[0].doc_vector)

    @property
    def dim(self) -> int:
        return self._dim

    def candidates(
        self, batches: Iterable[Batch]
    ) -> Iterator[tuple[Batch, list[CandidateRow | InvalidInput]]]:
        for batch in batches:
            yield batch, [self._rows[c.id] for c in batch.candidates]

    def postings(self, postings: Sequence[Posting]) -> list[PostingRow | InvalidInput]:
        raise NotImplementedError("the bulk bench ingests candidates only")


class StageClock:
    """Seconds per stage from `ingest_files`' `on_stage` calls; call with None at the end."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stage: str | None = None
        self._at = time.perf_counter()

    def __call__(self, stage: str | None) -> None:
        now = time.perf_counter()
        if self._stage is not None:
            name = _INGEST_STAGES.get(self._stage, self._stage)
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self._at
        self._stage, self._at = stage, now


def _ingest(
    settings: Settings, encoder: TextEncoder | BatchEncoder, candidates: Sequence[Candidate]
) -> dict[str, float]:
    """`ingest_files` on a data file of `candidates` written into the data folder; seconds
    per stage (the file is removed after)."""
    data_file = settings.data_dir / "candidates.jsonl"
    write_jsonl(data_file, [to_plain(c) for c in candidates])
    clock = StageClock()
    ingest_files(settings, encoder, candidates=data_file, on_stage=clock)
    clock(None)
    data_file.unlink()
    return clock.seconds


def new_rows(base: BaseSet, n: int, prefix: str = "B") -> list[CandidateRow]:
    """`n` synthetic candidates (real CVs, perturbed vectors) under ids no bench set uses."""
    rows = [r for part in synthesize(base.candidates, n, seed=SEED + 7) for r in part]
    return [replace(r, candidate=replace(r.candidate, id=prefix + r.candidate.id)) for r in rows]


@dataclass
class BulkRun:
    """The bulk path into one folder: seconds per stage for `new` candidates."""

    held: int
    """Candidates the folder held before."""
    new: int
    ivf: bool
    """Whether the folder's index was an inverted file (the service's layout from 50,000)."""
    seconds: dict[str, float] = field(default_factory=dict)

    def rate(self, *stages: str) -> float:
        """Candidates/s through these stages together (nan when one was not run)."""
        if any(s not in self.seconds for s in stages):
            return float("nan")
        total = sum(self.seconds[s] for s in stages)
        return self.new / total if total > 0 else float("nan")


def bulk_into(folder: Path, base: BaseSet, rows: Sequence[CandidateRow]) -> BulkRun:
    """Vectors given: `ranker ingest`'s `ingest_files` (checks, store writes, its index
    rebuild), then what `ranker serve` does at start for candidates its saved catalog lacks
    (`prepare_candidate`, `CandidateCatalog.put_many`, `FaissIndex.add`, 1,000 at a time as
    the change feed's catch-up applies them) and the save of both."""
    folder.mkdir(parents=True, exist_ok=True)
    s = Settings(data_dir=folder, registry_dir=base.registry_dir, encoder_dir=base.encoder_dir)
    ivf = IvfOptions.from_settings(s)
    dim = len(rows[0].doc_vector)
    store = open_store(s, dim=dim)
    try:
        generation, held = store.generation(), store.count_candidates()
    finally:
        store.close()
    # The folder's saved catalog and index as a start-up loads them, before the ingest.
    catalog_dir = s.resolved_index_dir / CATALOG_DIR
    catalog = CandidateCatalog.load(catalog_dir, generation) if held else None
    index = load_index_if_current(s.resolved_index_dir, generation, s.index_storage, ivf)
    if held and (catalog is None or index is None):
        raise RuntimeError(f"{folder} has no current catalog and index; delete it to rebuild")
    catalog = catalog if catalog is not None else CandidateCatalog(directory=catalog_dir)
    index = index if index is not None else FaissIndex(dim, generation, s.index_storage, ivf)
    run = BulkRun(held=held, new=len(rows), ivf=index.is_ivf)
    try:
        run.seconds.update(_ingest(s, Precomputed(rows), [r.candidate for r in rows]))
        store = open_store(s, dim=dim)
        try:
            by_id = store.faiss_ids([r.candidate.id for r in rows])
            generation, seq = store.generation(), store.last_change_seq()
        finally:
            store.close()
        fids = np.asarray([by_id[r.candidate.id] for r in rows], dtype=np.int64)
        t0 = time.perf_counter()
        prepared = [prepare_candidate(r.candidate, r.doc_vector, r.chunk_vectors) for r in rows]
        run.seconds["prepare"] = time.perf_counter() - t0
        put = add = 0.0
        for a in range(0, len(rows), CATCH_UP_BATCH):
            part = prepared[a : a + CATCH_UP_BATCH]
            t0 = time.perf_counter()
            catalog.put_many(list(zip(fids[a : a + len(part)].tolist(), part, strict=True)))
            t1 = time.perf_counter()
            index.add(fids[a : a + len(part)], np.stack([pc.doc_vector for pc in part]))
            t2 = time.perf_counter()
            put, add = put + t1 - t0, add + t2 - t1
        run.seconds["put"], run.seconds["add"] = put, add
        t0 = time.perf_counter()
        catalog.save(generation, seq)
        index.generation = generation
        index.save(s.resolved_index_dir)
        run.seconds["save"] = time.perf_counter() - t0
    finally:
        catalog.close()
    return run


def copy_set(data: BenchData, root: Path) -> tuple[Path, float]:
    """A private copy of a bench set's folder (the original stays as other sections use it),
    and the seconds the copy took."""
    target = root / FOLDER / data.data_dir.name
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # cp rather than shutil.copytree: --reflink shares the blocks where the file system can.
    subprocess.run(["cp", "-r", "--reflink=auto", str(data.data_dir), str(target)], check=True)
    return target, time.perf_counter() - started


@dataclass
class EncodedRun:
    """Candidates/s with one encoder: through the service, alone, and `ranker ingest`-style."""

    quantized: bool
    """Whether the int8 model really ran (False also when the export has none)."""
    service: list[float] = field(default_factory=list)
    """Candidates/s of each timed `UpsertCandidates` batch."""
    alone: list[float] = field(default_factory=list)
    """Candidates/s of each batch of `encode_documents` alone, with the service's threads."""
    ingest: dict[str, float] = field(default_factory=dict)
    """`ingest_files` with this encoder into an empty folder: seconds per stage."""
    n: int = 0
    """Candidates encoded in each of these paths."""
    threads: int = 1
    """ONNX Runtime threads of the service's encoder and of the encoder-alone row."""

    def ingest_rate(self, *stages: str) -> float:
        """Candidates/s of `ingest_files` through these stages (all of them when none given)."""
        return self.n / sum(self.ingest[s] for s in stages or tuple(self.ingest))


def through_service(
    folder: Path,
    base: BaseSet,
    candidates: Sequence[Candidate],
    batch: int,
    quantized: bool,
    log_path: Path,
) -> list[float]:
    """Candidates/s of each `UpsertCandidates` batch to a `ranker serve` on `folder`."""
    settings = Settings(
        data_dir=folder,
        registry_dir=base.registry_dir,
        encoder_dir=base.encoder_dir,
        max_batch_items=max(batch, 1),
        encoder_quantized=quantized,
    )
    rates: list[float] = []
    with ServerProcess(settings, log_path) as server:
        stub = server.stub()
        # One untimed call so the first timed batch does not pay for ONNX Runtime's warm-up.
        warm = [candidate_to_pb(replace(c, id="W" + c.id)) for c in candidates[: min(4, batch)]]
        stub.UpsertCandidates(pb.UpsertCandidatesRequest(candidates=warm), timeout=300)
        for a in range(0, len(candidates), batch):
            part = [candidate_to_pb(c) for c in candidates[a : a + batch]]
            t0 = time.perf_counter()
            r = stub.UpsertCandidates(pb.UpsertCandidatesRequest(candidates=part), timeout=600)
            rates.append(len(part) / (time.perf_counter() - t0))
            if r.stored != len(part):
                raise RuntimeError(f"the service stored {r.stored} of {len(part)}; see {log_path}")
    return rates


def encoders_alone(
    base: BaseSet, texts: Sequence[str], batch: int
) -> tuple[dict[bool, list[float]], dict[bool, bool], int]:
    """`encode_documents` alone with the fp32 and the int8 model, batch by batch in turn, with
    the threads the service gives its encoder: (candidates/s per batch, whether int8 really
    ran, threads), each keyed by the quantized setting."""
    serving = Settings(encoder_dir=base.encoder_dir).serving_encoder
    encoders = {
        q: load_encoder(base.encoder_dir, serving.model_copy(update={"encoder_quantized": q}))
        for q in (False, True)
    }
    rates: dict[bool, list[float]] = {False: [], True: []}
    for encoder in encoders.values():
        encoder.encode_documents(list(texts[:4]))
    for k, a in enumerate(range(0, len(texts), batch)):
        part = list(texts[a : a + batch])
        # Alternating which goes first, so neither always follows the other's cache state.
        for q in (False, True) if k % 2 == 0 else (True, False):
            t0 = time.perf_counter()
            encoders[q].encode_documents(part)
            rates[q].append(len(part) / (time.perf_counter() - t0))
    real = {q: e.quantized for q, e in encoders.items()}
    return rates, real, intra_op_threads(serving.ort_session)


def ingest_style(
    folder: Path, base: BaseSet, candidates: Sequence[Candidate], quantized: bool
) -> dict[str, float]:
    """`ranker ingest` in this process (its encoder, its threads) into a fresh folder: seconds
    per stage of `ingest_files`."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    settings = Settings(data_dir=folder, encoder_dir=base.encoder_dir, encoder_quantized=quantized)
    encoder = load_encoder(base.encoder_dir, settings)
    encoder.encode_documents([candidate_text(c) for c in candidates[:4]])
    seconds = _ingest(settings, encoder, candidates)
    shutil.rmtree(folder)
    return seconds


def ingest_threads(base: BaseSet) -> int:
    """ONNX Runtime threads of `ranker ingest`'s encoder (the default settings')."""
    return intra_op_threads(Settings(encoder_dir=base.encoder_dir).ort_session)


def encoded_runs(
    folder: Path, base: BaseSet, candidates: Sequence[Candidate], batch: int, root: Path
) -> dict[bool, EncodedRun]:
    """The same candidates through the service on `folder` and `ranker ingest`-style, with the
    fp32 and the int8 encoder, and the two encoders alone; keyed by the quantized setting."""
    texts = [candidate_text(c) for c in candidates]
    alone, real, threads = encoders_alone(base, texts, batch)
    runs = {
        q: EncodedRun(real[q], alone=alone[q], n=len(candidates), threads=threads)
        for q in (False, True)
    }
    for q, prefix in ((False, "F"), (True, "Q")):
        # Same texts under new ids, so each server inserts as many new candidates.
        mine = [replace(c, id=prefix + c.id) for c in candidates]
        log_path = root / "logs" / f"ingest-{'int8' if q else 'fp32'}.log"
        runs[q].service = through_service(folder, base, mine, batch, q, log_path)
        runs[q].ingest = ingest_style(root / FOLDER / "ingest-style", base, mine, q)
    return runs
