"""Erasure requests: which ids to erase, the result per id, and the record of who erased."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ranker.api import ItemResult
from ranker.domain import MAX_ID_CHARS
from ranker.errors import InvalidInput, NotFound, shown_id
from ranker.rows import ErasureReceipt

log = logging.getLogger(__name__)


def erasure_targets(ids: Sequence[str]) -> tuple[list[ItemResult | None], list[str]]:
    """A result slot per id (an error for each malformed or repeated one) and the distinct ids to
    erase, in order."""
    results: list[ItemResult | None] = [None] * len(ids)
    wanted: list[str] = []
    first_at: dict[str, int] = {}
    for i, cid in enumerate(ids):
        if not isinstance(cid, str) or not cid.strip():
            results[i] = ItemResult(i, str(cid), InvalidInput("ids must be non-empty strings"))
        elif len(cid) > MAX_ID_CHARS:
            results[i] = ItemResult(
                i,
                cid[:MAX_ID_CHARS],
                InvalidInput(
                    f"id {shown_id(cid)} is longer than {MAX_ID_CHARS} characters; no stored "
                    "candidate has such an id"
                ),
            )
        elif cid in first_at:
            # As in the upserts: answering OK twice would claim two erasures, and NOT_FOUND
            # would wrongly say it was never stored.
            results[i] = ItemResult(
                i,
                cid,
                InvalidInput(
                    f"id {shown_id(cid)} appears more than once in this batch (first at item "
                    f"{first_at[cid]}); send each id once"
                ),
            )
        else:
            first_at[cid] = i
            wanted.append(cid)
    return results, wanted


def erasure_results(
    ids: Sequence[str], results: list[ItemResult | None], receipt: ErasureReceipt | None
) -> tuple[ItemResult, ...]:
    """Every id's result: erased, or NOT_FOUND (unknown or already erased)."""
    erased = set(receipt.erased) if receipt is not None else set()
    out: list[ItemResult] = []
    for i, cid in enumerate(ids):
        done = results[i]
        if done is None:
            done = ItemResult(
                i,
                cid,
                None
                if cid in erased
                else NotFound(
                    f"candidate {shown_id(cid)} is not stored (unknown or already erased); "
                    "nothing to erase"
                ),
            )
        out.append(done)
    return tuple(out)


def log_erasure(receipt: ErasureReceipt, actor: str) -> None:
    """One line per erasure: how many, the receipts, and who (a token's name, never the secret)."""
    log.info(
        "erased %d candidates (receipts %s) for %s",
        len(receipt.erased),
        list(receipt.receipt_ids),
        actor,
    )
