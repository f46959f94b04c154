"""Text normalisation: one comparison key for terms, one stored form, Unicode-aware tokens."""

from __future__ import annotations

import pytest

from ranker.domain import Candidate, Posting
from ranker.text import display_term, phrase_key, skill_keys, term_hash, tokenize


def test_term_hash_keeps_no_cache_of_cv_words() -> None:
    # A process-wide cache would hold CV words (names, e-mail parts) after an erasure.
    assert not hasattr(term_hash, "cache_info")
    assert term_hash("python") == term_hash("python") != term_hash("sql")


def test_tokenizer_is_unicode_aware() -> None:
    assert tokenize("Zürich ZÜRICH zurich") == ["zurich"] * 3
    assert tokenize("ﬁnance Straße") == ["finance", "strasse"]  # NFKC ligature, case folding
    assert tokenize("C++, C# and Node.js; 3.5 yrs") == ["c++", "c#", "and", "node.js", "3.5", "yrs"]
    assert tokenize("数据工程师") == ["数", "据", "工", "程", "师"]
    assert tokenize("हिन्दी தமிழ் Ελληνικά Русский 한국어") == [
        "हिन्दी",
        "தமிழ்",
        "ελληνικα",
        "русскии",
        "한국어",
    ]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Zürich", "ZURICH"),
        (" Machine-Learning ", "machine learning"),
        ("ﬁnance", "Finance"),
        ("Node.js", "node.js"),
    ],
)
def test_spellings_of_one_term_share_one_key(a: str, b: str) -> None:
    assert phrase_key(a) == phrase_key(b)


def test_distinct_terms_keep_distinct_keys() -> None:
    terms = ("c", "c++", "c#", "r", "go", "node.js", "node js")
    assert len({phrase_key(s) for s in terms}) == len(terms)  # "node.js" is one word
    assert phrase_key("!!!") == "!!!"  # no word characters: the normalised text itself


def test_the_stored_form_keeps_accents_and_punctuation_but_not_case_or_spacing() -> None:
    assert display_term("  Zürich   Tax ") == "zürich tax"
    assert display_term("C/C++") == "c/c++"
    assert display_term("ﬁnance") == "finance"  # NFKC
    # The stored form of a term has the key of the term itself.
    for s in ("  Zürich   Tax ", "C/C++", "Machine-Learning", "数据"):
        assert phrase_key(display_term(s)) == phrase_key(s)


def test_skill_keys_keep_the_first_spelling() -> None:
    assert skill_keys(["Machine-Learning", "machine learning", "SQL"]) == {
        "machine learning": "Machine-Learning",
        "sql": "SQL",
    }


def test_records_keep_one_skill_per_key_in_its_first_spelling() -> None:
    c = Candidate(id="c", cv_text="cv", skills=("Machine-Learning", "machine learning", "Zürich"))
    assert c.skills == ("machine-learning", "zürich")
    p = Posting(id="p", title="t", description="d", required_skills=("Zurich", "ZÜRICH"))
    assert p.required_skills == ("zurich",)
