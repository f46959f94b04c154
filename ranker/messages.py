"""Conversions between ranker.v1 messages and domain records; light, so CLI clients can use it.

Imports only the generated messages, protobuf and the domain: `ranker query` converts a posting
file with it without loading FAISS, LightGBM or the pipeline.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import message as pb_message
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.unknown_fields import UnknownFieldSet

from ranker.domain import Candidate, Outcome, Posting
from ranker.errors import InvalidInput
from ranker.v1 import ranker_pb2 as pb

_WIRE_TYPES = {0: "varint", 1: "64-bit", 2: "length-delimited", 3: "group", 4: "group", 5: "32-bit"}


def reject_unknown_fields(msg: pb_message.Message, path: str = "") -> None:
    """Raise InvalidInput when `msg` or any message inside it holds fields the contract lacks.

    protobuf keeps a field it cannot read as an *unknown* field and carries on, so a number
    sent as a string (wrong wire type) would otherwise be dropped and read as 0.
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
        raise InvalidInput(
            f"field {f.field_number} of {where} ({name}) is not part of the contract; check the "
            "client's copy of proto/ranker/v1/ranker.proto"
        )
    for field, value in msg.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        here = f"{where}.{field.name}"
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                for key, item in value.items():
                    reject_unknown_fields(item, f"{here}[{key!r}]")
        elif field.is_repeated:
            for i, item in enumerate(value):
                reject_unknown_fields(item, f"{here}[{i}]")
        else:
            reject_unknown_fields(value, here)


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


def candidate_from_pb(m: pb.Candidate) -> Candidate:
    return Candidate(
        id=m.id,
        cv_text=m.cv_text,
        skills=tuple(m.skills),
        years_experience=m.years_experience,
        location=m.location,
        willing_to_relocate=m.willing_to_relocate,
        remote_ok=m.remote_ok,
        title=m.title,
        updated_at=_datetime(m, "updated_at"),
    )


def candidate_to_pb(c: Candidate) -> pb.Candidate:
    return pb.Candidate(
        id=c.id,
        cv_text=c.cv_text,
        skills=list(c.skills),
        years_experience=c.years_experience,
        location=c.location,
        willing_to_relocate=c.willing_to_relocate,
        remote_ok=c.remote_ok,
        title=c.title,
        updated_at=timestamp(c.updated_at),
    )


def posting_from_pb(m: pb.Posting, default_id: str | None = None) -> Posting:
    return Posting(
        id=m.id or default_id or "",
        title=m.title,
        description=m.description,
        required_skills=tuple(m.required_skills),
        nice_skills=tuple(m.nice_skills),
        min_years=m.min_years,
        location=m.location,
        remote=m.remote,
        created_at=_datetime(m, "created_at"),
    )


def posting_to_pb(p: Posting) -> pb.Posting:
    return pb.Posting(
        id=p.id,
        title=p.title,
        description=p.description,
        required_skills=list(p.required_skills),
        nice_skills=list(p.nice_skills),
        min_years=p.min_years,
        location=p.location,
        remote=p.remote,
        created_at=timestamp(p.created_at),
    )


def outcome_from_pb(m: pb.Outcome) -> Outcome:
    at = _datetime(m, "at")
    return Outcome(
        posting_id=m.posting_id,
        candidate_id=m.candidate_id,
        stage=m.stage,  # type: ignore[arg-type]  # Outcome parses and checks the stage name
        at=at if at is not None else datetime.now(UTC),
    )
