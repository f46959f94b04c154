"""The columnar catalog: the same features as the prepared objects, erasure, save, rebuild."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from ranker.api import RankFilters
from ranker.catalog import CandidateCatalog
from ranker.config import Settings
from ranker.domain import Candidate, Posting
from ranker.features import FeatureBuilder
from ranker.lexicon import LiveLexicon
from ranker.prepared import PreparedCandidate, prepare_candidate, prepare_posting
from ranker.rows import CandidateRow
from ranker.store import SqliteStore
from ranker.warmup import CATALOG_DIR, catalog_from_store
from tests.fixtures.pagecache import evict
from tests.fixtures.server import serving_settings

DIM = 16
WORDS = "python sql nurse care icu spark kafka retail banking audit cloud team lead data".split()
CITIES = ("Berlin", "Zürich", "Lisbon", "")
SKILLS = ("Python", "SQL", "Machine Learning", "ICU", "Kafka")


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    v = rng.normal(size=(*shape, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _candidate(rng: np.random.Generator, cid: str) -> Candidate:
    return Candidate(
        id=cid,
        cv_text=" ".join(rng.choice(WORDS, size=int(rng.integers(5, 40)))),
        skills=tuple(rng.choice(SKILLS, size=int(rng.integers(0, 4)), replace=False)),
        years_experience=float(rng.integers(0, 15)) + 0.3,
        location=str(rng.choice(CITIES)),
        remote_ok=bool(rng.random() < 0.3),
        willing_to_relocate=bool(rng.random() < 0.3),
        title=str(rng.choice(["Senior Data Engineer", "Nurse", "junior analyst", ""])),
    )


def _row(rng: np.random.Generator, cid: str) -> CandidateRow:
    return CandidateRow(_candidate(rng, cid), _unit(rng), _unit(rng, int(rng.integers(1, 5))))


def _prepared(row: CandidateRow) -> PreparedCandidate:
    return prepare_candidate(row.candidate, row.doc_vector, row.chunk_vectors)


def _filled(
    rng: np.random.Generator, directory: Path | None, mapped: bool = False
) -> tuple[CandidateCatalog, dict]:
    """A catalog through adds, erasures (slots reused) and replacements; {fid: prepared}."""
    catalog = CandidateCatalog(
        capacity=4, directory=directory, map_up_to=sys.maxsize if mapped else 0
    )
    held: dict[int, PreparedCandidate] = {}
    fid_of: dict[str, int] = {}
    next_fid = 10

    def put(cid: str) -> None:
        nonlocal next_fid
        pc = _prepared(_row(rng, cid))
        fid = next_fid
        next_fid += 1
        held.pop(fid_of.get(cid, -1), None)
        catalog.put_many([(fid, pc)])
        held[fid] = pc
        fid_of[cid] = fid

    for i in range(80):
        put(f"c{i}")
    gone = [f"c{i}" for i in range(0, 80, 4)]
    for fid in catalog.remove_many(gone):
        assert fid is not None
        held.pop(fid)
    for cid in gone:
        del fid_of[cid]
    for i in range(60, 100):  # replaces c61.. in place, adds the rest into freed slots
        put(f"c{i}")
    return catalog, held


def _assert_packed_equal(a: object, b: object) -> None:
    for name in ("vectors", "term_hashes", "term_counts", "tags", "scalars"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.ids == b.ids  # type: ignore[attr-defined]


@pytest.mark.parametrize("mapped", [False, True], ids=["pread", "mmap"])
def test_features_from_the_columns_equal_those_from_prepared_objects(mapped: bool) -> None:
    rng = np.random.default_rng(1)
    catalog, held = _filled(rng, None, mapped)
    catalog.lookup(np.array(sorted(held)[:5]))  # mapped now: later writes must still be seen
    for i in range(100, 110):
        pc = _prepared(_row(rng, f"c{i}"))
        catalog.put_many([(1000 + i, pc)])
        held[1000 + i] = pc
    fids = np.array(sorted(held), dtype=np.int64)
    rng.shuffle(fids)
    asked = np.concatenate([fids[:50], [99_999, 3]])  # two ids the catalog never held
    found, keep = catalog.lookup(asked)
    assert keep.tolist() == [True] * 50 + [False, False]
    objects = [held[int(f)] for f in fids[:50]]
    posting = prepare_posting(
        Posting(
            id="p1",
            title="Senior Data Engineer",
            description="python sql kafka cloud data team in Berlin",
            required_skills=("Python", "SQL"),
            nice_skills=("Kafka",),
            location="Berlin",
            min_years=3,
        ),
        _unit(rng),
    )
    lexicon = LiveLexicon()
    lexicon.add(list(held.values()))
    builder = FeatureBuilder(lexicon)
    x_cols = builder.build(posting, found, lexicon=lexicon)
    x_objs = builder.build(posting, objects, lexicon=lexicon)
    np.testing.assert_array_equal(x_cols, x_objs)
    # A row made an object again is the prepared candidate that went in.
    for i in (0, 17, 49):
        back, orig = found[i], objects[i]
        assert back.candidate == orig.candidate
        for name in ("vectors", "term_hashes", "tags", "numbers"):
            np.testing.assert_array_equal(getattr(back, name), getattr(orig, name))
    got = catalog.get(objects[3].id)
    assert got is not None and got.candidate == objects[3].candidate
    # The document vectors alone (what an index rebuild reads), an unknown fid skipped.
    some = np.concatenate([fids[:7], [99_999]])
    vec_fids, vectors = catalog.doc_vectors(some)
    assert vec_fids.tolist() == fids[:7].tolist()
    for f, v in zip(vec_fids.tolist(), vectors, strict=True):
        np.testing.assert_array_equal(v, held[f].doc_vector)
    # The live lexicon followed every add, replacement and erasure.
    assert catalog.lexicon.counts()[0].size == len(lexicon)
    assert (catalog.lexicon.n_docs, catalog.lexicon.avgdl) == (lexicon.n_docs, lexicon.avgdl)
    for h in lexicon.counts()[0].tolist():
        assert catalog.lexicon.df_of_hash(h) == lexicon.df_of_hash(h)


def test_erasure_removes_the_candidate_from_every_column_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    catalog = CandidateCatalog(directory=tmp_path)
    secret = Candidate(id="secret-id", cv_text="zebraquokka worked in audit", location="Lisbon")
    rows = [_row(rng, f"c{i}") for i in range(5)]
    rows.append(CandidateRow(secret, _unit(rng), _unit(rng, 2)))
    catalog.put_many([(i + 1, _prepared(r)) for i, r in enumerate(rows)])
    catalog.save("g1")
    vec = rows[-1].doc_vector.tobytes()
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"zebraquokka" in blobs and vec in blobs
    assert catalog.remove_many(["secret-id"]) == [6]
    catalog.save("g2")
    for p in tmp_path.iterdir():
        data = p.read_bytes()
        assert b"zebraquokka" not in data and vec not in data, p.name
        assert b"s\0\0\0e\0\0\0c\0\0\0r\0\0\0e\0\0\0t" not in data, p.name  # the id, as numpy UCS4
    assert "secret-id" not in catalog and catalog.get("secret-id") is None
    assert catalog.lookup(np.array([6]))[1].tolist() == [False]
    assert (
        catalog.allowed(RankFilters(locations=("Lisbon",))).tolist()
        == [  # type: ignore[union-attr]
            i + 1 for i, r in enumerate(rows[:-1]) if r.candidate.location == "Lisbon"
        ]
    )
    catalog.close()


def test_a_saved_catalog_loads_as_it_was_and_only_for_its_generation(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    catalog, held = _filled(rng, tmp_path)
    catalog.save("gen-7")
    assert CandidateCatalog.load(tmp_path, "gen-8") is None
    back = CandidateCatalog.load(tmp_path, "gen-7")
    assert back is not None and len(back) == len(catalog) == len(held)
    assert (back.distinct_skills, back.distinct_locations) == (
        catalog.distinct_skills,
        catalog.distinct_locations,
    )
    for _ in range(50):
        f = RankFilters(
            locations=tuple(rng.choice(CITIES[:3], size=int(rng.integers(0, 3)), replace=False)),
            include_remote=bool(rng.random() < 0.5),
            min_years=float(rng.integers(0, 10)) if rng.random() < 0.5 else None,
            must_have_skills=tuple(rng.choice(SKILLS, size=int(rng.integers(0, 2)), replace=False)),
        )
        a, b = catalog.allowed(f), back.allowed(f)
        assert (a is None and b is None) or sorted(a.tolist()) == sorted(b.tolist())  # type: ignore[union-attr]
    fids = np.array(sorted(held), dtype=np.int64)
    _assert_packed_equal(catalog.lookup(fids)[0].packed, back.lookup(fids)[0].packed)
    assert back.lexicon.counts()[0].tolist() == catalog.lexicon.counts()[0].tolist()
    # The loaded catalog keeps working: a write after the load lands in the same files.
    extra = _prepared(_row(rng, "late"))
    back.put_many([(5000, extra)])
    back.remove_many([next(iter(held.values())).id])
    assert back.get("late") is not None and back.get("late").candidate == extra.candidate  # type: ignore[union-attr]
    catalog.close()
    back.close()


def test_restart_loads_the_saved_catalog_or_rebuilds_it_from_the_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    settings = serving_settings(tmp_path / "data", tmp_path / "registry")
    store = SqliteStore(settings.resolved_db_path, dim=DIM)
    try:
        store.upsert_candidates([_row(rng, f"c{i}") for i in range(30)])
        first, rebuilt = catalog_from_store(store, settings)
        assert rebuilt and len(first) == 30
        first.close()
        again, rebuilt = catalog_from_store(store, settings)
        assert not rebuilt and len(again) == 30  # loaded: the store did not change
        again.close()
        store.upsert_candidates([_row(rng, "c30")])
        store.delete_candidates(["c0"], actor="test")
        fresh, rebuilt = catalog_from_store(store, settings)
        assert rebuilt and len(fresh) == 30 and "c30" in fresh and "c0" not in fresh
        stored = {r.candidate.id: r for r in store.iter_candidates()}
        for cid in ("c5", "c30"):
            got = fresh.get(cid)
            assert got is not None and got.candidate == stored[cid].candidate
            np.testing.assert_array_equal(got.doc_vector, stored[cid].doc_vector)
        fresh.close()
        assert (settings.resolved_index_dir / CATALOG_DIR).is_dir()
    finally:
        store.close()


def test_append_file_reads_back_ranges_and_zeroes_them(tmp_path: Path) -> None:
    from ranker.columns import AppendFile, range_index

    f = AppendFile(tmp_path / "c.bin")
    parts = [bytes([n % 256]) * n for n in (3, 2000, 1)]
    assert [f.append(p) for p in parts] == [0, 3, 2003] and len(f) == 2004
    assert f.read(2003, 1) + f.read(0, 3) == parts[2] + parts[0]
    f.zero(0, 3)
    assert f.read(0, 4) == bytes(3) + bytes([2000 % 256])
    f.flush()
    f.close()
    again = AppendFile(tmp_path / "c.bin", length=2004)
    assert again.read(3, 2000) == parts[1] and len(again) == 2004
    again.close()
    with pytest.raises(ValueError, match="rebuilt from the store"):
        AppendFile(tmp_path / "c.bin", length=5000)
    assert range_index(np.array([5, 0]), np.array([2, 3])).tolist() == [5, 6, 0, 1, 2]


@pytest.mark.parametrize("mapped", [False, True], ids=["pread", "mmap"])
def test_block_file_reads_runs_split_in_two_and_sees_later_writes(
    tmp_path: Path, mapped: bool
) -> None:
    from ranker.columns import BlockFile

    f = BlockFile(tmp_path / "b.bin", block=4, map_up_to=sys.maxsize if mapped else 0)
    assert f.append(bytes(range(12))) == 0  # blocks 0..2
    head, tail = f.take(np.array([0, 1]), np.array([1, 1]), np.array([2, 0]))
    assert head.tobytes() == bytes(range(4)) + bytes(range(4, 8))
    assert tail.tobytes() == bytes(range(4, 12))
    f.append(b"\xff" * 8)  # blocks 3..4, written after the file was first read
    f.zero(4, 4)
    head, tail = f.take(np.array([1, 3]), np.array([1, 0]), np.array([0, 2]))
    assert head.tobytes() == bytes(4) and tail.tobytes() == b"\xff" * 8
    head, tail = f.take(np.array([4, 0]), np.array([1, 1]))  # no tail asked for
    assert head.tobytes() == b"\xff" * 4 + bytes(range(4)) and tail.shape == (0, 4)
    with pytest.raises(ValueError, match="whole blocks"):
        f.append(b"abc")
    f.close()


def test_the_compiled_reads_fill_both_arrays_and_name_the_first_run_read_short(
    tmp_path: Path,
) -> None:
    from ranker.kernels import read_runs

    path = tmp_path / "r.bin"
    data = np.random.default_rng(3).integers(0, 256, 4 * 10, dtype=np.uint8).tobytes()
    path.write_bytes(data)  # ten blocks of 4 bytes
    fd = os.open(path, os.O_RDONLY)
    try:
        first, head, tail = np.array([7, 0, 3]), np.array([1, 2, 0]), np.array([2, 1, 3])
        out_h, out_t = np.zeros(4 * 3, np.uint8), np.zeros(4 * 6, np.uint8)
        assert read_runs(fd, first, head, tail, 4, out_h, out_t) == -1
        block = [data[4 * i : 4 * i + 4] for i in range(10)]
        assert out_h.tobytes() == block[7] + block[0] + block[1]
        assert out_t.tobytes() == block[8] + block[9] + block[2] + block[3] + block[4] + block[5]
        past_the_end = np.array([0, 9]), np.array([1, 1]), np.array([0, 1])
        assert read_runs(fd, *past_the_end, 4, out_h, out_t) == 1
        assert read_runs(-1, first, head, tail, 4, out_h, out_t) == 0  # a bad descriptor
    finally:
        os.close(fd)


@pytest.mark.parametrize("nowait", [True, False], ids=["nowait", "blocking"])
def test_runs_the_page_cache_lost_are_read_in_the_second_pass(tmp_path: Path, nowait: bool) -> None:
    from ranker.kernels import RWF_NOWAIT, read_runs

    block = 4096  # a page: eviction is by page
    path = tmp_path / "r.bin"
    data = np.random.default_rng(5).integers(0, 256, block * 16, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        # Evicted, a first pass cannot read them (block 5 stands for the runs below, which the
        # probe would start reading), so they come from the second.
        went = evict(fd, probe_at=5 * block)
        assert went or not nowait
        # Runs cached and not: blocks 0-1 are read again first, the rest only from the disk.
        os.pread(fd, 2 * block, 0)
        first, head, tail = np.array([9, 0, 12]), np.array([1, 1, 0]), np.array([2, 1, 3])
        out_h, out_t = np.zeros(block * 2, np.uint8), np.zeros(block * 6, np.uint8)
        got = read_runs(fd, first, head, tail, block, out_h, out_t, RWF_NOWAIT if nowait else 0)
        assert got == -1
        b = [data[block * i : block * (i + 1)] for i in range(16)]
        assert out_h.tobytes() == b[9] + b[0]
        assert out_t.tobytes() == b[10] + b[11] + b[1] + b[12] + b[13] + b[14]
        past_the_end = np.array([15, 0]), np.array([1, 1]), np.array([1, 0])
        assert read_runs(fd, *past_the_end, block, out_h, out_t, RWF_NOWAIT) == 0
    finally:
        os.close(fd)


def test_a_block_file_reads_through_its_map_until_it_outgrows_the_bound(tmp_path: Path) -> None:
    from ranker.columns import BlockFile

    f = BlockFile(tmp_path / "b.bin", block=4, map_up_to=12)
    assert not f.mapped  # nothing to map yet
    f.append(bytes(range(12)))
    assert f.mapped
    head, _ = f.take(np.array([2, 0]), np.array([1, 1]))
    assert head.tobytes() == bytes(range(8, 12)) + bytes(range(4))
    assert len(f._view) == 3  # the gather went through the map
    f.append(b"\xfe" * 4)  # 16 bytes now: past the bound
    assert not f.mapped
    head, _ = f.take(np.array([3, 0]), np.array([1, 1]))
    assert head.tobytes() == b"\xfe" * 4 + bytes(range(4))
    assert len(f._view) == 0  # the map was released, so its pages leave resident memory
    f.close()


def test_the_read_setting_bounds_what_is_mapped() -> None:
    assert Settings(catalog_read="pread").catalog_map_bytes == 0
    assert Settings(catalog_read="mmap").catalog_map_bytes == sys.maxsize
    auto = Settings(catalog_read="auto", catalog_mmap_max_mib=3)
    assert auto.catalog_map_bytes == 3 << 20
    assert Settings().catalog_read == "auto"


def test_compaction_keeps_every_held_candidate_and_frees_the_dead_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    catalog, held = _filled(rng, tmp_path)  # replaced and erased candidates: dead bytes
    catalog.save("g1", 7)
    fids = np.array(sorted(held), dtype=np.int64)
    before, _ = catalog.lookup(fids)
    records = [before[i].candidate for i in range(0, len(fids), 7)]
    dead = catalog.dead_share()
    assert dead > 0.2
    sizes = sum(p.stat().st_size for p in tmp_path.glob("*.bin"))
    freed = catalog.compact()
    assert freed > 0 and catalog.dead_share() == pytest.approx(0.0, abs=1e-12)
    assert sum(p.stat().st_size for p in tmp_path.glob("*.bin")) == sizes - freed
    assert {"blobs.bin", "records.bin"}.isdisjoint(p.name for p in tmp_path.glob("*.bin"))
    after, _ = catalog.lookup(fids)
    _assert_packed_equal(after.packed, before.packed)
    assert [after[i].candidate for i in range(0, len(fids), 7)] == records
    pc = _prepared(_row(rng, "late"))  # writes go on into the new files
    catalog.put_many([(5000, pc)])
    got = catalog.get("late")
    assert got is not None and got.candidate == pc.candidate
    catalog.save("g2", 9)
    catalog.close()
    (tmp_path / "blobs.left-by-a-crash.bin").write_bytes(b"x")  # a compaction cut short
    again = CandidateCatalog.load(tmp_path, "g2")
    assert again is not None and again.saved == ("g2", 9)
    back, _ = again.lookup(fids)
    _assert_packed_equal(back.packed, before.packed)
    assert not (tmp_path / "blobs.left-by-a-crash.bin").exists()
    again.close()


def test_a_compaction_that_fails_leaves_the_old_files_and_no_copy(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    catalog, held = _filled(rng, tmp_path)
    catalog.save("g1", 7)
    before = {p.name for p in tmp_path.glob("*.bin")}
    assert before == {"blobs.bin", "records.bin"}
    blobs = (tmp_path / "blobs.bin").read_bytes()
    os.truncate(tmp_path / "blobs.bin", 4096)  # a damaged file: the copy reads short
    with pytest.raises(OSError, match="short read"):
        catalog.compact()
    assert {p.name for p in tmp_path.glob("*.bin")} == before  # the copies are gone
    catalog.close()
    (tmp_path / "blobs.bin").write_bytes(blobs)  # mended, as before the attempt
    again = CandidateCatalog.load(tmp_path, "g1")  # the saved state still names the old files
    assert again is not None and again.saved == ("g1", 7) and len(again) == len(held)
    again.close()
