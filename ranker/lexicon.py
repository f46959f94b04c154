"""BM25 corpus statistics: the live pool's (served), and a frozen copy recorded with each version.

Serving scores BM25 with the statistics of the candidates it retrieves from: `LiveLexicon` counts
document frequencies and lengths over every stored candidate and follows upserts and erasures, so
a word the training CVs lacked gets the idf it has in the pool now, not the maximum. Training
computes the same statistics over its pool (every stored candidate at training time) as a
`Lexicon`, which is also saved as `lexicon.json` with the version to reproduce its training
features. Both apply one rule to rare terms: a term in fewer than `MIN_DF` CVs scores as unseen,
so nothing depends on a word only one or two people wrote (a name, an address fragment), and the
saved lexicon need not hold such words.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ranker.domain import Candidate
from ranker.errors import InvalidInput
from ranker.prepared import PreparedCandidate, Scalar, candidate_text
from ranker.text import term_hash, tokenize

MIN_DF = 3
"""Terms found in fewer CVs than this score as unseen, and a saved lexicon leaves them out."""
K1 = 1.2
B = 0.75


def bm25_idf(n_docs: int, df: int) -> float:
    """Lucene's BM25 idf: never negative, even for a term in every document."""
    return math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


class TermStatistics(Protocol):
    """What BM25 reads of a corpus: the features take any of `Lexicon`, `LiveLexicon`,
    `LexiconView`."""

    @property
    def n_docs(self) -> int: ...
    @property
    def avgdl(self) -> float: ...
    @property
    def k1(self) -> float: ...
    @property
    def b(self) -> float: ...
    def idf_of_hashes(self, hashes: Iterable[int]) -> np.ndarray: ...


@dataclass(frozen=True)
class Lexicon:
    """BM25 corpus statistics of a fixed set of CVs: the training pool's, saved with the version.

    Saved as `lexicon.json` next to the model, so the statistics its training features used can
    be read back (serving uses `LiveLexicon` instead). Only terms found in at least `min_df` CVs
    are kept: a term in one or two CVs is mostly personal (a name, an address fragment) and would
    outlive the candidate's erasure in every model version; BM25 scores a dropped term like an
    unseen one, as `LiveLexicon` does, so the saved statistics reproduce the training features.
    """

    n_docs: int
    avgdl: float
    df: dict[str, int]
    k1: float = K1
    b: float = B
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
        return bm25_idf(self.n_docs, df if df >= self.min_df else 0)

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


@dataclass(frozen=True)
class LexiconView:
    """The live pool's statistics for one query's terms, frozen when the request retrieved.

    A ranking builds its features outside the pipeline's lock; this copy keeps them consistent
    with the pool the request searched, whatever writes happen meanwhile.
    """

    n_docs: int
    avgdl: float
    idf_by_hash: dict[int, float]
    unseen_idf: float
    k1: float = K1
    b: float = B

    def idf_of_hashes(self, hashes: Iterable[int]) -> np.ndarray:
        return np.array(
            [self.idf_by_hash.get(h, self.unseen_idf) for h in hashes], dtype=np.float64
        )


class LiveLexicon:
    """BM25 statistics of the candidates held now, kept in step with every upsert and erasure.

    Counts are by `term_hash` (the prepared candidates hold no words), and a term's entry goes
    when the last CV holding it does, so an erased candidate's words stop counting at once. Terms
    in fewer than `min_df` CVs score as unseen, as in a saved `Lexicon`. Not thread-safe: the
    pipeline's lock guards it, and a request reads it through `view`.
    """

    def __init__(self, min_df: int = MIN_DF, k1: float = K1, b: float = B) -> None:
        self.min_df = min_df
        self.k1 = k1
        self.b = b
        self._df: dict[int, int] = {}
        self._n = 0
        self._length = 0.0

    @property
    def n_docs(self) -> int:
        return self._n

    @property
    def avgdl(self) -> float:
        """Average CV length in words (1 when the pool is empty, so BM25 stays defined)."""
        return self._length / self._n if self._n else 1.0

    def df_of_hash(self, h: int) -> int:
        """CVs holding the term now (rare ones included: the `min_df` rule applies to idf)."""
        return self._df.get(h, 0)

    def __len__(self) -> int:
        """Distinct terms counted."""
        return len(self._df)

    @property
    def total_length(self) -> float:
        """Words in all CVs counted."""
        return self._length

    def add(self, candidates: Sequence[PreparedCandidate]) -> None:
        if candidates:
            self._change(
                np.concatenate([c.term_hashes for c in candidates]),
                len(candidates),
                sum(float(c.numbers[Scalar.DOC_LEN]) for c in candidates),
                +1,
            )

    def remove(self, candidates: Sequence[PreparedCandidate]) -> None:
        if candidates:
            self._change(
                np.concatenate([c.term_hashes for c in candidates]),
                len(candidates),
                sum(float(c.numbers[Scalar.DOC_LEN]) for c in candidates),
                -1,
            )

    def remove_counts(self, term_hashes: np.ndarray, n_docs: int, length: float) -> None:
        """Take out `n_docs` CVs given by their distinct terms, concatenated, and total length."""
        if n_docs:
            self._change(term_hashes, n_docs, length, -1)

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """The document frequencies as arrays (term hashes, counts), to save them."""
        return (
            np.fromiter(self._df.keys(), dtype=np.uint64, count=len(self._df)),
            np.fromiter(self._df.values(), dtype=np.int64, count=len(self._df)),
        )

    def restore(self, df: tuple[np.ndarray, np.ndarray], n_docs: int, length: float) -> None:
        """Take the statistics saved with `counts` (and the totals) as they were."""
        self._df = dict(zip(df[0].tolist(), df[1].tolist(), strict=True))
        self._n = n_docs
        self._length = length

    def _change(self, term_hashes: np.ndarray, n_docs: int, length: float, sign: int) -> None:
        # One count per distinct term of the batch: a burst of upserts costs a pass over its
        # vocabulary, not over every (CV, term) pair.
        terms, counts = np.unique(term_hashes, return_counts=True)
        df = self._df
        for h, d in zip(terms.tolist(), counts.tolist(), strict=True):
            left = df.get(h, 0) + sign * d
            if left > 0:
                df[h] = left
            else:
                df.pop(h, None)
        self._n += sign * n_docs
        self._length += sign * length

    def _idf(self, df: int) -> float:
        return bm25_idf(max(self._n, 1), df if df >= self.min_df else 0)

    def idf_of_hashes(self, hashes: Iterable[int]) -> np.ndarray:
        return np.array([self._idf(self._df.get(h, 0)) for h in hashes], dtype=np.float64)

    def view(self, hashes: Iterable[int]) -> LexiconView:
        """The statistics of the terms `hashes` (a query's) as they are now."""
        return LexiconView(
            n_docs=self._n,
            avgdl=self.avgdl,
            idf_by_hash={h: self._idf(self._df.get(h, 0)) for h in hashes},
            unseen_idf=self._idf(0),
            k1=self.k1,
            b=self.b,
        )
