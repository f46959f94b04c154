"""What only the PostgreSQL store does (a real server, `tests/fixtures/postgres.py`): erased bytes
gone from the table files after VACUUM FULL, the clean-up waiting for older snapshots, NOTIFY
after commit, two services on one database, and the service end to end on it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from ranker.errors import InvalidInput, StorageUnavailable
from ranker.store_erasure import ERASED_RELATIONS
from ranker.store_pg import CHANGES_CHANNEL, PostgresStore, safe_url
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.server import ServerHandle, seed
from tests.ranker.test_store_shared import DIM, _cand
from training.demo import DemoData

MARKER = "Xochiquetzal-5512-heron"
"""A phrase only the erased CV holds: searched for in every file of the erased tables."""

OpenStore = Callable[..., PostgresStore]


@pytest.fixture
def open_pg(postgres_url: str, tmp_path: Path) -> Iterator[OpenStore]:
    """Open PostgresStores on the test's database (one key file, as every service would)."""
    opened: list[PostgresStore] = []

    def open_(**kw: object) -> PostgresStore:
        kw = {"receipt_key_file": tmp_path / "receipt-key", "pool_size": 4, **kw}
        s = PostgresStore(postgres_url, dim=DIM, **kw)  # type: ignore[arg-type]
        opened.append(s)
        return s

    yield open_
    for s in opened:
        s.close()


def _files_holding(server: PostgresServer, url: str, text: str) -> list[str]:
    return [
        f.name
        for f in server.relation_files(url, list(ERASED_RELATIONS))
        if text.encode() in f.read_bytes()
    ]


def _erase_the_last_row_written(store: PostgresStore) -> None:
    # The erased row is the last one written, so nothing written after it overwrites its bytes:
    # the case where a plain VACUUM leaves them in the page's free space.
    store.upsert_candidates([_cand(1), _cand(2)])
    store.upsert_candidates([_cand(3, f"{MARKER} lives in Springfield.")])
    store.upsert_candidates([_cand(3, f"Edited; {MARKER} still.")])  # a version, and a dead tuple
    store.delete_candidates(["c3"])


def test_erased_bytes_are_gone_from_the_table_files(
    open_pg: OpenStore, postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = open_pg()  # VACUUM FULL, the default
    _erase_the_last_row_written(store)
    assert not store.residue_pending
    assert _files_holding(postgres_server, postgres_url, MARKER) == []
    assert store.count_candidates() == 2


def test_a_plain_vacuum_leaves_them_which_is_why_full_is_the_default(
    open_pg: OpenStore, postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = open_pg(vacuum="plain")
    _erase_the_last_row_written(store)
    assert not store.residue_pending  # the VACUUM ran; the bytes are in freed space, not rows
    assert _files_holding(postgres_server, postgres_url, MARKER) != []


def test_an_older_snapshot_keeps_the_clean_up_pending_until_it_ends(
    open_pg: OpenStore, postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = open_pg(checkpoint_seconds=0.3)
    store.upsert_candidates([_cand(1), _cand(2, f"{MARKER} again.")])
    with psycopg.connect(postgres_url) as reader:  # a report someone left open
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert reader.execute("SELECT COUNT(*) FROM candidates").fetchone() == (2,)
        store.delete_candidates(["c2"])
        assert store.residue_pending  # VACUUM could not remove rows that snapshot still sees
        assert not store.clear_residue(0.1)
        reader.execute("ROLLBACK")
    assert store.clear_residue(5.0) and not store.residue_pending
    assert _files_holding(postgres_server, postgres_url, MARKER) == []


def test_writes_are_announced_after_commit_and_rolled_back_ones_never(
    open_pg: OpenStore, postgres_url: str
) -> None:
    store = open_pg()
    with psycopg.connect(postgres_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANGES_CHANNEL}")

        def gave_up() -> None:
            raise TimeoutError

        with pytest.raises(TimeoutError):
            store.upsert_candidates([_cand(1)], before_commit=gave_up)
        assert list(listener.notifies(timeout=0.5)) == []
        store.upsert_candidates([_cand(1), _cand(2)])
        (note,) = list(listener.notifies(timeout=5, stop_after=1))
        assert note.channel == CHANGES_CHANNEL
        assert int(note.payload) == store.last_change_seq()


def test_two_services_share_one_database_and_its_feed_in_commit_order(
    open_pg: OpenStore,
) -> None:
    a, b = open_pg(), open_pg()
    assert a.uuid == b.uuid
    seen: list[int] = []
    done = threading.Event()

    def follow() -> None:  # a follower polling the feed while both services write
        last = 0
        while True:
            finished = done.is_set()
            for change in a.changes_since(last, limit=50):
                seen.append(change.seq)
                last = change.seq
            if finished:
                return

    def write(store: PostgresStore, start: int) -> None:
        for i in range(start, start + 30):
            store.upsert_candidates([_cand(i)])

    follower = threading.Thread(target=follow)
    writers = [threading.Thread(target=write, args=(s, k * 100)) for k, s in enumerate((a, b))]
    follower.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    follower.join()
    everything = [c.seq for c in b.changes_since(0, limit=1000)]
    assert len(everything) == 60 and b.count_candidates() == 60
    # Entries become visible in seq order, so a follower never passes over one.
    assert seen == everything
    b.delete_candidates(["c5"])
    assert a.erased_among(["c5"]) == {"c5"}  # one service's erasure binds the other


def test_a_database_of_another_schema_is_refused(open_pg: OpenStore, postgres_url: str) -> None:
    open_pg().close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    with pytest.raises(InvalidInput, match="store schema 4"):
        open_pg()


def test_an_unreachable_database_says_so(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable, match="RANKER_DATABASE_URL"):
        PostgresStore(
            "postgresql://nobody:secret@127.0.0.1:1/none",
            receipt_key_file=tmp_path / "key",
        )
    assert safe_url("postgresql://u:secret@h:5/d") == "postgresql://u@h:5/d"


def test_the_service_serves_from_postgres_and_an_erasure_holds_across_services(
    start_server: Callable[..., ServerHandle],
    postgres_url: str,
    serving_demo: DemoData,
    tmp_path: Path,
) -> None:
    shared = {"database_url": postgres_url, "receipt_key_file": tmp_path / "receipt-key"}
    first = start_server(tmp_path / "one", **shared)
    cands = serving_demo.candidates[:20]
    seed(first, cands, serving_demo.postings[:1])
    posting = serving_demo.postings[0].id
    ranked = first.stub.RankCandidates(pb.RankCandidatesRequest(posting_id=posting, top_k=20))
    assert len(ranked.results) == 20
    gone = ranked.results[0].candidate_id
    erased = first.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=[gone]))
    assert erased.items[0].code == 0 and erased.total_candidates == 19
    # A second service on its own data folder builds its memory from the same database.
    second = start_server(tmp_path / "two", **shared)
    again = second.stub.RankCandidates(pb.RankCandidatesRequest(posting_id=posting, top_k=20))
    assert len(again.results) == 19 and gone not in {c.candidate_id for c in again.results}
    refused = second.stub.UpsertCandidates(
        pb.UpsertCandidatesRequest(candidates=[pb.Candidate(id=gone, cv_text="Back again.")])
    )
    assert refused.stored == 0 and refused.items[0].code == 9  # FAILED_PRECONDITION: erased
