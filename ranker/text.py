"""Text normalisation and tokenisation: the one way words, skills and locations are compared.

Two forms of a short term (a skill, a location), and only two:

- `phrase_key` is how terms *compare*, everywhere: record deduplication, features, filters and
  reasons. It is the term's normalised words (`normalize_text`: NFKC, case folding, Latin / Greek
  / Cyrillic accents stripped) joined by single spaces, so "Zürich", "ZURICH" and "zurich" are
  one place and "Machine-Learning" and "machine learning" one skill.
- `display_term` is how a skill is *stored* and returned: NFKC, case-folded, whitespace
  collapsed, accents and punctuation kept ("zürich tax", "c/c++"), so the reasons a recruiter
  reads still show the skill as it was written. Two skills with one `phrase_key` are one skill;
  the first spelling is kept.

This module imports nothing else of ours, so records, features and filters can all depend on it.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterable

# Words that say nothing about fit. Hand-written (and short) rather than taken from a library:
# BM25's idf already discounts common words; this list only keeps the query small and fast.
STOPWORDS = frozenset(
    """a an and are as at be by for from has have in is it its of on or our that the their this to
    we will with you your who what which while would can could should into across within over about
    were was been being also such other more most very than then there these those they them
    i my me he she his her us""".split()
)
"""Words left out of queries and title comparisons (documents still count them for length)."""

# Accents of Latin, Greek and Cyrillic letters (the Combining Diacritical Marks block); marks of
# other scripts (Indic vowel signs, Arabic harakat) carry meaning and stay.
_ACCENTS = re.compile("[\u0300-\u036f]")
# Han ideographs, hiragana and katakana: those scripts put no spaces between words, so each
# character is a token of its own (as BERT's tokenizer does).
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")


@functools.cache
def _token_pattern() -> re.Pattern[str]:
    """The word pattern, built on first use (~20 ms): importing records must not pay for it.

    A word starts with a letter or digit and may go on with letters, digits, combining marks,
    "_", "+", "#", and dot-joined parts: "c++", "c#", "node.js", "3.5" and "हिन्दी" stay whole.
    Python's `re` has no `\\p{M}`, and its `\\w` leaves marks out, which would cut Indic words at
    every vowel sign ("हिन्दी" -> "ह", "न", "द"); so the marks of the Basic Multilingual Plane
    (Mn, Mc, Me) are listed as a class.
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
    marks = "".join(ranges)
    return re.compile(rf"[^\W_][\w{marks}+#]*(?:\.[^\W_][\w{marks}]*)*")


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
    return _token_pattern().findall(normalize_text(text))


def phrase_key(value: str) -> str:
    """How skills and locations compare: their normalised words joined by single spaces.

    "Zürich" and "ZURICH" give "zurich"; "Machine-Learning" and "machine learning" give
    "machine learning". A value with no word characters keeps its normalised text.
    """
    words = tokenize(value)
    return " ".join(words) if words else " ".join(normalize_text(value).split())


def display_term(value: str) -> str:
    """How a skill is stored and shown: NFKC, case-folded, whitespace collapsed.

    Accents and punctuation stay (they are part of how the skill reads); compare with `phrase_key`.
    """
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


def skill_keys(skills: Iterable[str]) -> dict[str, str]:
    """{phrase_key: the first skill with it}: "Machine-Learning" and "machine learning" are one."""
    keys: dict[str, str] = {}
    for s in skills:
        keys.setdefault(phrase_key(s), s)
    return keys


def term_hash(term: str) -> int:
    """A stable 64-bit id of a term (Python's `hash` differs between processes).

    Deliberately not cached: a process-wide cache would keep CV words (names, e-mail fragments)
    in memory after the candidate is erased; hashing a term costs well under a microsecond.
    """
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=8).digest(), "little")
