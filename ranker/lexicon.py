"""The BM25 lexicon: corpus statistics of the training CVs, frozen with each model version."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ranker.domain import Candidate
from ranker.errors import InvalidInput
from ranker.prepared import PreparedCandidate, candidate_text
from ranker.text import term_hash, tokenize

MIN_DF = 3
"""A lexicon keeps only terms found in at least this many CVs (see `Lexicon`)."""


@dataclass(frozen=True)
class Lexicon:
    """BM25 corpus statistics of the training candidates, frozen with the model version.

    Saved as `lexicon.json` next to the model, so serving scores BM25 with the same idf and average
    document length the model was trained on, whatever the store holds later. Only terms found in
    at least `min_df` CVs are kept: a term in one or two CVs is mostly personal (a name, an
    address fragment) and would outlive the candidate's erasure in every model version; BM25
    scores a dropped term like an unseen one, which its idf nearly is anyway.
    """

    n_docs: int
    avgdl: float
    df: dict[str, int]
    k1: float = 1.2
    b: float = 0.75
    min_df: int = 1
    """Terms in fewer CVs than this were left out when the lexicon was fitted."""
    _idf_by_hash: dict[int, float] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.n_docs < 1 or not self.avgdl > 0:
            raise InvalidInput("a lexicon needs at least one document with words; fit it on CVs")
        self._idf_by_hash.update({term_hash(t): self._idf(d) for t, d in self.df.items()})

    def _idf(self, df: int) -> float:
        # Lucene's BM25 idf: never negative, even for a term in every document.
        return math.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5))

    def idf(self, terms: Sequence[str]) -> np.ndarray:
        """idf of each term; a term never seen in training gets the idf of document frequency 0."""
        return self.idf_of_hashes([term_hash(t) for t in terms])

    def idf_of_hashes(self, hashes: Iterable[int]) -> np.ndarray:
        """`idf` of terms given by their `term_hash` (no re-hashing: `build` runs per request)."""
        unseen = self._idf(0)
        return np.array([self._idf_by_hash.get(h, unseen) for h in hashes], dtype=np.float64)

    @classmethod
    def fit(
        cls, candidates: Iterable[Candidate | PreparedCandidate], min_df: int = MIN_DF
    ) -> Lexicon:
        """Document frequencies (of terms in >= `min_df` CVs) and average length over the CVs."""
        df: Counter[str] = Counter()
        n = 0
        total = 0
        for item in candidates:
            c = item.candidate if isinstance(item, PreparedCandidate) else item
            tokens = tokenize(candidate_text(c))
            df.update(set(tokens))
            n += 1
            total += len(tokens)
        if n == 0:
            raise InvalidInput("cannot fit a lexicon on no candidates; load candidates first")
        kept = {t: d for t, d in sorted(df.items()) if d >= min_df}
        return cls(n_docs=n, avgdl=total / n, df=kept, min_df=min_df)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": 1,
                "n_docs": self.n_docs,
                "avgdl": self.avgdl,
                "k1": self.k1,
                "b": self.b,
                "min_df": self.min_df,
                "df": self.df,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Lexicon:
        try:
            d = json.loads(text)
            return cls(
                n_docs=int(d["n_docs"]),
                avgdl=float(d["avgdl"]),
                df={str(k): int(v) for k, v in d["df"].items()},
                k1=float(d["k1"]),
                b=float(d["b"]),
                min_df=int(d.get("min_df", 1)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InvalidInput(
                f"lexicon is not valid ({e}); retrain the model version: `ranker train`"
            ) from e
