"""The smaller findings of the abuse run: deadlines under the transaction, huge ids, invisible
skills, owner-only files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from ranker.api import Deadline
from ranker.domain import Candidate
from ranker.encoding import TextEncoder
from ranker.errors import DeadlineExceeded, InvalidField, NotFound
from ranker.pipeline import RankingPipeline
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.server import ServerHandle, serving_settings

StartServer = Callable[..., ServerHandle]


class _PassesUntilCommit(Deadline):
    """A deadline that is still good for every step but the last: the commit itself."""

    def check(self, before: str) -> None:
        if before == "committing":
            raise DeadlineExceeded("the deadline passed before committing")


def test_a_deadline_passing_under_the_transaction_stores_nothing(
    encoder: TextEncoder, registry_path: Path, tmp_path: Path
) -> None:
    p = RankingPipeline.open(serving_settings(tmp_path / "data", registry_path), encoder=encoder)
    try:
        with pytest.raises(DeadlineExceeded):
            p.upsert_candidates([Candidate(id="late", cv_text="Nurse.")], _PassesUntilCommit())
        assert p.store.count_candidates() == 0
        with pytest.raises(NotFound):
            p.get_candidate("late")
        assert p.upsert_candidates([Candidate(id="late", cv_text="Nurse.")]).succeeded == 1
    finally:
        p.close()


def _code_and_details(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", [8 * 1024, 16 * 1024])
def test_huge_ids_are_refused_briefly_not_resource_exhausted(
    served: ServerHandle, size: int
) -> None:
    huge = "x" * size
    for call in (
        lambda: served.stub.GetCandidate(pb.GetCandidateRequest(id=huge)),
        lambda: served.stub.RankCandidates(pb.RankCandidatesRequest(posting_id=huge)),
    ):
        code, details = _code_and_details(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert len(details) < 300 and f"({size} characters)" in details
    r = served.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=[huge]))
    assert r.items[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    up = served.stub.UpsertCandidates(
        pb.UpsertCandidatesRequest(candidates=[pb.Candidate(id=huge, cv_text="Welder.")])
    )
    assert up.items[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_an_unknown_id_at_the_limit_stays_not_found(served: ServerHandle) -> None:
    code, details = _code_and_details(
        lambda: served.stub.GetCandidate(pb.GetCandidateRequest(id="y" * 200))
    )
    assert code == grpc.StatusCode.NOT_FOUND and len(details) < 300


@pytest.mark.parametrize("skill", ["\u200b", "\u200b\u200d ", "\ufeff"])
def test_a_skill_of_only_invisible_characters_is_refused(served: ServerHandle, skill: str) -> None:
    with pytest.raises(InvalidField, match="visible"):
        Candidate(id="C-zw", cv_text="Nurse.", skills=(skill,))
    r = served.stub.UpsertCandidates(
        pb.UpsertCandidatesRequest(
            candidates=[pb.Candidate(id="C-zw", cv_text="Nurse.", skills=["icu", skill])]
        )
    )
    assert r.items[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_data_files_are_owner_only(
    start_server: StartServer, registry_path: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    h = start_server(data_dir=data, registry_dir=registry_path, index_save_delay_seconds=0)
    h.stub.UpsertCandidates(
        pb.UpsertCandidatesRequest(candidates=[pb.Candidate(id="C1", cv_text="Welder.")])
    )
    h.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=["C1"]))
    h.stop()
    assert _mode(data) == 0o700
    assert _mode(data / "index") == 0o700
    db = h.settings.resolved_db_path
    # The index folder holds the catalog's folder too: every folder 0700, every file 0600.
    for f in [db, db.with_name(db.name + ".receipt-key"), *(data / "index").rglob("*")]:
        assert _mode(f) == (0o700 if f.is_dir() else 0o600), f
    for side in ("-wal", "-shm"):
        f = db.with_name(db.name + side)
        assert not f.exists() or _mode(f) == 0o600


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}


def test_every_command_writes_owner_only_files(tmp_path: Path) -> None:
    # The CLI sets a private umask, so whatever a command creates (registry, demo exports,
    # anything a library writes) is owner-only too.
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-c", "from ranker.cli import main; main()", "demo-data",
         "--candidates", "20", "--postings", "6"],
        env={**_env(), "RANKER_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    demo = data / "demo"
    assert _mode(data) == 0o700 and _mode(demo) == 0o700
    assert all(_mode(f) == 0o600 for f in demo.iterdir())
