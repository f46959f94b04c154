"""BM25 statistics: the saved lexicon (JSON, no rare terms) and the live one (follows the catalog)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ranker import lexicon
from ranker.catalog import CandidateCatalog
from ranker.domain import Candidate
from ranker.errors import InvalidInput
from ranker.lexicon import Lexicon, LiveLexicon
from ranker.prepared import PreparedCandidate, prepare_candidate
from ranker.text import term_hash


def _cand(cid: str, cv_text: str) -> Candidate:
    return Candidate(id=cid, cv_text=cv_text)


def test_lexicon_round_trip_and_errors() -> None:
    cands = [_cand("a", cv_text="python sql"), _cand("b", cv_text="python nursing care")]
    lex = Lexicon.fit(cands, min_df=1)
    back = Lexicon.from_json(lex.to_json())
    assert back.df == lex.df == {"care": 1, "nursing": 1, "python": 2, "sql": 1}
    assert back.avgdl == 2.5 and back.n_docs == 2 and back.min_df == 1
    np.testing.assert_allclose(
        back.idf(["python", "never-seen"]), lex.idf(["python", "never-seen"])
    )
    assert lex.idf(["never-seen"])[0] > lex.idf(["sql"])[0] > lex.idf(["python"])[0]
    with pytest.raises(InvalidInput, match="lexicon is not valid"):
        Lexicon.from_json('{"n_docs": 2}')
    with pytest.raises(InvalidInput):
        Lexicon.fit([])


def test_lexicon_keeps_only_terms_found_in_three_cvs() -> None:
    cands = [
        _cand("a", cv_text="Jane Zyxwv python sql"),
        _cand("b", cv_text="python sql nursing"),
        _cand("c", cv_text="python nursing care"),
        _cand("d", cv_text="python sql care"),
    ]
    lex = Lexicon.fit(cands)
    assert lex.min_df == lexicon.MIN_DF == 3
    assert lex.df == {"python": 4, "sql": 3}
    assert "zyxwv" not in lex.to_json() and "jane" not in lex.to_json()
    # Lengths still count every word, and a dropped term scores like an unseen one.
    assert lex.avgdl == 3.25 and lex.n_docs == 4
    assert lex.idf(["zyxwv"])[0] == lex.idf(["never-seen"])[0]


def _prepared(cid: str, cv_text: str) -> PreparedCandidate:
    v = np.zeros(4, dtype=np.float32)
    v[0] = 1.0
    return prepare_candidate(_cand(cid, cv_text), v, v[None, :])


CVS = {
    "a": "python sql airflow",
    "b": "python sql nursing",
    "c": "python nursing care care",
    "d": "python sql care",
    "e": "zyxwv python",
}
QUERY = ["python", "sql", "nursing", "care", "airflow", "zyxwv", "never-seen"]


def test_live_lexicon_equals_a_lexicon_fitted_on_the_same_cvs() -> None:
    live = LiveLexicon()
    live.add([_prepared(cid, text) for cid, text in CVS.items()])
    fitted = Lexicon.fit([_cand(cid, text) for cid, text in CVS.items()])
    assert (live.n_docs, live.avgdl, live.k1, live.b) == (
        fitted.n_docs,
        fitted.avgdl,
        fitted.k1,
        fitted.b,
    )
    hashes = [term_hash(t) for t in QUERY]
    np.testing.assert_array_equal(live.idf_of_hashes(hashes), fitted.idf(QUERY))
    view = live.view(hashes)
    np.testing.assert_array_equal(view.idf_of_hashes(hashes), fitted.idf(QUERY))
    # Terms in fewer than MIN_DF CVs score as unseen in both (airflow: 1 CV, nursing: 2).
    assert live.df_of_hash(term_hash("airflow")) == 1
    assert fitted.idf(["airflow"])[0] == fitted.idf(["nursing"])[0] == fitted.idf(["x"])[0]


def test_live_lexicon_follows_upserts_and_erasures_in_the_catalog() -> None:
    catalog = CandidateCatalog()
    prepared = {cid: _prepared(cid, text) for cid, text in CVS.items()}
    catalog.put_many([(i, prepared[cid]) for i, cid in enumerate("abc")])
    lex = catalog.lexicon
    sql, care, zyx = term_hash("sql"), term_hash("care"), term_hash("zyxwv")
    assert (lex.n_docs, lex.df_of_hash(sql), lex.df_of_hash(care)) == (3, 2, 1)
    catalog.put_many([(3, prepared["d"]), (4, prepared["e"])])
    assert (lex.n_docs, lex.df_of_hash(sql), lex.df_of_hash(care), lex.df_of_hash(zyx)) == (
        5,
        3,
        2,
        1,
    )
    # A replaced CV counts once, with its new words only.
    catalog.put_many([(5, _prepared("a", "care for patients"))])
    assert (lex.n_docs, lex.df_of_hash(sql), lex.df_of_hash(care)) == (5, 2, 3)
    assert lex.df_of_hash(term_hash("airflow")) == 0
    # An erased candidate's words stop counting, and a word no one holds any more is gone.
    terms_before = len(lex)
    catalog.remove_many(["e"])
    assert (lex.n_docs, lex.df_of_hash(zyx)) == (4, 0) and len(lex) == terms_before - 1
    now = [_cand("a", "care for patients")] + [_cand(c, CVS[c]) for c in "bcd"]
    fitted = Lexicon.fit(now)
    assert lex.avgdl == fitted.avgdl
    np.testing.assert_array_equal(
        lex.idf_of_hashes([term_hash(t) for t in QUERY]), fitted.idf(QUERY)
    )
    catalog.remove_many(list("abcd"))
    assert (lex.n_docs, len(lex)) == (0, 0)


def test_a_lexicon_saved_by_an_earlier_version_still_loads() -> None:
    # lexicon.json as versions of FEATURES_VERSION 3 wrote it (fitted on training applicants).
    text = (
        '{"avgdl":3.25,"b":0.75,"df":{"python":4,"sql":3},"format":1,"k1":1.2,"min_df":3,'
        '"n_docs":4}'
    )
    lex = Lexicon.from_json(text)
    assert (lex.n_docs, lex.avgdl, lex.min_df, lex.df) == (4, 3.25, 3, {"python": 4, "sql": 3})
    assert lex.idf(["sql"])[0] == pytest.approx(math.log(1 + 1.5 / 3.5))
    assert lex.idf(["care"])[0] == lex.idf(["never-seen"])[0]
    # Without min_df (the first format), every stored term counts.
    old = Lexicon.from_json('{"avgdl":2.0,"b":0.75,"df":{"rare":1},"k1":1.2,"n_docs":5}')
    assert old.min_df == 1 and old.idf(["rare"])[0] < old.idf(["never-seen"])[0]
