"""Bench data: a real encoded seed set, a trained model, and large candidate sets grown from them.

Encoding 100,000 CVs on two cores takes hours, so the large sets are *synthesised*: every
candidate is a real encoded demo candidate (long CV, real chunk vectors) copied under a new id
with Gaussian noise added to its vectors and its structured fields perturbed. The CV text and
therefore the lexical features stay realistic; the vector distribution stays that of real CVs.
Sets are written straight into a `SqliteStore` and a `FaissIndex` (bypassing the encoder) and are
cached under `<data_dir>/bench/`, so a second `make bench` reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ranker.atomic import write_text_atomic
from ranker.catalog import CandidateCatalog
from ranker.config import Settings
from ranker.domain import Candidate
from ranker.index import INDEX_FILE, IvfOptions, build_index
from ranker.prepared import (
    PreparedCandidate,
    candidate_text,
    candidate_text_terms,
    posting_text,
    prepare_candidate,
)
from ranker.registry import ModelRegistry
from ranker.rows import CandidateRow, PostingRow
from ranker.store import SqliteStore
from ranker.warmup import CATALOG_DIR

log = logging.getLogger(__name__)

BASE_CANDIDATES = 600
"""Real demo candidates encoded for the seed set when no embedded default exists in data/."""
BASE_POSTINGS = 40
SEED = 20240601
NOISE_COSINE = 0.92
"""Target cosine between a synthetic candidate's vectors and those of the real CV it copies."""
WRITE_BATCH = 2000
_READY = "bench-data.json"


def bench_root(settings: Settings | None = None) -> Path:
    """`<data_dir>/bench`: every artefact of the benchmarks lives below it."""
    s = settings if settings is not None else Settings()
    return s.data_dir / "bench"


@dataclass(frozen=True)
class BaseSet:
    """Real encoded candidates and postings, and a registry whose promoted model ranks them."""

    candidates: list[CandidateRow]
    postings: list[PostingRow]
    registry_dir: Path
    """A private copy of the model registry, safe for bench servers to read."""
    encoder_dir: Path
    source: str
    """Where the seed set came from, in words, for the report."""

    @property
    def fingerprint(self) -> str:
        """Changes when the seed set or the model changes, so cached sets are rebuilt."""
        h = hashlib.sha256(self.source.encode())
        h.update(str(ModelRegistry(self.registry_dir).current_version()).encode())
        for r in self.candidates[:50]:
            h.update(r.candidate.id.encode())
            h.update(np.asarray(r.doc_vector, dtype=np.float32).tobytes())
        h.update(str(len(self.candidates)).encode())
        return h.hexdigest()[:16]


def _read_store(path: Path) -> tuple[list[CandidateRow], list[PostingRow], int]:
    store = SqliteStore(path)
    try:
        return list(store.iter_candidates()), store.list_postings(), store.count_outcomes()
    finally:
        store.close()


def _copy_registry(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock", ".v*"))


def _usable(db: Path, registry: Path) -> bool:
    if not db.is_file() or ModelRegistry(registry).current_version() is None:
        return False
    store = SqliteStore(db)
    try:
        return store.count_candidates() >= 50 and store.count_postings() >= 5
    finally:
        store.close()


def _default_complete(settings: Settings) -> bool:
    """Whether `ranker ingest` finished filling the embedded default (not stopped halfway)."""
    from ranker.ingest import ingest_state_path

    try:
        return json.loads(ingest_state_path(settings).read_text()).get("state") == "complete"
    except (OSError, ValueError, AttributeError):
        return False


def _generate_base(settings: Settings, folder: Path, n_candidates: int, n_postings: int) -> None:
    """Generate, encode and store demo data, and train and promote a model on it."""
    # Imported here: only a fresh clone without the embedded default pays for training imports.
    from embeddings import load_encoder
    from training.demo import DemoConfig, generate
    from training.train import TrainConfig, train_and_register

    started = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    demo = generate(DemoConfig(candidates=n_candidates, postings=n_postings, seed=SEED))
    encoder = load_encoder(settings=settings)
    rows: list[CandidateRow] = []
    for start in range(0, len(demo.candidates), 64):
        part = demo.candidates[start : start + 64]
        docs = encoder.encode_documents([candidate_text(c) for c in part])
        rows += [CandidateRow(c, d.vector, d.chunks) for c, d in zip(part, docs, strict=True)]
    vectors = encoder.encode([posting_text(p) for p in demo.postings])
    posts = [PostingRow(p, v) for p, v in zip(demo.postings, vectors, strict=True)]
    store = SqliteStore(folder / "ranker.db", dim=encoder.dim)
    try:
        store.upsert_candidates(rows)
        store.upsert_postings(posts)
        store.record_outcomes(demo.outcomes)
    finally:
        store.close()
    train_and_register(
        rows,
        posts,
        demo.outcomes,
        ModelRegistry(folder / "registry", settings.ort_session),
        config=TrainConfig(seed=7),
        promote=True,
        settings=settings,
        # The bench measures speed, not ranking quality: its small seed set cannot pass the
        # promotion gates, so it overrides them (recorded in the registry history).
        force_reason="bench seed set: measures speed, not ranking quality",
        actor="bench",
    )
    log.info("bench seed set built in %.0fs", time.perf_counter() - started)


@cache
def base_set(
    data_dir: Path | None = None,
    n_candidates: int = BASE_CANDIDATES,
    n_postings: int = BASE_POSTINGS,
) -> BaseSet:
    """The seed set: the embedded default in data/ when it is there, else generated once here."""
    settings = Settings() if data_dir is None else Settings(data_dir=data_dir)
    root = bench_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    # Exports the encoder into the embedded default's folder when missing (what `make run` does).
    from embeddings import load_encoder

    load_encoder(settings=settings)
    if _default_complete(settings) and _usable(
        settings.resolved_db_path, settings.resolved_registry_dir
    ):
        db, registry = settings.resolved_db_path, settings.resolved_registry_dir
        where = f"the embedded default ({settings.resolved_db_path})"
    else:
        folder = root / f"seed-{n_candidates}x{n_postings}"
        db, registry = folder / "ranker.db", folder / "registry"
        if not _usable(db, registry):
            _generate_base(settings, folder, n_candidates, n_postings)
        where = f"demo candidates generated and encoded for the bench ({folder})"
    candidates, postings, _ = _read_store(db)
    private = root / "registry"
    _copy_registry(registry, private)
    words = np.median([len(r.candidate.cv_text.split()) for r in candidates])
    chunks = np.mean([len(r.chunk_vectors) for r in candidates])
    source = (
        f"{len(candidates)} real candidates from {where}: CVs of {words:.0f} words median, "
        f"{chunks:.1f} encoder windows each on average"
    )
    return BaseSet(candidates, postings, private, settings.resolved_encoder_dir, source)


# ---------------------------------------------------------------------------------------------
# Synthetic candidate sets


def _unit_rows(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def synthesize(
    base: Sequence[CandidateRow], n: int, seed: int = SEED, batch: int = WRITE_BATCH
) -> Iterator[list[CandidateRow]]:
    """`n` candidates copied from `base` with noisy vectors and perturbed fields, in batches.

    The same noise vector is added to a candidate's document vector and to each of its chunk
    vectors, so the document stays the combination of its chunks.
    """
    rng = np.random.default_rng(seed)
    dim = len(base[0].doc_vector)
    # |noise| = sigma * sqrt(dim) against a unit vector gives cos = 1 / sqrt(1 + |noise|^2).
    sigma = float(np.sqrt(1 / NOISE_COSINE**2 - 1) / np.sqrt(dim))
    locations = sorted({r.candidate.location for r in base if r.candidate.location})
    width = len(str(n))
    made = 0
    while made < n:
        m = min(batch, n - made)
        src = rng.integers(0, len(base), size=m)
        noise = rng.normal(0.0, sigma, size=(m, dim)).astype(np.float32)
        years = rng.normal(0.0, 1.0, size=m)
        moves = rng.random(size=(m, 4))
        out: list[CandidateRow] = []
        for j in range(m):
            row = base[int(src[j])]
            c = row.candidate
            skills = tuple(s for s in c.skills if rng.random() > 0.1) or c.skills[:1]
            cand = replace(
                c,
                id=f"S{made + j + 1:0{width}d}",
                skills=skills,
                years_experience=float(np.clip(round(c.years_experience + years[j], 1), 0, 40)),
                location=locations[int(rng.integers(len(locations)))]
                if locations and moves[j, 0] < 0.25
                else c.location,
                remote_ok=c.remote_ok ^ bool(moves[j, 1] < 0.1),
                willing_to_relocate=c.willing_to_relocate ^ bool(moves[j, 2] < 0.1),
            )
            out.append(
                CandidateRow(
                    cand,
                    _unit_rows(row.doc_vector + noise[j]),
                    _unit_rows(np.atleast_2d(row.chunk_vectors) + noise[j]),
                )
            )
        made += m
        yield out


@dataclass(frozen=True)
class BenchData:
    """One synthetic candidate set on disk: a data folder a server can be started on."""

    n: int
    data_dir: Path
    build_seconds: float
    """Seconds it took to build (0 when reused from an earlier run)."""

    @property
    def db_path(self) -> Path:
        return self.data_dir / "ranker.db"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    def saved_catalog(self) -> CandidateCatalog:
        """The set's saved catalog, current with its store (the set is rebuilt when not)."""
        store = SqliteStore(self.db_path)
        try:
            generation = store.generation()
        finally:
            store.close()
        catalog = CandidateCatalog.load(self.index_dir / CATALOG_DIR, generation)
        if catalog is None:
            raise RuntimeError(
                f"no current catalog in {self.index_dir}; delete the set to rebuild it"
            )
        return catalog

    def settings(self, base: BaseSet, **overrides: Any) -> Settings:
        """Settings of a service on this set (host/port left to the caller)."""
        return Settings(
            data_dir=self.data_dir,
            registry_dir=base.registry_dir,
            encoder_dir=base.encoder_dir,
            **overrides,
        )


def build_candidate_set(base: BaseSet, n: int, root: Path | None = None) -> BenchData:
    """A data folder holding `n` synthetic candidates, the seed postings and a saved index."""
    folder = (root if root is not None else bench_root()) / f"c{n}"
    marker = folder / _READY
    # The index is saved in the layout the service is configured for, so it loads it as is.
    settings = Settings()
    storage = settings.index_storage
    ivf = IvfOptions.from_settings(settings)
    want = {
        "n": n,
        "seed": SEED,
        "base": base.fingerprint,
        "noise_cosine": NOISE_COSINE,
        "storage": storage,
        "ivf_min": ivf.min_candidates,
        "catalog": 2,
    }
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == want:
                return BenchData(n, folder, 0.0)
        except ValueError:
            pass
    started = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    store = SqliteStore(folder / "ranker.db")
    # The catalog the server would derive from the store, written here as the index is: a copy
    # shares its source's CV and title, so their tokens are counted once per source.
    catalog = CandidateCatalog(directory=folder / "index" / CATALOG_DIR)
    texts = {
        (r.candidate.cv_text, r.candidate.title): candidate_text_terms(r.candidate)
        for r in base.candidates
    }
    try:
        fids = np.zeros(n, dtype=np.int64)
        vectors = np.zeros((n, store.dim), dtype=np.float32)
        made = 0
        for rows in synthesize(base.candidates, n):
            got = store.upsert_candidates(rows)
            fids[made : made + len(rows)] = got
            vectors[made : made + len(rows)] = [r.doc_vector for r in rows]
            made += len(rows)
            catalog.put_many(
                [
                    (
                        fid,
                        prepare_candidate(
                            r.candidate,
                            r.doc_vector,
                            r.chunk_vectors,
                            text=texts[(r.candidate.cv_text, r.candidate.title)],
                        ),
                    )
                    for fid, r in zip(got, rows, strict=True)
                ]
            )
            if made % 100_000 == 0:
                log.info("synthetic set: %d of %d candidates stored", made, n)
        store.upsert_postings(base.postings)
        generation = store.generation()
        catalog.save(generation, store.last_change_seq())
        build_index(fids, vectors, generation, store.dim, storage=storage, ivf=ivf).save(
            folder / "index"
        )
    finally:
        catalog.close()
        store.close()
    write_text_atomic(marker, json.dumps(want))
    seconds = time.perf_counter() - started
    log.info("built %d synthetic candidates in %s in %.0fs", n, folder, seconds)
    return BenchData(n, folder, seconds)


def load_prepared(data: BenchData) -> tuple[np.ndarray, list[PreparedCandidate]]:
    """FAISS ids and prepared candidates of a set, in id order (what the baseline keeps in memory)."""
    store = SqliteStore(data.db_path)
    try:
        fids: list[int] = []
        prepared: list[PreparedCandidate] = []
        for fid, row in store.iter_candidates_with_ids(batch=5000):
            fids.append(fid)
            prepared.append(prepare_candidate(row.candidate, row.doc_vector, row.chunk_vectors))
    finally:
        store.close()
    return np.asarray(fids, dtype=np.int64), prepared


def file_bytes(*paths: Path) -> int:
    """Total size of the files that exist among `paths` (e.g. a SQLite file and its WAL)."""
    return sum(p.stat().st_size for p in paths if p.is_file())


def fresh_candidates(n: int, seed: int = SEED + 1) -> list[Candidate]:
    """`n` demo candidates with realistic (300-800 word) CVs, never seen by the seed set."""
    from training.demo import DemoConfig, generate

    # At least 50: with only a handful of candidates a posting can draw no applicant, which the
    # demo generator's outcome simulation does not handle.
    demo = generate(DemoConfig(candidates=max(n, 50), postings=6, applicants=(5, 10), seed=seed))
    # New ids so they never collide with the seed set's if both land in one store.
    return [replace(c, id=f"I{c.id}") for c in demo.candidates[:n]]


def index_file(data: BenchData) -> Path:
    """The saved FAISS index of a set."""
    return data.index_dir / INDEX_FILE
