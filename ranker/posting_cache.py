"""The stored postings in memory, prepared for ranking, and their pages for ListPostings."""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Sequence

from ranker.api import PostingPage
from ranker.errors import InvalidInput
from ranker.prepared import PreparedPosting

DEFAULT_PAGE_SIZE = 100
"""Postings per ListPostings page when the request does not say."""
MAX_PAGE_SIZE = 1000
"""Most postings per ListPostings page; larger requests get this many."""


class PostingCache:
    """Prepared postings by id, with their ids kept sorted for stable pages.

    Not thread-safe: the pipeline's lock guards changes and pages. A single `get` needs no
    lock (one dict read), so a ranking by posting id does not take it.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, PreparedPosting] = {}
        self._ids: list[str] = []  # sorted

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, posting_id: object) -> bool:
        return posting_id in self._by_id

    def __getitem__(self, posting_id: str) -> PreparedPosting:
        return self._by_id[posting_id]

    def get(self, posting_id: str) -> PreparedPosting | None:
        return self._by_id.get(posting_id)

    def put_many(self, postings: Sequence[PreparedPosting]) -> list[bool]:
        """Add or replace postings; True for each that was new."""
        created: list[bool] = []
        for pp in postings:
            created.append(pp.id not in self._by_id)
            self._by_id[pp.id] = pp
        new = [pp.id for pp, c in zip(postings, created, strict=True) if c]
        if len(new) > 64:
            self._ids = sorted(self._by_id)  # one sort beats many inserts (loading at start)
        else:
            for posting_id in new:
                bisect.insort(self._ids, posting_id)
        return created

    def page(self, page_size: int = 0, page_token: str = "") -> PostingPage:
        """One page sorted by id; `page_token` is the previous page's `next_page_token`."""
        if page_size < 0:
            raise InvalidInput(f"page_size must be 0..{MAX_PAGE_SIZE}, got {page_size}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_page_token(page_token) if page_token else None
        ids = self._ids
        start = 0 if after is None else bisect.bisect_right(ids, after)
        page = tuple(self._by_id[k].posting for k in ids[start : start + size])
        more = start + size < len(ids)
        token = _encode_page_token(page[-1].id) if more and page else ""
        return PostingPage(postings=page, next_page_token=token)


def _encode_page_token(last_id: str) -> str:
    # The last id of the page: pages stay consistent while postings are added (ids sort).
    return base64.urlsafe_b64encode(last_id.encode("utf-8")).decode("ascii")


def _decode_page_token(token: str) -> str:
    try:
        last_id = base64.b64decode(token, altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        last_id = ""
    if not last_id:
        raise InvalidInput(
            "page_token is not one this service issued; send the next_page_token of the "
            "previous page, or none for the first page"
        )
    return last_id
