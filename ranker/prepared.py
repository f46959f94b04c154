"""Prepared records: what the features read from one candidate or posting, computed once.

A candidate is prepared when it is stored or loaded, a posting per request (or at load): the text
tokenised and redacted, term counts hashed, skills and location keyed with `phrase_key`, the
title's words and seniority level read. `ranker.features.FeatureBuilder` then only gathers.

Protected attributes (sex, age, ethnicity, disability, name, photo) are not part of `Candidate`,
so nothing prepared here can carry them. CV free text can still carry direct identifiers, so
`candidate_text` (the one text every lexical feature, the lexicon and the embedding read) passes
it through `ranker.redaction.redact` first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from ranker.domain import Candidate, Posting
from ranker.errors import InvalidInput
from ranker.redaction import redact
from ranker.text import STOPWORDS, phrase_key, skill_keys, term_hash, tokenize

# Title words that mark a seniority level (the `seniority_gap` feature); a title without one is
# `_DEFAULT_SENIORITY`.
_SENIORITY = {
    "intern": 0,
    "internship": 0,
    "trainee": 1,
    "junior": 1,
    "jr": 1,
    "graduate": 1,
    "assistant": 1,
    "associate": 1,
    "entry": 1,
    "senior": 3,
    "sr": 3,
    "experienced": 3,
    "lead": 4,
    "principal": 4,
    "staff": 4,
    "chief": 5,
    "head": 5,
    "director": 5,
    "vp": 5,
}
_DEFAULT_SENIORITY = 2


def _hashes(terms: Iterable[str]) -> np.ndarray:
    return np.fromiter((term_hash(t) for t in terms), dtype=np.uint64)


def _title_words(title: str) -> tuple[frozenset[str], int]:
    words = [w for w in tokenize(title) if w not in STOPWORDS]
    levels = [_SENIORITY[w] for w in words if w in _SENIORITY]
    level = max(levels) if levels else _DEFAULT_SENIORITY
    return frozenset(w for w in words if w not in _SENIORITY), level


def posting_text(p: Posting) -> str:
    """The text embedded for a posting: title, description and the skills it asks for."""
    parts = [p.title, p.description]
    if p.required_skills:
        parts.append("Required skills: " + ", ".join(p.required_skills) + ".")
    if p.nice_skills:
        parts.append("Nice to have: " + ", ".join(p.nice_skills) + ".")
    return "\n".join(parts)


def candidate_text(c: Candidate) -> str:
    """The text embedded and counted for a candidate: the current title, then the redacted CV.

    Redaction (`ranker.redaction.redact`) drops labelled personal-data lines, e-mails, URLs,
    phone numbers and dates of birth, so they reach neither the embedding nor any lexical feature.
    """
    cv = redact(c.cv_text)
    if c.title and c.title.lower() not in cv[:200].lower():
        return f"{c.title}\n{cv}"
    return cv


class Scalar(IntEnum):
    """Leading columns of `PreparedCandidate.numbers`, in order (its term counts follow them).

    `FeatureBuilder.build` gathers data from hundreds of candidates whose arrays are scattered in
    memory and, after a FAISS scan, out of cache: each candidate therefore holds few packed arrays
    (one float32, two uint64, one float64), so a build pays a few cache misses per candidate rather
    than one per attribute.
    """

    YEARS = 0
    REMOTE = 1
    RELOCATE = 2
    SENIORITY = 3
    DOC_LEN = 4
    CHUNKS = 5
    TERMS = 6
    SKILLS = 7
    TITLE = 8


N_SCALARS = len(Scalar)
"""Where the term counts start in `PreparedCandidate.numbers`."""


@dataclass(frozen=True, eq=False, slots=True)
class PreparedCandidate:
    """Everything the features need from one candidate, computed once at ingest or load.

    Stored as a few packed arrays (see `Scalar`); the properties are views into them.
    """

    candidate: Candidate
    vectors: np.ndarray
    """(1 + k, dim) float32 unit rows: the whole CV's vector, then its k >= 1 chunks' vectors."""
    term_hashes: np.ndarray
    """Sorted unique `term_hash` of the CV's words (uint64)."""
    tags: np.ndarray
    """uint64: `skill_hashes`, then `title_hashes`, then `location_hash`."""
    numbers: np.ndarray
    """float64: the per-candidate `Scalar` columns, then `term_counts`."""

    @property
    def id(self) -> str:
        return self.candidate.id

    @property
    def doc_vector(self) -> np.ndarray:
        """(dim,) float32 unit vector of the whole CV."""
        return self.vectors[0]

    @property
    def chunk_vectors(self) -> np.ndarray:
        """(k, dim) float32 unit vectors of the CV's chunks, k >= 1."""
        return self.vectors[1:]

    @property
    def term_counts(self) -> np.ndarray:
        """How often each of `term_hashes` occurs (float64)."""
        return self.numbers[N_SCALARS:]

    @property
    def skill_hashes(self) -> np.ndarray:
        """`term_hash` of each structured skill's `phrase_key` (uint64)."""
        return self.tags[: int(self.numbers[Scalar.SKILLS])]

    @property
    def title_hashes(self) -> np.ndarray:
        """`term_hash` of each title word, seniority words left out (uint64)."""
        n_skills = int(self.numbers[Scalar.SKILLS])
        return self.tags[n_skills : n_skills + int(self.numbers[Scalar.TITLE])]

    @property
    def location_hash(self) -> int:
        """`term_hash` of the location's `phrase_key` (0 when none)."""
        return int(self.tags[-1])


def ids_of(candidates: Sequence[PreparedCandidate]) -> list[str]:
    """The ids of `candidates`, in order: the ones a packed sequence carries (`.ids`, without
    making each candidate an object), else each one's."""
    ids = getattr(candidates, "ids", None)
    return list(ids) if ids is not None else [c.id for c in candidates]


@dataclass(frozen=True, eq=False)
class PackedCandidates:
    """Many candidates' prepared arrays, concatenated: what `FeatureBuilder` reads.

    Built from `PreparedCandidate`s (`of`) or gathered straight from the catalog's columns for
    the retrieved candidates only, so a ranking creates no per-candidate object.
    """

    ids: list[str]
    vectors: np.ndarray
    """(sum of vec_rows, dim) float32: each candidate's doc vector, then its chunk vectors."""
    term_hashes: np.ndarray
    """uint64, each candidate's `term_hashes` in turn (`scalars[:, TERMS]` of them)."""
    term_counts: np.ndarray
    """float64 or float32, aligned with `term_hashes`."""
    tags: np.ndarray
    """uint64, each candidate's `tags` in turn."""
    scalars: np.ndarray
    """(n, N_SCALARS) float64: the `Scalar` columns."""

    def __len__(self) -> int:
        return len(self.ids)

    def plus(self, other: PackedCandidates) -> PackedCandidates:
        """These candidates, then `other`'s."""
        if not len(other):
            return self
        if not len(self):
            return other
        return PackedCandidates(
            ids=self.ids + other.ids,
            vectors=np.concatenate([self.vectors, other.vectors]),
            term_hashes=np.concatenate([self.term_hashes, other.term_hashes]),
            term_counts=np.concatenate([self.term_counts, other.term_counts]),
            tags=np.concatenate([self.tags, other.tags]),
            scalars=np.concatenate([self.scalars, other.scalars]),
        )

    @classmethod
    def of(cls, candidates: Sequence[PreparedCandidate]) -> PackedCandidates:
        """The arrays of `candidates`, concatenated in order (one pass over the objects)."""
        vec_list, hash_list, tag_list, num_list = [], [], [], []
        for c in candidates:
            vec_list.append(c.vectors)
            hash_list.append(c.term_hashes)
            tag_list.append(c.tags)
            num_list.append(c.numbers)
        n = len(num_list)
        if not n:
            empty = np.zeros(0, dtype=np.uint64)
            return cls(
                [],
                np.zeros((0, 1), np.float32),
                empty,
                np.zeros(0),
                empty,
                np.zeros((0, N_SCALARS)),
            )
        flat = np.concatenate(num_list)
        lengths = np.fromiter(map(len, num_list), dtype=np.intp, count=n)
        starts = np.zeros(n, dtype=np.intp)
        starts[1:] = np.cumsum(lengths[:-1])
        is_count = np.ones(len(flat), dtype=bool)
        is_count[(starts[:, None] + np.arange(N_SCALARS)).ravel()] = False
        return cls(
            ids=[c.id for c in candidates],
            vectors=np.concatenate(vec_list),
            term_hashes=np.concatenate(hash_list),
            term_counts=flat[is_count],
            tags=np.concatenate(tag_list),
            scalars=flat[starts[:, None] + np.arange(N_SCALARS)],
        )


@dataclass(frozen=True, eq=False)
class PreparedPosting:
    """Everything the features need from one posting, computed once per request or at load."""

    posting: Posting
    vector: np.ndarray
    """(dim,) float32 unit vector of `posting_text`."""
    terms: tuple[str, ...]
    """Lexical query: the posting's non-stop-word terms and the words of its required skills,
    ordered by `term_hash`."""
    term_hashes: np.ndarray
    """Sorted `term_hash` of `terms` (uint64)."""
    in_text: np.ndarray
    """Which `terms` occur in the posting text (bool): the BM25 query."""
    in_required: np.ndarray
    """Which `terms` are words of a required skill (bool)."""
    required_slots: tuple[tuple[int, ...], ...]
    """For each required skill, the indices of its words in `terms`."""
    required_hashes: np.ndarray
    nice_hashes: np.ndarray
    title_hashes: np.ndarray
    seniority: int
    location_hash: int

    @property
    def id(self) -> str:
        return self.posting.id


def _unit(v: np.ndarray, what: str, ndim: int) -> np.ndarray:
    arr = np.ascontiguousarray(v, dtype=np.float32)
    if arr.ndim != ndim or arr.size == 0:
        raise InvalidInput(f"{what} must be a non-empty {ndim}-d array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInput(f"{what} contains NaN or infinite values; re-encode the text")
    return arr


@dataclass(frozen=True)
class CandidateText:
    """What the features read of a candidate's text alone (CV and title): term counts, length,
    title words and seniority. Two records with the same CV and title share it."""

    term_hashes: np.ndarray
    term_counts: np.ndarray
    doc_len: int
    title_hashes: np.ndarray
    seniority: int


def candidate_text_terms(c: Candidate) -> CandidateText:
    """Tokenise a candidate's redacted text and title once (the costly part of preparing it)."""
    tokens = tokenize(candidate_text(c))
    counts = Counter(tokens)
    hashes = _hashes(counts)
    tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    order = np.argsort(hashes)
    title_words, seniority = _title_words(c.title)
    return CandidateText(
        hashes[order], tf[order], len(tokens), _hashes(sorted(title_words)), seniority
    )


def prepare_candidate(
    c: Candidate,
    doc_vector: np.ndarray,
    chunk_vectors: np.ndarray,
    text: CandidateText | None = None,
) -> PreparedCandidate:
    """Precompute a candidate's model-independent parts (term counts, skills, title, location).

    `text`: the candidate's `candidate_text_terms` when already known (a copy with the same CV
    and title), so it is not tokenised again.
    """
    doc = _unit(doc_vector, f"candidate {c.id!r} doc_vector", 1)
    chunks = _unit(chunk_vectors, f"candidate {c.id!r} chunk_vectors", 2)
    if chunks.shape[1] != doc.shape[0]:
        raise InvalidInput(
            f"candidate {c.id!r} chunk vectors are {chunks.shape[1]}-d but its doc vector is "
            f"{doc.shape[0]}-d; encode both with the same encoder"
        )
    t = text if text is not None else candidate_text_terms(c)
    hashes = t.term_hashes
    skills = skill_keys(c.skills)
    numbers = np.zeros(N_SCALARS + len(hashes), dtype=np.float64)
    numbers[[Scalar.YEARS, Scalar.REMOTE, Scalar.RELOCATE, Scalar.SENIORITY, Scalar.DOC_LEN]] = (
        c.years_experience,
        c.remote_ok,
        c.willing_to_relocate,
        t.seniority,
        t.doc_len,
    )
    numbers[[Scalar.CHUNKS, Scalar.TERMS, Scalar.SKILLS, Scalar.TITLE]] = (
        len(chunks),
        len(hashes),
        len(skills),
        len(t.title_hashes),
    )
    numbers[N_SCALARS:] = t.term_counts
    location = phrase_key(c.location)
    tags = np.concatenate(
        [
            _hashes(skills),
            t.title_hashes,
            np.array([term_hash(location) if location else 0], dtype=np.uint64),
        ]
    )
    return PreparedCandidate(
        candidate=c,
        vectors=np.concatenate([doc[None, :], chunks]),
        term_hashes=hashes,
        tags=tags,
        numbers=numbers,
    )


def prepare_posting(p: Posting, vector: np.ndarray) -> PreparedPosting:
    """Precompute a posting's parts: its lexical query, skills, title and location."""
    vec = _unit(vector, f"posting {p.id!r} vector", 1)
    text_terms = {t for t in tokenize(posting_text(p)) if t not in STOPWORDS}
    skill_words = [tuple(tokenize(s)) or (s,) for s in p.required_skills]
    terms = sorted(text_terms.union(*skill_words), key=term_hash)
    slot = {t: i for i, t in enumerate(terms)}
    title_words, seniority = _title_words(p.title)
    location = phrase_key(p.location)
    return PreparedPosting(
        posting=p,
        vector=vec,
        terms=tuple(terms),
        term_hashes=_hashes(terms),
        in_text=np.array([t in text_terms for t in terms], dtype=bool),
        in_required=np.isin(np.arange(len(terms)), [slot[w] for ws in skill_words for w in ws]),
        required_slots=tuple(tuple(slot[w] for w in ws) for ws in skill_words),
        required_hashes=_hashes(skill_keys(p.required_skills)),
        nice_hashes=_hashes(skill_keys(p.nice_skills)),
        title_hashes=_hashes(sorted(title_words)),
        seniority=seniority,
        location_hash=term_hash(location) if location else 0,
    )
