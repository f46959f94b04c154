"""A client of the CandidateRanker service for the recruiter's tools (`ranker query`, `ranker web`),
and the recruiter's view of its answers as plain values (the shape `ranker query --json` prints,
documented in docs/query.schema.json).

Light on purpose, like `convert`: grpc, the generated messages and the domain records, never the
pipeline, so the tools start fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import grpc

from ranker.domain import Candidate, Posting, to_plain
from ranker.transport.channel import client_channel
from ranker.transport.convert import candidate_from_pb, posting_from_pb
from ranker.v1 import ranker_pb2 as pb
from ranker.v1 import ranker_pb2_grpc as pb_grpc

DECISION_AID_NOTICE = (
    "This ranking is a decision aid: it orders candidates; people decide. Read the reasons, "
    "check the CV, and do not reject anyone on the order alone."
)

FEEDBACK_STAGES = {"shortlist": "screened", "reject": "rejected"}
"""Recruiter feedback buttons and the outcome stage each records."""


class ServiceError(Exception):
    """A call to the service failed; `code` is the gRPC status name, the message says what to do."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def _failure(e: grpc.RpcError, target: str) -> ServiceError:
    code = e.code()  # type: ignore[attr-defined]
    details = e.details() or ""  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details.lower():
        return ServiceError(
            code.name, f"no service answers at {target}; start it with `ranker serve`"
        )
    return ServiceError(code.name, f"{code.name}: {details}")


class GrpcRankerClient:
    """Blocking calls to one CandidateRanker service; every failure is a `ServiceError`."""

    def __init__(self, target: str, timeout: float = 30.0, channel: grpc.Channel | None = None):
        self.target = target
        self.timeout = timeout
        self._channel = channel if channel is not None else client_channel(target)
        self._stub = pb_grpc.CandidateRankerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcRankerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise _failure(e, self.target) from None

    def rank(self, request: pb.RankCandidatesRequest) -> pb.RankCandidatesResponse:
        response: pb.RankCandidatesResponse = self._call("RankCandidates", request)
        return response

    def compare(self, request: pb.CompareCandidatesRequest) -> pb.CompareCandidatesResponse:
        response: pb.CompareCandidatesResponse = self._call("CompareCandidates", request)
        return response

    def top_k(self, posting_id: str, k: int, explain: bool = True) -> pb.RankCandidatesResponse:
        """A stored posting's top k, with reasons when `explain`."""
        return self.rank(pb.RankCandidatesRequest(posting_id=posting_id, top_k=k, explain=explain))

    def why(self, posting_id: str, a: str, b: str) -> pb.CompareCandidatesResponse:
        """What separates candidates `a` and `b` for a stored posting."""
        return self.compare(
            pb.CompareCandidatesRequest(posting_id=posting_id, candidate_a=a, candidate_b=b)
        )

    def model_version(self) -> str:
        info: pb.GetModelInfoResponse = self._call("GetModelInfo", pb.GetModelInfoRequest())
        return info.version

    def list_postings(self, page_size: int = 100, page_token: str = "") -> pb.ListPostingsResponse:
        page: pb.ListPostingsResponse = self._call(
            "ListPostings", pb.ListPostingsRequest(page_size=page_size, page_token=page_token)
        )
        return page

    def posting(self, posting_id: str) -> Posting:
        """A stored posting's fields; ServiceError NOT_FOUND when no page holds it."""
        token = ""
        while True:
            page = self.list_postings(1000, token)
            for p in page.postings:
                if p.id == posting_id:
                    return posting_from_pb(p)
            # Pages are sorted by id: once past it, it is not stored.
            if not page.next_page_token or (page.postings and page.postings[-1].id > posting_id):
                raise ServiceError(
                    "NOT_FOUND",
                    f"posting {posting_id!r} is not stored; send it with UpsertPostings first",
                )
            token = page.next_page_token

    def candidate(self, candidate_id: str) -> Candidate:
        r: pb.GetCandidateResponse = self._call(
            "GetCandidate", pb.GetCandidateRequest(id=candidate_id)
        )
        return candidate_from_pb(r.candidate)

    def candidates(self, ids: Iterable[str]) -> dict[str, Candidate]:
        """Stored candidates by id, fetched concurrently; ids no longer stored are left out."""
        futures = {
            cid: self._stub.GetCandidate.future(
                pb.GetCandidateRequest(id=cid), timeout=self.timeout
            )
            for cid in dict.fromkeys(ids)
        }
        out: dict[str, Candidate] = {}
        for cid, f in futures.items():
            try:
                out[cid] = candidate_from_pb(f.result().candidate)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    raise _failure(e, self.target) from None
        return out

    def record_feedback(self, posting_id: str, candidate_id: str, action: str) -> str:
        """Record a recruiter's shortlist / reject as an outcome; the stage recorded."""
        stage = FEEDBACK_STAGES.get(action)
        if stage is None:
            raise ServiceError(
                "INVALID_ARGUMENT", f"unknown feedback {action!r}; use {', '.join(FEEDBACK_STAGES)}"
            )
        r: pb.RecordOutcomesResponse = self._call(
            "RecordOutcomes",
            pb.RecordOutcomesRequest(
                outcomes=[pb.Outcome(posting_id=posting_id, candidate_id=candidate_id, stage=stage)]
            ),
        )
        item = r.items[0]
        if item.code:
            names = {c.value[0]: c.name for c in grpc.StatusCode}
            raise ServiceError(names.get(item.code, "UNKNOWN"), item.message)
        return stage


# -- the recruiter's view as plain values -----------------------------------------------------


def posting_view(p: Posting) -> dict[str, Any]:
    """The posting header: what a recruiter checks the ranking against."""
    plain = to_plain(p)
    return {
        k: plain[k]
        for k in (
            "id",
            "title",
            "location",
            "remote",
            "required_skills",
            "nice_skills",
            "min_years",
        )
    }


def candidate_view(c: Candidate) -> dict[str, Any]:
    """A candidate's stored fields (not its vectors)."""
    return to_plain(c)


def ranking_view(
    posting: Posting,
    r: pb.RankCandidatesResponse,
    candidates: dict[str, Candidate],
    explain: bool,
) -> dict[str, Any]:
    """A ranking as `ranker query --json` prints it (docs/query.schema.json)."""
    results = []
    for c in r.results:
        cand = candidates.get(c.candidate_id)
        row: dict[str, Any] = {
            "rank": c.rank,
            "candidate_id": c.candidate_id,
            "title": cand.title if cand else "",
            "location": cand.location if cand else "",
            "score": round(float(c.score), 6),
        }
        if explain:
            row["reasons"] = list(c.explanation.reasons)
            row["required_matched"] = list(c.explanation.required_matched)
            row["required_missing"] = list(c.explanation.required_missing)
        results.append(row)
    return {
        "posting": posting_view(posting) | {"id": r.posting_id},
        "model_version": r.model_version,
        "request_id": r.request_id,
        "eligible": int(r.eligible),
        "retrieved": int(r.retrieved),
        "notice": DECISION_AID_NOTICE,
        "results": results,
    }


def comparison_view(r: pb.CompareCandidatesResponse) -> dict[str, Any]:
    """A comparison as `ranker query --why A B --json` prints it."""

    def side(c: pb.ComparedCandidate) -> dict[str, Any]:
        return {
            "candidate_id": c.candidate_id,
            "rank": c.rank if c.HasField("rank") else None,
            "score": round(float(c.score), 6),
            "reasons": list(c.explanation.reasons),
        }

    return {
        "posting_id": r.posting_id,
        "model_version": r.model_version,
        "request_id": r.request_id,
        "summary": r.summary,
        "a": side(r.a),
        "b": side(r.b),
        "separating": [
            {"topic": s.topic, "reason": s.reason, "favours": s.favours, "strength": s.strength}
            for s in r.separating
        ],
    }


def skills_line(skills: Sequence[str]) -> str:
    return ", ".join(skills) if skills else "none"


def posting_header(p: Posting) -> list[str]:
    """The posting header in lines: title and id, where, required / nice skills, minimum years."""
    where = p.location or ("remote" if p.remote else "no location given")
    if p.location and p.remote:
        where += ", or remote"
    lines = [f"{p.title} ({p.id})", f"Where: {where}"]
    lines.append(f"Required skills: {skills_line(p.required_skills)}")
    lines.append(f"Nice-to-have skills: {skills_line(p.nice_skills)}")
    lines.append(f"Minimum experience: {_years(p.min_years) if p.min_years else 'none asked'}")
    return lines


def _years(y: float) -> str:
    return f"{y:g} year" + ("" if y == 1 else "s")
