"""The training-time candidate pool: every stored candidate, searchable as the service searches.

Serving retrieves `retrieve_n` candidates from every stored candidate and builds their features
against the live pool's BM25 statistics, with the retrieved set as each posting's reference set
(`ranker.features.ReferenceStats`). Offline, `Pool` is that same pool: a FAISS index over every
stored candidate with the service's storage setting, and the pool's `Lexicon`. Training rows and
evaluation then compute features exactly as the service would have for the same posting.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ranker.errors import InvalidInput
from ranker.features import FeatureBuilder, ReferenceStats
from ranker.index import FaissIndex, Storage
from ranker.lexicon import Lexicon
from ranker.prepared import PreparedCandidate, PreparedPosting


@dataclass(frozen=True)
class Pool:
    """Every stored candidate in a FAISS index as the service holds it, and their lexicon."""

    candidates: tuple[PreparedCandidate, ...]
    index: FaissIndex
    lexicon: Lexicon
    """BM25 statistics of the whole pool: what the service's live lexicon holds for it."""

    @classmethod
    def build(
        cls,
        candidates: Iterable[PreparedCandidate],
        storage: Storage,
        lexicon: Lexicon | None = None,
    ) -> Pool:
        """Index the candidates (in id order) with the service's storage setting; `lexicon`
        defaults to the one fitted on them."""
        ordered = tuple(sorted(candidates, key=lambda c: c.id))
        if not ordered:
            raise InvalidInput("no stored candidate to retrieve from; load some: `ranker ingest`")
        vectors = np.stack([c.doc_vector for c in ordered])
        index = FaissIndex(dim=vectors.shape[1], storage=storage)
        index.add(np.arange(len(ordered), dtype=np.int64), vectors)
        return cls(ordered, index, lexicon if lexicon is not None else Lexicon.fit(ordered))

    def __len__(self) -> int:
        return len(self.candidates)

    def position(self) -> dict[str, int]:
        return {c.id: i for i, c in enumerate(self.candidates)}

    def retrieve(
        self, posting: PreparedPosting, n: int, among: np.ndarray | None = None
    ) -> tuple[list[PreparedCandidate], np.ndarray]:
        """The `n` nearest candidates (restricted to positions `among`) and their similarities."""
        ids, sims = self.index.search(posting.vector, n, among)
        return [self.candidates[int(i)] for i in ids], sims

    def reference(
        self, builder: FeatureBuilder, posting: PreparedPosting, retrieve_n: int
    ) -> ReferenceStats:
        """The posting's reference statistics as serving computes them: over the `retrieve_n`
        candidates it retrieves from the whole pool (no filters), with the pool's lexicon."""
        cands, _ = self.retrieve(posting, retrieve_n)
        return builder.reference(posting, cands, lexicon=self.lexicon)
