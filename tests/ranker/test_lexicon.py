"""The BM25 lexicon: fitted on CVs, round-trips through JSON, keeps no rare (personal) terms."""

from __future__ import annotations

import numpy as np
import pytest

from ranker import lexicon
from ranker.domain import Candidate
from ranker.errors import InvalidInput
from ranker.lexicon import Lexicon


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
