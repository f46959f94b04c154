"""Every conversion between ranker.v1 messages and domain records, requests and results.

Light on purpose: it imports protobuf, grpc's status codes, the generated messages and the
domain values, never the pipeline or the server, so CLI clients (`ranker query`) can use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf import message as pb_message
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.unknown_fields import UnknownFieldSet

from ranker.api import CompareQuery, RankFilters, RankQuery, Rejected
from ranker.domain import (
    MAX_ID_CHARS,
    Candidate,
    Outcome,
    Posting,
    Record,
    RecordT,
    record_fields,
)
from ranker.errors import InvalidInput, RankerError, shown_id
from ranker.transport.status import status_for
from ranker.v1 import ranker_pb2 as pb

if TYPE_CHECKING:
    from ranker.api import (
        BatchResult,
        ComparedCandidate,
        ComparisonResult,
        ModelInfo,
        PostingPage,
        RankResult,
    )
    from ranker.explain import Explanation
    from ranker.rows import ErasureReceipt

R = TypeVar("R")
M = TypeVar("M", bound=pb_message.Message)

_WIRE_TYPES = {0: "varint", 1: "64-bit", 2: "length-delimited", 3: "group", 4: "group", 5: "32-bit"}


def reject_unknown_fields(msg: pb_message.Message, path: str = "", *, strict: bool = True) -> None:
    """Raise InvalidInput when `msg` or any message inside it holds fields the contract lacks.

    protobuf keeps a field it cannot read as an *unknown* field and carries on, so a number
    sent as a string (wrong wire type) would otherwise be dropped and read as 0: that is always
    refused. A field number the contract does not define is refused only when `strict`; by
    protobuf's convention it is ignored, so a client built from a newer proto keeps working
    against this server during a rolling upgrade (`Settings.strict_fields`).
    """
    name = msg.DESCRIPTOR.full_name
    where = path or name
    for f in UnknownFieldSet(msg):
        known = msg.DESCRIPTOR.fields_by_number.get(f.field_number)
        wire = _WIRE_TYPES.get(f.wire_type, str(f.wire_type))
        if known is not None:
            raise InvalidInput(
                f"field {f.field_number} ({known.name}) of {where} ({name}) was sent with the "
                f"wrong wire type ({wire}); send it as the {_type_name(known)} that "
                "proto/ranker/v1/ranker.proto declares"
            )
        if strict:
            raise InvalidInput(
                f"field {f.field_number} of {where} ({name}) is not part of the contract; check "
                "the client's copy of proto/ranker/v1/ranker.proto"
            )
    for field, value in msg.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        here = f"{where}.{field.name}"
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                for key, item in value.items():
                    reject_unknown_fields(item, f"{here}[{key!r}]", strict=strict)
        elif field.is_repeated:
            for i, item in enumerate(value):
                reject_unknown_fields(item, f"{here}[{i}]", strict=strict)
        else:
            reject_unknown_fields(value, here, strict=strict)


def _type_name(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return f"message {field.message_type.full_name}"
    names = {
        FieldDescriptor.TYPE_DOUBLE: "double",
        FieldDescriptor.TYPE_FLOAT: "float",
        FieldDescriptor.TYPE_INT32: "int32",
        FieldDescriptor.TYPE_INT64: "int64",
        FieldDescriptor.TYPE_UINT32: "uint32",
        FieldDescriptor.TYPE_UINT64: "uint64",
        FieldDescriptor.TYPE_BOOL: "bool",
        FieldDescriptor.TYPE_STRING: "string",
        FieldDescriptor.TYPE_BYTES: "bytes",
    }
    return names.get(field.type, "type")


def _datetime(msg: pb_message.Message, name: str) -> datetime | None:
    if not msg.HasField(name):
        return None
    ts: Timestamp = getattr(msg, name)
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as e:
        raise InvalidInput(
            f"{name} is not a valid timestamp ({e}); send a time in years 1..9999"
        ) from e


def timestamp(dt: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp of an aware or naive-UTC time; None stays None."""
    if dt is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(dt if dt.tzinfo is None else dt.astimezone(UTC).replace(tzinfo=None))
    return ts


def _record_from_pb(record: type[RecordT], m: pb_message.Message, **given: Any) -> RecordT:
    """The record whose fields are the message's fields of the same names.

    An unset time is left out, so the record's default applies (an outcome's `at` = now).
    """
    values: dict[str, Any] = {}
    for f in record_fields(record):
        if f.kind == "datetime":
            at = _datetime(m, f.name)
            if at is not None:
                values[f.name] = at
        elif f.kind == "list":
            values[f.name] = tuple(getattr(m, f.name))
        else:
            values[f.name] = getattr(m, f.name)
    return record(**(values | given))


def _record_to_pb(message: Callable[..., M], record: Record) -> M:
    """The message whose fields are the record's fields of the same names."""
    values: dict[str, Any] = {}
    for f in record_fields(type(record)):
        value = getattr(record, f.name)
        if f.kind == "datetime":
            values[f.name] = timestamp(value)
        elif f.kind == "list":
            values[f.name] = list(value)
        else:
            values[f.name] = value
    return message(**values)


def candidate_from_pb(m: pb.Candidate) -> Candidate:
    return _record_from_pb(Candidate, m)


def candidate_to_pb(c: Candidate) -> pb.Candidate:
    return _record_to_pb(pb.Candidate, c)


def posting_from_pb(m: pb.Posting, default_id: str | None = None) -> Posting:
    return _record_from_pb(Posting, m, id=m.id or default_id or "")


def posting_to_pb(p: Posting) -> pb.Posting:
    return _record_to_pb(pb.Posting, p)


def outcome_from_pb(m: pb.Outcome) -> Outcome:
    return _record_from_pb(Outcome, m)


def outcome_to_pb(o: Outcome) -> pb.Outcome:
    return _record_to_pb(pb.Outcome, o)


# ---------------------------------------------------------------------------------------------
# Requests


def parse_items(
    messages: Sequence[Any], convert: Callable[[Any], R], ident: Callable[[Any], str]
) -> list[R | Rejected]:
    """Each message as a domain record, or the reason it is not one (reported per item)."""
    out: list[R | Rejected] = []
    for m in messages:
        try:
            out.append(convert(m))
        except RankerError as e:
            out.append(Rejected(ident(m), e))
    return out


def filters_from_pb(m: pb.Filters) -> RankFilters:
    return RankFilters(
        locations=tuple(m.locations),
        include_remote=m.include_remote,
        include_relocating=m.include_relocating,
        remote_only=m.remote_only,
        min_years=m.min_years if m.HasField("min_years") else None,
        must_have_skills=tuple(m.must_have_skills),
    )


def query_from_pb(m: pb.RankCandidatesRequest) -> RankQuery:
    which = m.WhichOneof("posting_ref")
    if which is None:
        raise InvalidInput("the request names no posting; set posting_id or posting")
    if which == "posting_id" and not m.posting_id.strip():
        raise InvalidInput("posting_id is empty; send a stored posting's id or an inline posting")
    if which == "posting_id" and len(m.posting_id) > MAX_ID_CHARS:
        raise InvalidInput(
            f"posting_id {shown_id(m.posting_id)} is longer than {MAX_ID_CHARS} characters; no "
            "stored posting has such an id"
        )
    return RankQuery(
        posting_id=m.posting_id if which == "posting_id" else None,
        posting=posting_from_pb(m.posting, default_id="inline") if which == "posting" else None,
        top_k=m.top_k if m.HasField("top_k") else None,
        retrieve_n=m.retrieve_n if m.HasField("retrieve_n") else None,
        filters=filters_from_pb(m.filters) if m.HasField("filters") else RankFilters(),
        explain=m.explain,
        unnamed_posting=which == "posting" and not m.posting.id,
    )


def compare_query_from_pb(m: pb.CompareCandidatesRequest) -> CompareQuery:
    which = m.WhichOneof("posting_ref")
    if which is None:
        raise InvalidInput("the request names no posting; set posting_id or posting")
    if which == "posting_id" and not m.posting_id.strip():
        raise InvalidInput("posting_id is empty; send a stored posting's id or an inline posting")
    query = RankQuery(
        posting_id=m.posting_id if which == "posting_id" else None,
        posting=posting_from_pb(m.posting, default_id="inline") if which == "posting" else None,
        unnamed_posting=which == "posting" and not m.posting.id,
    )
    return CompareQuery(candidate_a=m.candidate_a, candidate_b=m.candidate_b, query=query)


# ---------------------------------------------------------------------------------------------
# Results


def explanation_to_pb(e: Explanation) -> pb.Explanation:
    return pb.Explanation(
        reasons=list(e.reasons),
        required_matched=list(e.fit.required_matched),
        required_missing=list(e.fit.required_missing),
        nice_matched=list(e.fit.nice_matched),
        years_experience=e.fit.years_experience,
        min_years=e.fit.min_years,
        location_fit=e.fit.location_fit,
        top_features=[
            pb.FeatureContribution(name=f.name, value=f.value, contribution=f.contribution)
            for f in e.top_features
        ],
    )


def rank_result_to_pb(r: RankResult) -> pb.RankCandidatesResponse:
    t = r.timings_ms
    return pb.RankCandidatesResponse(
        request_id=r.request_id,
        model_version=r.model_version,
        posting_id=r.posting_id,
        results=[
            pb.RankedCandidate(
                candidate_id=c.candidate_id,
                rank=c.rank,
                score=c.score,
                similarity=c.similarity,
                explanation=explanation_to_pb(c.explanation) if c.explanation else None,
            )
            for c in r.results
        ],
        eligible=r.eligible,
        retrieved=r.retrieved,
        timings=pb.StageTimings(
            encode_ms=t["encode"],
            retrieve_ms=t["retrieve"],
            search_ms=t.get("search", 0.0),
            features_ms=t["features"],
            score_ms=t["score"],
            explain_ms=t["explain"],
            total_ms=t["total"],
        ),
    )


def comparison_to_pb(r: ComparisonResult) -> pb.CompareCandidatesResponse:
    def side(c: ComparedCandidate) -> pb.ComparedCandidate:
        return pb.ComparedCandidate(
            candidate_id=c.candidate_id,
            score=c.score,
            rank=c.rank,
            explanation=explanation_to_pb(c.explanation),
        )

    return pb.CompareCandidatesResponse(
        request_id=r.request_id,
        model_version=r.model_version,
        posting_id=r.posting_id,
        a=side(r.a),
        b=side(r.b),
        summary=r.summary,
        separating=[
            pb.Separation(
                topic=s.topic,
                reason=s.reason,
                favours=s.favours,
                strength=s.strength,
                contribution_difference=s.difference,
                features=list(s.features),
            )
            for s in r.separating
        ],
        retrieved=r.retrieved,
    )


def items_to_pb(result: BatchResult) -> list[pb.ItemStatus]:
    """Per-item statuses of a batch call; an item's error maps through the status table."""
    return [
        pb.ItemStatus(
            index=i.index,
            id=i.id,
            code=0 if i.error is None else status_for(i.error).value[0],
            message="" if i.error is None else str(i.error),
            created=i.created,
        )
        for i in result.items
    ]


def receipt_to_pb(r: ErasureReceipt | None) -> pb.ErasureReceipt | None:
    if r is None:
        return None
    return pb.ErasureReceipt(
        receipt_ids=list(r.receipt_ids),
        erased_at=timestamp(r.at),
        candidates=len(r.erased),
        rows_deleted=sum(r.rows.values()),
        rows_by_table=dict(r.rows),
    )


def model_info_to_pb(info: ModelInfo) -> pb.GetModelInfoResponse:
    return pb.GetModelInfoResponse(
        version=info.version,
        feature_names=list(info.feature_names),
        metrics=card_metrics(info.card),
        card_json=json.dumps(info.card, sort_keys=True, default=str),
        loaded_at=timestamp(info.loaded_at),
        total_candidates=info.total_candidates,
        # Model lifecycle (fallback, refused versions, shadow): empty strings mean none.
        fallback=info.fallback,
        refused_version=info.refused_version or "",
        refused_error=info.refused_error or "",
        challenger_version=info.challenger_version or "",
        refused_challenger=info.refused_challenger or "",
        refused_challenger_error=info.refused_challenger_error or "",
        shadow_scored=info.shadow_scored,
        shadow_dropped=info.shadow_dropped,
    )


def card_metrics(card: Mapping[str, object], prefix: str = "") -> dict[str, float]:
    """The numeric entries of a model card, flattened with dots."""
    out: dict[str, float] = {}
    for k, v in card.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(card_metrics(v, key + "."))
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def posting_page_to_pb(page: PostingPage) -> pb.ListPostingsResponse:
    return pb.ListPostingsResponse(
        postings=[posting_to_pb(p) for p in page.postings],
        next_page_token=page.next_page_token,
    )
