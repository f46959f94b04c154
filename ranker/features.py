"""Ranking features: one implementation for training and serving, compiled (`ranker.kernels`).

Each feature is a `FeatureSpec`: its name (a column of the model's input), what it means, and how
a recruiter reads its value. A posting and its candidates are first prepared once
(`ranker.prepared`); `FeatureBuilder.build` then turns one prepared posting and many prepared
candidates into a float32 matrix whose columns are `FEATURE_NAMES`, in that order. The model card
records the names and `FEATURES_VERSION`, and the service refuses a model whose names or version
differ.

Text, skills and locations are compared as `ranker.text` normalises them (`phrase_key`), so
"Zürich", "ZURICH" and "zurich" are one place and "Node.js" one skill; BM25 reads the corpus
statistics it is given (`ranker.lexicon`): the live pool's when serving, the training pool's in
training.

Query-relative similarity. Absolute cosine and BM25 levels depend on the corpus, the encoder and
the posting's wording, so a model fitted to one corpus's levels transfers badly. Each similarity
in `RELATIVE_TO` therefore also comes relative to the posting's *reference set*: the candidates
the service retrieved for it (the top `retrieve_n` of the pool by cosine, after filters). Serving
builds features for exactly that set, so by default the reference set is the candidates passed
in; training passes the `ReferenceStats` of the set serving would have retrieved for the posting,
so an applicant's row is the row the service would build for them when retrieved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

import ranker.kernels as kernels
from ranker.lexicon import TermStatistics
from ranker.prepared import PackedCandidates, PreparedCandidate, PreparedPosting, Scalar


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _years(y: float) -> str:
    return f"{y:g} year" + ("" if y == 1 else "s")


def _yes_no(yes: str, no: str) -> Callable[[float], str]:
    return lambda v: yes if v >= 0.5 else no


def _experience_gap(v: float) -> str:
    if v > 0:
        return f"{_years(v)} above the minimum experience"
    if v < 0:
        return f"{_years(-v)} below the minimum experience"
    return "exactly the minimum experience"


def _location_fit(v: float) -> str:
    if v >= 0.75:
        return "a location fit"
    return "a location fit through relocation" if v >= 0.25 else "no location fit"


def _z_words(what: str) -> Callable[[float], str]:
    def words(v: float) -> str:
        if abs(v) < 0.05:
            return f"{what} at the average of the candidates retrieved for the job"
        side = "above" if v > 0 else "below"
        return f"{what} {abs(v):.1f} standard deviations {side} the retrieved candidates' average"

    return words


def _gap_words(what: str, scale: Callable[[float], str]) -> Callable[[float], str]:
    def words(v: float) -> str:
        if v <= 0:
            return f"the best {what} of the candidates retrieved for the job"
        return f"{what} {scale(v)} below the best retrieved candidate's"

    return words


def _seniority_gap(v: float) -> str:
    levels = round(v)
    if not levels:
        return "a title at the posting's seniority"
    side = "above" if levels > 0 else "below"
    return f"a title {_plural(abs(levels), 'seniority level')} {side} the posting's"


@dataclass(frozen=True)
class FeatureSpec:
    """A named feature column: what it means, and how a recruiter reads one of its values."""

    name: str
    doc: str
    """What the column holds, for the model card and whoever reads the code."""
    in_words: Callable[[float], str]
    """A value in words for a recruiter: "1 required skill missing", not "required_missing = 1"."""
    location: bool = False
    """Whether the column is about location: a posting that names none gives every candidate the
    same value, so the reasons leave it out then."""


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec(
        "dense_cosine",
        "Cosine of the posting vector and the CV's document vector.",
        lambda v: f"CV similarity of {v:.2f}",
    ),
    FeatureSpec(
        "chunk_max_cosine",
        "Highest cosine of the posting vector and any single chunk of the CV.",
        lambda v: f"best-matching CV section similarity of {v:.2f}",
    ),
    FeatureSpec(
        "bm25",
        "BM25 of the posting's terms (title, description, skills) against the CV, divided by its "
        "upper bound sum(idf * (k1 + 1)) so postings of any length share one scale (0..1).",
        lambda v: f"keyword match of {v:.0%}",
    ),
    FeatureSpec(
        "bm25_required",
        "The same normalised BM25 with only the terms of the required skills as the query.",
        lambda v: f"keyword match on required skills of {v:.0%}",
    ),
    FeatureSpec(
        "required_coverage",
        "Share of the posting's required skills listed in the candidate's structured skills "
        "(1 when the posting requires none).",
        lambda v: f"{v:.0%} of the required skills listed",
    ),
    FeatureSpec(
        "required_missing",
        "Number of required skills absent from the structured skills.",
        lambda v: (
            _plural(round(v), "required skill") + " missing"
            if round(v)
            else "no required skill missing"
        ),
    ),
    FeatureSpec(
        "nice_coverage",
        "Share of the nice-to-have skills listed in the structured skills (0 when there are none).",
        lambda v: f"{v:.0%} of the nice-to-have skills listed",
    ),
    FeatureSpec(
        "required_text_coverage",
        "Share of the required skills whose every word occurs somewhere in the CV text: "
        "a mention, which is weaker evidence than the structured skills.",
        lambda v: f"{v:.0%} of the required skills mentioned in the CV",
    ),
    FeatureSpec(
        "years_experience",
        "The candidate's years of experience, clipped to 0..40.",
        lambda v: f"{_years(v)} of experience",
    ),
    FeatureSpec(
        "experience_gap",
        "Years of experience minus the posting's minimum, clipped to -10..20.",
        _experience_gap,
    ),
    FeatureSpec(
        "under_min_years",
        "1 when the candidate has fewer years than the minimum.",
        _yes_no("experience below the minimum", "experience meeting the minimum"),
    ),
    FeatureSpec(
        "same_location",
        "1 when candidate and posting name the same location (normalised words: case, accents "
        "and punctuation ignored); 0 when the posting names none.",
        _yes_no("same location as the job", "a location other than the job's"),
        location=True,
    ),
    FeatureSpec(
        "remote_fit",
        "1 when the posting is remote and the candidate accepts remote work.",
        _yes_no("remote work wanted and accepted", "no remote match"),
        location=True,
    ),
    FeatureSpec(
        "relocation_needed",
        "1 when the posting is on site at a named location other than the candidate's and the "
        "candidate is willing to relocate; 0 when the posting names no location.",
        _yes_no("willing to relocate for the job", "no relocation involved"),
        location=True,
    ),
    FeatureSpec(
        "location_fit",
        "1 same location or remote accepted, 0.5 relocation needed and accepted, 0 otherwise. "
        "An on-site posting that names no location has no requirement to miss: 1 for everyone "
        "(and the other location columns 0), so location does not reorder its candidates.",
        _location_fit,
        location=True,
    ),
    FeatureSpec(
        "title_overlap",
        "Jaccard overlap of the posting title's and the candidate title's words, "
        "seniority words left out.",
        lambda v: f"job title overlap of {v:.0%}",
    ),
    FeatureSpec(
        "seniority_gap",
        "Seniority level of the candidate's title minus the posting title's "
        "(intern 0, junior 1, unmarked 2, senior 3, lead/principal 4, head/director 5).",
        _seniority_gap,
    ),
    FeatureSpec(
        "skills_listed",
        "Number of structured skills the candidate lists.",
        lambda v: _plural(round(v), "skill") + " listed",
    ),
    FeatureSpec(
        "cv_log_length",
        "log(1 + number of words in the CV): a proxy of its detail.",
        lambda v: f"a CV of about {round(math.expm1(v))} words",
    ),
    FeatureSpec(
        "dense_cosine_z",
        "dense_cosine relative to the posting's reference set (the candidates retrieved for it): "
        "(value - the set's mean) / the set's standard deviation (floored at STD_FLOOR).",
        _z_words("CV similarity"),
    ),
    FeatureSpec(
        "dense_cosine_gap",
        "The best dense_cosine in the posting's reference set minus this candidate's (0 for the "
        "best).",
        _gap_words("CV similarity", lambda v: f"{v:.2f}"),
    ),
    FeatureSpec(
        "chunk_max_cosine_z",
        "chunk_max_cosine relative to the reference set: (value - mean) / standard deviation.",
        _z_words("best-matching CV section similarity"),
    ),
    FeatureSpec(
        "chunk_max_cosine_gap",
        "The best chunk_max_cosine in the reference set minus this candidate's.",
        _gap_words("best-matching CV section similarity", lambda v: f"{v:.2f}"),
    ),
    FeatureSpec(
        "bm25_z",
        "bm25 relative to the reference set: (value - mean) / standard deviation.",
        _z_words("keyword match"),
    ),
    FeatureSpec(
        "bm25_gap",
        "The best bm25 in the reference set minus this candidate's.",
        _gap_words("keyword match", lambda v: f"{v:.0%}"),
    ),
)
"""Every feature, in column order, with its meaning and its wording."""

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
"""Column names of `FeatureBuilder.build`, in order: the contract with every model version."""

FEATURES_BY_NAME: dict[str, FeatureSpec] = {f.name: f for f in FEATURES}

FEATURES_VERSION = 4
"""Bump whenever a feature's computation changes while its name stays (tokenizer, redaction,
clipping ...): a model trained on other semantics is then refused instead of served quietly.
3: a record keeps one skill per `phrase_key` (so a posting's embedded text lists each once).
4: BM25 reads the live pool's statistics (terms in fewer than 3 CVs score as unseen); the
query-relative similarity columns."""

RELATIVE_TO: tuple[str, ...] = ("dense_cosine", "chunk_max_cosine", "bm25")
"""Similarities that also come relative to the posting's reference set (`ReferenceStats`)."""
STD_FLOOR = 0.01
"""Least standard deviation a z-score divides by: the similarities live on 0..1 scales, and a
reference set whose values (nearly) all agree must not blow small differences up."""

# Every column the builder computes, in FEATURE_NAMES order first: the similarities in
# RELATIVE_TO are computed (the reference statistics need them) even where no model reads them.
Candidates = Sequence[PreparedCandidate] | PackedCandidates
"""What the builder takes: prepared candidates, or their arrays already packed (the catalog
packs the retrieved ones straight from its columns; see `as_packed`)."""


def as_packed(candidates: Candidates) -> PackedCandidates:
    """The packed arrays of `candidates`: as given, the ones a sequence carries (`.packed`, as
    the catalog's retrieved candidates do), or packed from the objects now."""
    if isinstance(candidates, PackedCandidates):
        return candidates
    packed = getattr(candidates, "packed", None)
    if isinstance(packed, PackedCandidates):
        return packed
    return PackedCandidates.of(candidates)


_COMPUTED: tuple[str, ...] = FEATURE_NAMES + tuple(n for n in RELATIVE_TO if n not in FEATURE_NAMES)
_COL = {name: i for i, name in enumerate(_COMPUTED)}
_RAW = [_COL[n] for n in RELATIVE_TO]
_KERNEL_COLS = np.array([_COL[n] for n in kernels.ABSOLUTE_COLUMNS], dtype=np.int64)


@dataclass(frozen=True)
class ReferenceStats:
    """Mean, standard deviation and best value of each `RELATIVE_TO` similarity over a posting's
    reference set: the candidates retrieved for it."""

    n: int
    """Candidates in the reference set."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    """Population standard deviation, floored at `STD_FLOOR`."""
    best: tuple[float, ...]

    @classmethod
    def of(cls, raw: np.ndarray) -> ReferenceStats:
        """The statistics of `raw` ((n, len(RELATIVE_TO)) similarities, one row per candidate).

        Each column is sorted before summing (float64), so the same set gives the same bits in
        any order: a training row and a served row then agree exactly.
        """
        values = np.sort(np.asarray(raw, dtype=np.float64), axis=0)
        if len(values) == 0:
            zeros = (0.0,) * len(RELATIVE_TO)
            return cls(0, zeros, (STD_FLOOR,) * len(RELATIVE_TO), zeros)
        mean = values.mean(axis=0)
        std = np.sqrt(((values - mean) ** 2).mean(axis=0))
        return cls(
            n=len(values),
            mean=tuple(mean.tolist()),
            std=tuple(np.maximum(std, STD_FLOOR).tolist()),
            best=tuple(values[-1].tolist()),
        )

    def as_dict(self) -> dict[str, object]:
        """JSON form (the decision log records it, so a logged row can be rebuilt)."""
        return {
            "n": self.n,
            **{
                name: {"mean": self.mean[i], "std": self.std[i], "best": self.best[i]}
                for i, name in enumerate(RELATIVE_TO)
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ReferenceStats:
        cols = [d[name] for name in RELATIVE_TO]
        return cls(
            n=int(d["n"]),  # type: ignore[call-overload]
            mean=tuple(float(c["mean"]) for c in cols),  # type: ignore[index]
            std=tuple(float(c["std"]) for c in cols),  # type: ignore[index]
            best=tuple(float(c["best"]) for c in cols),  # type: ignore[index]
        )


class FeatureBuilder:
    """Builds the feature matrix of one posting against many prepared candidates.

    `lexicon` is the BM25 statistics used when a call names none: a version's builder holds the
    training pool's (`lexicon.json`); serving passes the live pool's to every call.
    """

    def __init__(self, lexicon: TermStatistics) -> None:
        self.lexicon = lexicon
        self.feature_names = FEATURE_NAMES

    def build(
        self,
        posting: PreparedPosting,
        candidates: Candidates,
        reference: ReferenceStats | None = None,
        *,
        lexicon: TermStatistics | None = None,
    ) -> np.ndarray:
        """(len(candidates), len(FEATURE_NAMES)) float32, columns in `FEATURE_NAMES` order.

        `reference`: the statistics of the posting's reference set; None when `candidates` are
        that set (serving: they are what was retrieved). `lexicon`: BM25 statistics, by default
        the builder's own.
        """
        return self.build_with_reference(posting, candidates, reference, lexicon=lexicon)[0]

    def reference(
        self,
        posting: PreparedPosting,
        candidates: Candidates,
        *,
        lexicon: TermStatistics | None = None,
    ) -> ReferenceStats:
        """The `ReferenceStats` of `candidates` as the posting's reference set."""
        return ReferenceStats.of(self._absolute(posting, candidates, lexicon)[:, _RAW])

    def build_with_reference(
        self,
        posting: PreparedPosting,
        candidates: Candidates,
        reference: ReferenceStats | None = None,
        *,
        lexicon: TermStatistics | None = None,
    ) -> tuple[np.ndarray, ReferenceStats]:
        """`build`, and the reference statistics its relative columns used."""
        x = self._absolute(posting, candidates, lexicon)
        raw = x[:, _RAW]
        ref = reference if reference is not None else ReferenceStats.of(raw)
        if len(x):
            mean, std, best = np.asarray(ref.mean), np.asarray(ref.std), np.asarray(ref.best)
            values = raw.astype(np.float64)
            z = (values - mean) / std
            gap = best - values
            for i, name in enumerate(RELATIVE_TO):
                if f"{name}_z" in _COL:
                    x[:, _COL[f"{name}_z"]] = z[:, i]
                if f"{name}_gap" in _COL:
                    x[:, _COL[f"{name}_gap"]] = gap[:, i]
        if len(_COMPUTED) > len(FEATURE_NAMES):
            x = np.ascontiguousarray(x[:, : len(FEATURE_NAMES)])
        return x, ref

    def _absolute(
        self,
        posting: PreparedPosting,
        candidates: Candidates,
        lexicon: TermStatistics | None,
    ) -> np.ndarray:
        """Every computed column (`_COMPUTED`) but the relative ones, which stay 0: one compiled
        pass over the candidates (`ranker.kernels.absolute_columns`)."""
        n = len(candidates)
        x = np.zeros((n, len(_COMPUTED)), dtype=np.float32)
        if n == 0:
            return x
        p = posting.posting
        packed = as_packed(candidates)
        _check_shapes(packed, posting)
        lexicon = lexicon or self.lexicon
        # BM25 over the posting's terms: each term's idf, and the bound each query divides by.
        idf = lexicon.idf_of_hashes(posting.term_hashes.tolist())
        k1 = lexicon.k1
        bounds = [float(idf[m].sum()) * (k1 + 1.0) for m in (posting.in_text, posting.in_required)]
        slots = posting.required_slots if posting.terms else ()
        slot_starts = np.zeros(len(slots) + 1, dtype=np.int64)
        slot_starts[1:] = np.cumsum([len(s) for s in slots])
        u64 = np.uint64
        kernels.absolute_columns(
            x,
            _KERNEL_COLS,
            np.ascontiguousarray(packed.vectors, dtype=np.float32),
            np.ascontiguousarray(posting.vector, dtype=np.float32),
            np.ascontiguousarray(packed.term_hashes, dtype=u64),
            np.ascontiguousarray(packed.term_counts, dtype=np.float32),  # whole counts: exact
            np.ascontiguousarray(packed.tags, dtype=u64),
            np.ascontiguousarray(packed.scalars, dtype=np.float64),
            np.ascontiguousarray(posting.term_hashes, dtype=u64),
            idf,
            np.ascontiguousarray(posting.in_text, dtype=np.bool_),
            np.ascontiguousarray(posting.in_required, dtype=np.bool_),
            np.array([w for s in slots for w in s], dtype=np.int64),
            slot_starts,
            np.ascontiguousarray(posting.required_hashes, dtype=u64),
            np.ascontiguousarray(posting.nice_hashes, dtype=u64),
            np.ascontiguousarray(posting.title_hashes, dtype=u64),
            u64(posting.location_hash or 0),
            np.array([p.min_years, float(p.remote), posting.seniority], dtype=np.float64),
            np.array([k1, lexicon.b, lexicon.avgdl, *bounds], dtype=np.float64),
        )
        return x


def _check_shapes(packed: PackedCandidates, posting: PreparedPosting) -> None:
    """The packed arrays hold what their scalars say, in the posting's dimension: the compiled
    loop trusts these counts to walk the arrays (it does not check bounds)."""
    s = packed.scalars
    want = {
        "vector rows": (int(np.sum(s[:, Scalar.CHUNKS] + 1)), len(packed.vectors)),
        "terms": (int(np.sum(s[:, Scalar.TERMS])), len(packed.term_hashes)),
        "term counts": (int(np.sum(s[:, Scalar.TERMS])), len(packed.term_counts)),
        "tags": (int(np.sum(s[:, Scalar.SKILLS] + s[:, Scalar.TITLE] + 1)), len(packed.tags)),
    }
    for what, (expected, held) in want.items():
        if expected != held:
            raise ValueError(
                f"packed candidates hold {held} {what} where their scalars say {expected}"
            )
    if packed.vectors.ndim != 2 or packed.vectors.shape[1] != len(posting.vector):
        raise ValueError(
            f"candidate vectors of shape {packed.vectors.shape} against a posting vector of "
            f"{len(posting.vector)} dimensions: encode both with the same encoder"
        )
