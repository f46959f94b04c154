"""Ranking features: one implementation shared by training and serving, vectorised over candidates.

A posting and a candidate are first *prepared* once (text tokenised, term counts hashed, skills
normalised); `FeatureBuilder.build` then turns one posting and many prepared candidates into a
float32 matrix whose columns are `FEATURE_NAMES`, in that order. The model card records the names,
and the service refuses a model whose names differ.

Protected attributes (sex, age, ethnicity, disability, name, photo) are not part of `Candidate`,
so no feature can read them; `tests/ranker/test_features.py` keeps it that way. CV free text can
still carry direct identifiers, so `candidate_text` (the one text every lexical feature, the
lexicon and the embedding read) passes it through `ranker.redaction.redact` first.

Text is compared after one Unicode normalisation (`normalize_text`): NFKC, case folding, Latin /
Greek / Cyrillic accents stripped (as the uncased encoder does), CJK ideographs and kana as
one token each. Skills and locations are compared by the same normalised tokens, so "Zürich",
"ZURICH" and "zurich" are one place and "Node.js" one skill.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ranker.domain import Candidate, Posting
from ranker.errors import InvalidInput
from ranker.redaction import redact


@dataclass(frozen=True)
class FeatureSpec:
    """A named feature column and what it means."""

    name: str
    doc: str


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("dense_cosine", "Cosine of the posting vector and the CV's document vector."),
    FeatureSpec(
        "chunk_max_cosine", "Highest cosine of the posting vector and any single chunk of the CV."
    ),
    FeatureSpec(
        "bm25",
        "BM25 of the posting's terms (title, description, skills) against the CV, divided by its "
        "upper bound sum(idf * (k1 + 1)) so postings of any length share one scale (0..1).",
    ),
    FeatureSpec(
        "bm25_required",
        "The same normalised BM25 with only the terms of the required skills as the query.",
    ),
    FeatureSpec(
        "required_coverage",
        "Share of the posting's required skills listed in the candidate's structured skills "
        "(1 when the posting requires none).",
    ),
    FeatureSpec("required_missing", "Number of required skills absent from the structured skills."),
    FeatureSpec(
        "nice_coverage",
        "Share of the nice-to-have skills listed in the structured skills (0 when there are none).",
    ),
    FeatureSpec(
        "required_text_coverage",
        "Share of the required skills whose every word occurs somewhere in the CV text: "
        "a mention, which is weaker evidence than the structured skills.",
    ),
    FeatureSpec("years_experience", "The candidate's years of experience, clipped to 0..40."),
    FeatureSpec(
        "experience_gap", "Years of experience minus the posting's minimum, clipped to -10..20."
    ),
    FeatureSpec("under_min_years", "1 when the candidate has fewer years than the minimum."),
    FeatureSpec(
        "same_location",
        "1 when candidate and posting name the same location (normalised words: case, accents "
        "and punctuation ignored); 0 when the posting names none.",
    ),
    FeatureSpec(
        "remote_fit", "1 when the posting is remote and the candidate accepts remote work."
    ),
    FeatureSpec(
        "relocation_needed",
        "1 when the posting is on site at a named location other than the candidate's and the "
        "candidate is willing to relocate; 0 when the posting names no location.",
    ),
    FeatureSpec(
        "location_fit",
        "1 same location or remote accepted, 0.5 relocation needed and accepted, 0 otherwise. "
        "An on-site posting that names no location has no requirement to miss: 1 for everyone "
        "(and the other location columns 0), so location does not reorder its candidates.",
    ),
    FeatureSpec(
        "title_overlap",
        "Jaccard overlap of the posting title's and the candidate title's words, "
        "seniority words left out.",
    ),
    FeatureSpec(
        "seniority_gap",
        "Seniority level of the candidate's title minus the posting title's "
        "(intern 0, junior 1, unmarked 2, senior 3, lead/principal 4, head/director 5).",
    ),
    FeatureSpec("skills_listed", "Number of structured skills the candidate lists."),
    FeatureSpec("cv_log_length", "log(1 + number of words in the CV): a proxy of its detail."),
)
"""Every feature, in column order, with its meaning."""

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

FEATURES_VERSION = 2
"""Bump whenever a feature's computation changes while its name stays (tokenizer, redaction,
clipping ...): a model trained on other semantics is then refused instead of served quietly."""
"""Column names of `FeatureBuilder.build`, in order: the contract with every model version."""

_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}

# Words that say nothing about fit. Hand-written (and short) rather than taken from a library:
# BM25's idf already discounts common words; this list only keeps the query small and fast.
_STOPWORDS = frozenset(
    """a an and are as at be by for from has have in is it its of on or our that the their this to
    we will with you your who what which while would can could should into across within over about
    were was been being also such other more most very than then there these those they them
    i my me he she his her us""".split()
)


def _mark_class() -> str:
    """Combining marks (Mn, Mc, Me) of the Basic Multilingual Plane as a regex class body.

    Python's `re` has no `\\p{M}`, and its `\\w` leaves marks out, which would cut Indic words at
    every vowel sign ("हिन्दी" -> "ह", "न", "द"); built once at import (~20 ms).
    """
    ranges: list[str] = []
    start: int | None = None
    for cp in range(0x300, 0x10000):
        is_mark = unicodedata.category(chr(cp))[0] == "M"
        if is_mark and start is None:
            start = cp
        elif not is_mark and start is not None:
            ranges.append(f"\\u{start:04x}-\\u{cp - 1:04x}")
            start = None
    return "".join(ranges)


_MARKS = _mark_class()
# A word starts with a letter or digit and may go on with letters, digits, marks, "_", "+", "#",
# and dot-joined parts: "c++", "c#", "node.js", "3.5" and "हिन्दी" stay whole.
_TOKEN_RE = re.compile(rf"[^\W_][\w{_MARKS}+#]*(?:\.[^\W_][\w{_MARKS}]*)*")
# Accents of Latin, Greek and Cyrillic letters (the Combining Diacritical Marks block); marks of
# other scripts (Indic vowel signs, Arabic harakat) carry meaning and stay.
_ACCENTS = re.compile("[\u0300-\u036f]")
# Han ideographs, hiragana and katakana: those scripts put no spaces between words, so each
# character is a token of its own (as BERT's tokenizer does).
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")

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

MIN_DF = 3
"""A lexicon keeps only terms found in at least this many CVs (see `Lexicon`)."""

# Buckets of the per-thread term lookup table (2**20 int32 = 4 MiB per thread).
_LUT_MASK = (1 << 20) - 1


def normalize_text(text: str) -> str:
    """`text` in the one form every lexical comparison uses: NFKC, case-folded, accents stripped.

    The standard library's `unicodedata` and `re` rather than the `tokenizers` package's
    normalizers and pre-tokenizers (BertNormalizer + Split): those give the same tokens but were
    measured ~10x slower (1.3 ms against 0.13 ms for a 3,000-character CV), and every candidate is
    prepared when the service starts. ASCII text, the common case, skips the accent pass.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    if text.isascii():
        return text
    text = unicodedata.normalize("NFC", _ACCENTS.sub("", unicodedata.normalize("NFD", text)))
    return _CJK.sub(r" \g<0> ", text)


def tokenize(text: str) -> list[str]:
    """Normalised word tokens of `text`, stop words kept (BM25 counts document length with them)."""
    return _TOKEN_RE.findall(normalize_text(text))


def term_hash(term: str) -> int:
    """A stable 64-bit id of a term (Python's `hash` differs between processes).

    Deliberately not cached: a process-wide cache would keep CV words (names, e-mail fragments)
    in memory after the candidate is erased; hashing a term costs well under a microsecond.
    """
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=8).digest(), "little")


def _hashes(terms: Iterable[str]) -> np.ndarray:
    return np.fromiter((term_hash(t) for t in terms), dtype=np.uint64)


def skill_keys(skills: Iterable[str]) -> dict[str, str]:
    """{phrase_key: the first skill with it}: "Machine-Learning" and "machine learning" are one."""
    keys: dict[str, str] = {}
    for s in skills:
        keys.setdefault(phrase_key(s), s)
    return keys


def phrase_key(value: str) -> str:
    """How skills and locations are compared: their normalised words joined by single spaces.

    "Zürich" and "ZURICH" give "zurich"; "Machine-Learning" and "machine learning" give
    "machine learning". A value with no word characters keeps its normalised text.
    """
    words = tokenize(value)
    return " ".join(words) if words else " ".join(normalize_text(value).split())


def _title_words(title: str) -> tuple[frozenset[str], int]:
    words = [w for w in tokenize(title) if w not in _STOPWORDS]
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


# Leading columns of `PreparedCandidate.numbers` (its term counts follow them). `build` gathers
# data from hundreds of candidates whose arrays are scattered in memory and, after a FAISS scan,
# out of cache: each candidate therefore holds few packed arrays (one float32, two uint64, one
# float64), so a build pays a few cache misses per candidate rather than one per attribute.
(
    _N_YEARS,
    _N_REMOTE,
    _N_RELOCATE,
    _N_SENIORITY,
    _N_DOC_LEN,
    _N_CHUNKS,
    _N_TERMS,
    _N_SKILLS,
    _N_TITLE,
) = range(9)
_N_COUNTS = 9
"""Where the term counts start in `PreparedCandidate.numbers`."""


@dataclass(frozen=True, eq=False, slots=True)
class PreparedCandidate:
    """Everything the features need from one candidate, computed once at ingest or load.

    Stored as a few packed arrays (see `_N_COUNTS`); the properties are views into them.
    """

    candidate: Candidate
    vectors: np.ndarray
    """(1 + k, dim) float32 unit rows: the whole CV's vector, then its k >= 1 chunks' vectors."""
    term_hashes: np.ndarray
    """Sorted unique `term_hash` of the CV's words (uint64)."""
    tags: np.ndarray
    """uint64: `skill_hashes`, then `title_hashes`, then `location_hash`."""
    numbers: np.ndarray
    """float64: per-candidate scalars in the `_N_*` column order, then `term_counts`."""

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
        return self.numbers[_N_COUNTS:]

    @property
    def skill_hashes(self) -> np.ndarray:
        """`term_hash` of each structured skill's `phrase_key` (uint64)."""
        return self.tags[: int(self.numbers[_N_SKILLS])]

    @property
    def title_hashes(self) -> np.ndarray:
        """`term_hash` of each title word, seniority words left out (uint64)."""
        n_skills = int(self.numbers[_N_SKILLS])
        return self.tags[n_skills : n_skills + int(self.numbers[_N_TITLE])]

    @property
    def location_hash(self) -> int:
        """`term_hash` of the location's `phrase_key` (0 when none)."""
        return int(self.tags[-1])


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


def prepare_candidate(
    c: Candidate, doc_vector: np.ndarray, chunk_vectors: np.ndarray
) -> PreparedCandidate:
    """Precompute a candidate's model-independent parts (term counts, skills, title, location)."""
    doc = _unit(doc_vector, f"candidate {c.id!r} doc_vector", 1)
    chunks = _unit(chunk_vectors, f"candidate {c.id!r} chunk_vectors", 2)
    if chunks.shape[1] != doc.shape[0]:
        raise InvalidInput(
            f"candidate {c.id!r} chunk vectors are {chunks.shape[1]}-d but its doc vector is "
            f"{doc.shape[0]}-d; encode both with the same encoder"
        )
    tokens = tokenize(candidate_text(c))
    counts = Counter(tokens)
    hashes = _hashes(counts)
    tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    order = np.argsort(hashes)
    hashes = hashes[order]
    title_words, seniority = _title_words(c.title)
    skills = skill_keys(c.skills)
    numbers = np.zeros(_N_COUNTS + len(hashes), dtype=np.float64)
    numbers[[_N_YEARS, _N_REMOTE, _N_RELOCATE, _N_SENIORITY, _N_DOC_LEN]] = (
        c.years_experience,
        c.remote_ok,
        c.willing_to_relocate,
        seniority,
        len(tokens),
    )
    numbers[[_N_CHUNKS, _N_TERMS, _N_SKILLS, _N_TITLE]] = (
        len(chunks),
        len(hashes),
        len(skills),
        len(title_words),
    )
    numbers[_N_COUNTS:] = tf[order]
    location = phrase_key(c.location)
    tags = np.concatenate(
        [
            _hashes(skills),
            _hashes(sorted(title_words)),
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
    text_terms = {t for t in tokenize(posting_text(p)) if t not in _STOPWORDS}
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


class _LookupTable(threading.local):
    """A per-thread table from term bucket to query slot, kept zeroed between uses.

    Hand-written because no library does this lookup as fast: a gather through a table indexed by
    each CV term's bucket costs ~0.2 ms for 500 CVs, where a binary search of every term in the
    query (np.searchsorted / np.isin) costs several ms, mostly in branch mispredictions.
    """

    def __init__(self) -> None:
        self.table = np.zeros(_LUT_MASK + 1, dtype=np.int32)


_LUT = _LookupTable()


def _match_terms(query: np.ndarray, all_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in `all_hashes` (the concatenated CV terms) of terms in `query`, and their index
    in `query`."""
    q_buckets = (query & np.uint64(_LUT_MASK)).astype(np.intp)
    if len(np.unique(q_buckets)) < len(q_buckets):
        # Two query terms share a bucket (rare): fall back to the exact, slower binary search.
        pos = np.minimum(np.searchsorted(query, all_hashes), len(query) - 1)
        idx = np.flatnonzero(query[pos] == all_hashes)
        return idx, pos[idx]
    table = _LUT.table
    table[q_buckets] = np.arange(1, len(query) + 1, dtype=np.int32)
    try:
        # Values below 2**20, so viewing them as intp is exact and copies nothing.
        slots = np.take(table, (all_hashes & np.uint64(_LUT_MASK)).view(np.intp))
    finally:
        table[q_buckets] = 0
    idx = np.flatnonzero(slots)
    pos = slots[idx].astype(np.intp) - 1
    exact = all_hashes[idx] == query[pos]  # a bucket hit is only a hash-prefix match
    return idx[exact], pos[exact]


class FeatureBuilder:
    """Builds the feature matrix of one posting against many prepared candidates."""

    def __init__(self, lexicon: Lexicon) -> None:
        self.lexicon = lexicon
        self.feature_names = FEATURE_NAMES

    def build(
        self, posting: PreparedPosting, candidates: Sequence[PreparedCandidate]
    ) -> np.ndarray:
        """(len(candidates), len(FEATURE_NAMES)) float32, columns in `FEATURE_NAMES` order."""
        n = len(candidates)
        x = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
        if n == 0:
            return x
        p = posting.posting
        # One pass over the candidate objects; every later step works on the packed arrays.
        vec_list, hash_list, tag_list, num_list = [], [], [], []
        for c in candidates:
            vec_list.append(c.vectors)
            hash_list.append(c.term_hashes)
            tag_list.append(c.tags)
            num_list.append(c.numbers)
        flat_num = np.concatenate(num_list)
        num_len = np.fromiter(map(len, num_list), dtype=np.intp, count=n)
        num_starts = _starts(num_len)
        num = flat_num[num_starts[:, None] + np.arange(_N_COUNTS)]
        rows = np.arange(n)

        # Dense similarity: one product over every candidate's doc and chunk rows, then a max per
        # candidate over its chunk rows. einsum, not `@`: BLAS's threaded matrix-vector product
        # costs ~8 ms here against ~0.1 ms.
        sims = np.einsum("ij,j->i", np.concatenate(vec_list), posting.vector)
        starts = _starts(num[:, _N_CHUNKS] + 1)
        x[:, _COL["dense_cosine"]] = sims[starts]
        sims[starts] = -np.inf  # the doc rows take no part in the chunk maximum
        x[:, _COL["chunk_max_cosine"]] = np.maximum.reduceat(sims, starts)

        self._lexical(posting, np.concatenate(hash_list), flat_num, num, x)

        # Structured skills and title words, as hashes: membership tests over all candidates at
        # once, positions within each candidate's `tags` telling skills from title words.
        n_skills = num[:, _N_SKILLS].astype(np.intp)
        n_title = num[:, _N_TITLE].astype(np.intp)
        tags = np.concatenate(tag_list)
        tag_len = n_skills + n_title + 1
        tag_starts = _starts(tag_len)
        owner = np.repeat(rows, tag_len)
        local = np.arange(len(tags)) - tag_starts[owner]
        is_skill = local < n_skills[owner]
        n_req, n_nice = len(posting.required_hashes), len(posting.nice_hashes)
        matched = np.bincount(owner, np.isin(tags, posting.required_hashes) & is_skill, minlength=n)
        x[:, _COL["required_coverage"]] = matched / n_req if n_req else 1.0
        x[:, _COL["required_missing"]] = n_req - matched
        if n_nice:
            nice = np.bincount(owner, np.isin(tags, posting.nice_hashes) & is_skill, minlength=n)
            x[:, _COL["nice_coverage"]] = nice / n_nice
        x[:, _COL["skills_listed"]] = num[:, _N_SKILLS]

        years = num[:, _N_YEARS]
        x[:, _COL["years_experience"]] = np.clip(years, 0, 40)
        x[:, _COL["experience_gap"]] = np.clip(years - p.min_years, -10, 20)
        x[:, _COL["under_min_years"]] = years < p.min_years

        remote_fit = (num[:, _N_REMOTE] > 0) & p.remote
        x[:, _COL["remote_fit"]] = remote_fit
        if posting.location_hash:
            locations = tags[tag_starts + tag_len - 1]
            same = locations == np.uint64(posting.location_hash)
            reloc = ~same & (num[:, _N_RELOCATE] > 0) & (not p.remote)
            x[:, _COL["same_location"]] = same
            x[:, _COL["relocation_needed"]] = reloc
            fit = np.where(same | remote_fit, 1.0, np.where(reloc, 0.5, 0.0))
            x[:, _COL["location_fit"]] = fit
        elif not p.remote:
            # On site, but where is not said: no location requirement anyone could miss.
            x[:, _COL["location_fit"]] = 1.0
        else:
            x[:, _COL["location_fit"]] = remote_fit

        if len(posting.title_hashes):
            is_title = ~is_skill & (local < (n_skills + n_title)[owner])
            in_title = np.isin(tags, posting.title_hashes) & is_title
            common = np.bincount(owner, in_title, minlength=n)
            union = num[:, _N_TITLE] + len(posting.title_hashes) - common
            x[:, _COL["title_overlap"]] = common / np.maximum(union, 1)
        x[:, _COL["seniority_gap"]] = num[:, _N_SENIORITY] - posting.seniority
        x[:, _COL["cv_log_length"]] = np.log1p(num[:, _N_DOC_LEN])
        return x

    def _lexical(
        self,
        posting: PreparedPosting,
        all_hashes: np.ndarray,
        flat_num: np.ndarray,
        num: np.ndarray,
        x: np.ndarray,
    ) -> None:
        """BM25 (whole posting, required skills) and skill mentions, in one pass over all terms."""
        if not posting.terms:
            return
        n = len(num)
        idx, pos = _match_terms(posting.term_hashes, all_hashes)
        ends = np.cumsum(num[:, _N_TERMS]).astype(np.intp)
        rows = np.searchsorted(ends, idx, side="right")
        # Term j of candidate i sits at _N_COUNTS * (i + 1) + (terms of candidates before i) + j
        # in the concatenated `numbers`, and at (terms before i) + j in `all_hashes`.
        tf = flat_num[idx + _N_COUNTS * (rows + 1)]

        idf = self.lexicon.idf_of_hashes(posting.term_hashes.tolist())
        k1, b = self.lexicon.k1, self.lexicon.b
        norm = k1 * (1.0 - b + b * num[rows, _N_DOC_LEN] / self.lexicon.avgdl)
        contrib = idf[pos] * tf * (k1 + 1.0) / (tf + norm)
        for name, mask in (("bm25", posting.in_text), ("bm25_required", posting.in_required)):
            bound = float(idf[mask].sum()) * (k1 + 1.0)
            if bound > 0:
                sel = mask[pos]
                x[:, _COL[name]] = np.bincount(rows[sel], contrib[sel], minlength=n) / bound

        if posting.required_slots:
            present = np.zeros((n, len(posting.terms)), dtype=bool)
            present[rows, pos] = True
            mentioned = [present[:, list(s)].all(axis=1) for s in posting.required_slots]
            x[:, _COL["required_text_coverage"]] = np.mean(mentioned, axis=0)


def _starts(lengths: np.ndarray) -> np.ndarray:
    """Start offset of each segment of the given lengths in their concatenation."""
    starts = np.zeros(len(lengths), dtype=np.intp)
    starts[1:] = np.cumsum(lengths[:-1])
    return starts


@dataclass(frozen=True)
class FitSummary:
    """A recruiter-readable account of how a candidate fits a posting."""

    required_matched: tuple[str, ...]
    required_missing: tuple[str, ...]
    nice_matched: tuple[str, ...]
    years_experience: float
    min_years: float
    meets_experience: bool
    location_fit: str
    """One of: "remote", "same location", "willing to relocate", "location mismatch", or
    "no location requirement" (an on-site posting that names no location; the location features
    are then the same for every candidate)."""

    def describe(self) -> str:
        """One line, e.g. `3/4 required skills (missing: sql); 6 yrs vs 5 required; remote`."""
        n_req = len(self.required_matched) + len(self.required_missing)
        parts = [f"{len(self.required_matched)}/{n_req} required skills"]
        if self.required_missing:
            parts[-1] += f" (missing: {', '.join(self.required_missing)})"
        if self.nice_matched:
            parts.append(f"nice-to-have: {', '.join(self.nice_matched)}")
        parts.append(f"{self.years_experience:g} yrs vs {self.min_years:g} required")
        parts.append(self.location_fit)
        return "; ".join(parts)


def fit_summary(p: Posting, c: Candidate) -> FitSummary:
    """Skills matched and missing, experience against the minimum, and location fit.

    Compares exactly as `FeatureBuilder` does (`phrase_key`), so the reasons agree with the
    `required_coverage`, `nice_coverage` and location columns.
    """
    skills = skill_keys(c.skills)
    required = skill_keys(p.required_skills)
    nice = skill_keys(p.nice_skills)
    location = phrase_key(p.location)
    if p.remote and c.remote_ok:
        where = "remote"
    elif not location:
        where = "location mismatch" if p.remote else "no location requirement"
    elif location == phrase_key(c.location):
        where = "same location"
    elif not p.remote and c.willing_to_relocate:
        where = "willing to relocate"
    else:
        where = "location mismatch"
    return FitSummary(
        required_matched=tuple(s for k, s in required.items() if k in skills),
        required_missing=tuple(s for k, s in required.items() if k not in skills),
        nice_matched=tuple(s for k, s in nice.items() if k in skills),
        years_experience=c.years_experience,
        min_years=p.min_years,
        meets_experience=c.years_experience >= p.min_years,
        location_fit=where,
    )
