"""Reasons in a recruiter's words: one sentence per fact, strengths in words, and what separates
two candidates, all worded from the feature specs (`ranker.features`).

The model's columns are grouped into *topics*, the facts a recruiter reads (required skills,
experience, location ...). A topic gets one sentence, whatever the number of its columns, so
"lists 2 of 3 required skills" and "mentions the third in the CV" are said together and never
contradict each other. How much a topic moved the score is said as a strength (strongly /
somewhat / slightly, for or against), never as a raw contribution; a similarity is said as a
percentile among the posting's candidates, never as a cosine. A topic about a requirement the
posting does not have (no required skills, no location) is left out, and so is a topic whose
columns hold the same value for every candidate of the posting: it cannot order them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ranker.features import FEATURES, FEATURES_BY_NAME

# -- grammar ----------------------------------------------------------------------------------

_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """`1 skill`, `2 skills`, `0 skills`."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def years(y: float) -> str:
    """`1 year`, `2.5 years`."""
    return f"{y:g} year" + ("" if y == 1 else "s")


def ordinal(n: int) -> str:
    """`first` .. `ninth`, then `10th`, `11th` ..."""
    return _ORDINALS[n - 1] if 1 <= n <= len(_ORDINALS) else f"{n}th"


def listing(items: Sequence[str]) -> str:
    return ", ".join(items)


def _all_of(n: int, what: str) -> str:
    """`the required skill`, `both required skills`, `all 3 required skills`."""
    if n == 1:
        return f"the {what}"
    return f"both {what}s" if n == 2 else f"all {n} {what}s"


def _none_of(n: int, what: str) -> str:
    """`not the required skill`, `neither required skill`, `none of the 3 required skills`."""
    if n == 1:
        return f"not the {what}"
    return f"neither {what}" if n == 2 else f"none of the {n} {what}s"


# -- topics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    """One fact a recruiter reads, and the feature columns that measure it."""

    key: str
    label: str
    features: tuple[str, ...]
    fact: bool
    """A fact about the candidate against the posting's requirements (said for every candidate
    when the posting has the requirement), not only when it weighed in the score."""


TOPICS: tuple[Topic, ...] = (
    Topic(
        "required",
        "Required skills",
        ("required_coverage", "required_missing", "required_text_coverage", "bm25_required"),
        True,
    ),
    Topic("nice", "Nice-to-have skills", ("nice_coverage",), True),
    Topic(
        "experience", "Experience", ("years_experience", "experience_gap", "under_min_years"), True
    ),
    Topic("location", "Location", tuple(f.name for f in FEATURES if f.location), True),
    Topic(
        "wording",
        "CV wording",
        tuple(
            f"{base}{suffix}"
            for base in ("dense_cosine", "chunk_max_cosine", "bm25")
            for suffix in ("", "_z", "_gap")
        ),
        False,
    ),
    Topic("title", "Job title", ("title_overlap", "seniority_gap"), False),
    Topic("profile", "Profile detail", ("cv_log_length", "skills_listed"), False),
)
TOPICS_BY_KEY = {t.key: t for t in TOPICS}
_TOPIC_OF = {name: t for t in TOPICS for name in t.features}


def topic_of(feature: str) -> Topic:
    """The topic a feature column belongs to; a column no topic names is a topic of its own,
    worded by its spec's `in_words`."""
    known = _TOPIC_OF.get(feature)
    if known is not None:
        return known
    return Topic(feature, feature.replace("_", " ").capitalize(), (feature,), False)


# -- the facts of one candidate ---------------------------------------------------------------


@dataclass(frozen=True)
class CandidateFacts:
    """What the sentences say about one candidate for one posting (see `explain.fit_summary`)."""

    required_matched: tuple[str, ...]
    required_mentioned: tuple[str, ...]
    """Required skills not listed but mentioned in the CV text."""
    required_absent: tuple[str, ...]
    """Required skills neither listed nor mentioned."""
    nice_matched: tuple[str, ...]
    nice_total: int
    years_experience: float
    min_years: float
    location_fit: str
    candidate_location: str
    posting_location: str
    posting_remote: bool
    title: str


def required_sentence(f: CandidateFacts) -> str:
    """E.g. `Lists 2 of 3 required skills (python, sql); mentions the third (audit) in the CV`."""
    listed, mentioned, absent = f.required_matched, f.required_mentioned, f.required_absent
    n = len(listed) + len(mentioned) + len(absent)
    what = "required skill"
    if len(listed) == n:
        return f"Lists {_all_of(n, what)} ({listing(listed)})"
    if not listed:
        head = f"Lists {_none_of(n, what)}" if n > 1 else f"Does not list the {what}"
    else:
        head = f"Lists {len(listed)} of {plural(n, what)} ({listing(listed)})"
    parts = [head]
    if mentioned:
        m = len(mentioned)
        if not absent:
            if not listed:
                which = "it" if n == 1 else ("both" if n == 2 else f"all {n}")
            elif m == 1:
                which = f"the {ordinal(n)}"
            else:
                which = f"the other {m}"
        else:
            which = f"{m} more" if listed else str(m)
        parts.append(f"mentions {which} ({listing(mentioned)}) in the CV")
    if absent:
        parts.append(f"missing: {listing(absent)}")
    return "; ".join(parts)


def nice_sentence(f: CandidateFacts) -> str:
    """E.g. `Lists 1 of 2 nice-to-have skills (docker)`."""
    n, got = f.nice_total, f.nice_matched
    what = "nice-to-have skill"
    if len(got) == n:
        return f"Lists {_all_of(n, what)} ({listing(got)})"
    if not got:
        return f"Lists {_none_of(n, what)}" if n > 1 else f"Does not list the {what}"
    return f"Lists {len(got)} of {plural(n, what)} ({listing(got)})"


def experience_sentence(f: CandidateFacts) -> str:
    """E.g. `3 years of experience, 2 years short of the 5 years the posting asks for`."""
    have = f"{years(f.years_experience)} of experience"
    if f.min_years <= 0:
        return have
    if f.years_experience >= f.min_years:
        return f"{have}; the posting asks for at least {years(f.min_years)}"
    short = f.min_years - f.years_experience
    return f"{have}, {years(short)} short of the {years(f.min_years)} the posting asks for"


def location_sentence(f: CandidateFacts) -> str:
    """Where the candidate is against where the job is, e.g. `Would relocate to Madrid`."""
    where = f.posting_location or "the job's location"
    lives = f"Lives in {f.candidate_location}" if f.candidate_location else "Location not given"
    if f.location_fit == "remote":
        return "Accepts remote work, and the job can be done remotely"
    if f.location_fit == "same location":
        return f"Lives in {where}, where the job is"
    if f.location_fit == "willing to relocate":
        return f"{lives}; would relocate to {where}"
    if f.posting_remote and not f.posting_location:
        return "Does not accept remote work, and the job is remote"
    also = " or to work remotely" if f.posting_remote else ""
    return f"{lives}; not open to relocating to {where}{also}"


def percentile_phrase(
    value: float, column: np.ndarray | None, more: str = "more closely", less: str = "less closely"
) -> str | None:
    """`more closely than 85% of this posting's candidates` (or `less closely than ...`);
    None without at least two candidates to compare with."""
    if column is None or len(column) < 2:
        return None
    below = float(np.mean(column < value))
    above = float(np.mean(column > value))
    if below >= above:
        return f"{more} than {below:.0%} of this posting's candidates"
    return f"{less} than {above:.0%} of this posting's candidates"


# How each similarity column reads, with the comparatives of its percentile phrase.
_WORDING = {
    "dense_cosine": ("CV as a whole matches the posting", "more closely", "less closely"),
    "chunk_max_cosine": ("The CV's best part matches the posting", "more closely", "less closely"),
    "bm25": ("CV uses the posting's words", "more", "less"),
}


@dataclass(frozen=True)
class TopicValues:
    """One candidate's values of a topic's columns, and the posting's candidates' columns."""

    values: Mapping[str, float]
    reference: Mapping[str, np.ndarray]
    lead: str = ""
    """The column that weighed most in the topic (the one its sentence is about)."""


def topic_sentence(topic: Topic, f: CandidateFacts, v: TopicValues) -> str:
    """The one sentence of `topic` about a candidate (the fact, without its weight)."""
    if topic.key == "required":
        return required_sentence(f)
    if topic.key == "nice":
        return nice_sentence(f)
    if topic.key == "experience":
        return experience_sentence(f)
    if topic.key == "location":
        return location_sentence(f)
    if topic.key == "wording":
        name = v.lead if v.lead in _WORDING else "dense_cosine"
        what, more, less = _WORDING[name]
        closeness = percentile_phrase(v.values.get(name, 0.0), v.reference.get(name), more, less)
        return f"{what} {closeness}" if closeness else what
    if topic.key == "title":
        shown = f"Current title ({f.title})" if f.title else "No current title given"
        overlap = v.values.get("title_overlap", 0.0)
        shares = "shares words with the posting's" if overlap > 0 else "shares no words with it"
        parts = [f"{shown} {shares}" if f.title else shown]
        if "seniority_gap" in v.values:
            parts.append(FEATURES_BY_NAME["seniority_gap"].in_words(v.values["seniority_gap"]))
        return "; ".join(parts)
    words = [FEATURES_BY_NAME[n].in_words(x) for n, x in v.values.items() if n in FEATURES_BY_NAME]
    text = ", ".join(words) or topic.label
    return text[0].upper() + text[1:]


# -- strengths --------------------------------------------------------------------------------

STRONG, SOME, WEAK = "strong", "some", "weak"


def strength_of(share: float) -> str:
    """A topic's share of the total absolute contribution, in words."""
    if share >= 0.3:
        return STRONG
    return SOME if share >= 0.1 else WEAK


_ADVERB = {STRONG: "strongly", SOME: "somewhat", WEAK: "slightly"}


def weight_phrase(contribution: float, strength: str) -> str:
    """`weighed strongly in favour`, `weighed slightly against`."""
    if contribution == 0:
        return "made no difference"
    side = "in favour" if contribution > 0 else "against"
    return f"weighed {_ADVERB[strength]} {side}"


@dataclass(frozen=True)
class TopicWeight:
    """A topic's summed contribution and its strength within the candidate's (or pair's) total."""

    topic: Topic
    contribution: float
    strength: str
    lead: str = ""
    """The topic's column with the largest absolute contribution."""


def weigh(
    contributions: Mapping[str, float], silent: frozenset[str] = frozenset()
) -> list[TopicWeight]:
    """Topics by summed contribution, largest absolute first; `silent` topics left out."""
    sums: dict[str, float] = {}
    topics: dict[str, Topic] = {}
    lead: dict[str, str] = {}
    for name, c in contributions.items():
        t = topic_of(name)
        if t.key in silent:
            continue
        topics[t.key] = t
        sums[t.key] = sums.get(t.key, 0.0) + float(c)
        if t.key not in lead or abs(c) > abs(contributions[lead[t.key]]):
            lead[t.key] = name
    total = sum(abs(c) for c in sums.values())
    out = [
        TopicWeight(topics[k], c, strength_of(abs(c) / total if total > 0 else 0.0), lead[k])
        for k, c in sums.items()
    ]
    out.sort(key=lambda w: -abs(w.contribution))
    return out


def silent_topics(
    facts: CandidateFacts,
    has_location: bool,
    reference: Mapping[str, np.ndarray],
) -> frozenset[str]:
    """Topics that cannot explain this posting's order: requirements it does not have, and
    topics whose every column is the same for all of its candidates."""
    silent: set[str] = set()
    n_req = len(facts.required_matched + facts.required_mentioned + facts.required_absent)
    if n_req == 0:
        silent.add("required")
    if facts.nice_total == 0:
        silent.add("nice")
    if not has_location:
        silent.add("location")
    by_topic: dict[str, list[np.ndarray]] = {}
    for name, col in reference.items():
        by_topic.setdefault(topic_of(name).key, []).append(col)
    for key, cols in by_topic.items():
        if len(cols[0]) >= 2 and all(np.all(c == c[0]) for c in cols):
            silent.add(key)
    return frozenset(silent)


def candidate_reasons(
    facts: CandidateFacts,
    weights: Sequence[TopicWeight],
    values: Mapping[str, float],
    reference: Mapping[str, np.ndarray],
    silent: frozenset[str],
    n_top: int = 3,
) -> list[str]:
    """One sentence per topic, most weighty first: every fact topic the posting has, plus the
    other topics among the `n_top` weightiest that weighed at least somewhat."""
    out: list[str] = []
    said: set[str] = set()
    for rank, w in enumerate(weights):
        t = w.topic
        if not t.fact and (rank >= n_top or w.strength == WEAK):
            continue
        v = _values_of(t, values, reference, w.lead)
        out.append(f"{topic_sentence(t, facts, v)}: {weight_phrase(w.contribution, w.strength)}")
        said.add(t.key)
    for t in TOPICS:
        if t.fact and t.key not in said and t.key not in silent:
            out.append(topic_sentence(t, facts, _values_of(t, values, reference)))
    return out


def _values_of(
    t: Topic, values: Mapping[str, float], reference: Mapping[str, np.ndarray], lead: str = ""
) -> TopicValues:
    return TopicValues(
        {n: values[n] for n in t.features if n in values},
        {n: reference[n] for n in t.features if n in reference},
        lead,
    )


# -- two candidates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Separation:
    """A topic that separates two candidates' scores, in words."""

    topic: str
    reason: str
    favours: str
    """The candidate id the topic favours."""
    strength: str
    difference: float
    """Summed contribution of the topic's columns to A's score minus B's (TreeSHAP)."""
    features: tuple[str, ...]


def separations(
    ids: tuple[str, str],
    facts: tuple[CandidateFacts, CandidateFacts],
    values: tuple[Mapping[str, float], Mapping[str, float]],
    difference: Mapping[str, float],
    reference: Mapping[str, np.ndarray],
    silent: frozenset[str],
) -> list[Separation]:
    """The topics whose contributions separate candidate A from B, largest first; each names
    both candidates' facts and which of them it favours. Topics that separate them by less
    than a tenth of the total are left out."""
    out: list[Separation] = []
    for w in weigh(difference, silent):
        if w.strength == WEAK or w.contribution == 0:
            continue
        t = w.topic
        a, b = (
            topic_sentence(t, facts[i], _values_of(t, values[i], reference, w.lead))
            for i in range(2)
        )
        favours = ids[0] if w.contribution > 0 else ids[1]
        out.append(
            Separation(
                topic=t.label,
                reason=(
                    f"{t.label}: {ids[0]}: {_lower(a)}; {ids[1]}: {_lower(b)} "
                    f"(favours {favours}, {w.strength})"
                ),
                favours=favours,
                strength=w.strength,
                difference=w.contribution,
                features=tuple(n for n in t.features if n in difference),
            )
        )
    return out


def comparison_summary(
    ids: tuple[str, str],
    scores: tuple[float, float],
    found: Sequence[Separation],
    ranks: tuple[int | None, int | None] = (None, None),
) -> str:
    """E.g. `C-7 is above C-2 mostly on experience and CV wording; C-2 is ahead on location`."""
    hi, lo = (0, 1) if scores[0] >= scores[1] else (1, 0)
    if scores[0] == scores[1]:
        text = f"{ids[0]} and {ids[1]} score the same for this posting"
        r0, r1 = ranks
        if r0 is not None and r1 is not None:
            first = ids[0] if r0 < r1 else ids[1]
            text += f"; {first} is listed first because its CV is closer to the posting (tie-break)"
        return text
    ahead = [s.topic.lower() for s in found if s.favours == ids[hi]]
    behind = [s.topic.lower() for s in found if s.favours == ids[lo]]
    text = f"{ids[hi]} is above {ids[lo]}"
    text += f" mostly on {_and(ahead)}" if ahead else " on many small differences"
    if behind:
        text += f"; {ids[lo]} is ahead on {_and(behind)}"
    return text


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _lower(sentence: str) -> str:
    # Keep acronyms and names ("CV wording", "Lives in ..." stays readable lower-cased).
    if len(sentence) > 1 and sentence[1].isupper():
        return sentence
    return sentence[:1].lower() + sentence[1:]
