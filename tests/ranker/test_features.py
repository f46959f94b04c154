"""Features: names, meaning of each column, the vectorised BM25 against a plain reference, no
protected attributes anywhere near the inputs."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import ranker.features as features
import ranker.lexicon as lexicon
import ranker.prepared as prepared
import ranker.text as text_module
from ranker.datafiles import PROTECTED_NAMES
from ranker.domain import Candidate, Posting
from ranker.errors import InvalidInput
from ranker.explain import fit_summary
from ranker.features import FEATURE_NAMES, FEATURES, FeatureBuilder
from ranker.lexicon import Lexicon
from ranker.prepared import (
    PackedCandidates,
    candidate_text,
    posting_text,
    prepare_candidate,
    prepare_posting,
)
from ranker.text import STOPWORDS, phrase_key, tokenize
from training.demo import DemoConfig, generate

COL = {n: i for i, n in enumerate(FEATURE_NAMES)}


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    v = rng.normal(size=shape).astype(np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _cand(cid: str, **kw: object) -> Candidate:
    values: dict[str, object] = {"cv_text": "Generic CV text about work.", "title": ""}
    values.update(kw)
    return Candidate(id=cid, **values)  # type: ignore[arg-type]


POSTING = Posting(
    id="p1",
    title="Senior Data Engineer",
    description="Build pipelines in python and sql with airflow.",
    required_skills=("python", "sql", "machine learning"),
    nice_skills=("airflow", "dbt"),
    min_years=5,
    location="Berlin",
)


def _build(posting: Posting, cands: list[Candidate], lexicon: Lexicon | None = None) -> np.ndarray:
    rng = np.random.default_rng(1)
    pc = [prepare_candidate(c, _unit(rng, 8), _unit(rng, 2, 8)) for c in cands]
    pp = prepare_posting(posting, _unit(rng, 8))
    return FeatureBuilder(lexicon or Lexicon.fit(cands)).build(pp, pc)


def test_names_are_unique_documented_and_match_the_specs() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert FEATURE_NAMES == tuple(f.name for f in FEATURES)
    assert all(len(f.doc) > 20 for f in FEATURES)


def test_every_feature_spec_has_wording_a_recruiter_can_read() -> None:
    for f in FEATURES:
        for value in (-2.0, 0.0, 0.5, 1.0, 3.0):
            words = f.in_words(value)
            assert words.strip() and "=" not in words and f.name not in words, (f.name, words)
    assert {f.name for f in FEATURES if f.location} == {
        "same_location",
        "remote_fit",
        "relocation_needed",
        "location_fit",
    }


def test_no_protected_attribute_is_a_feature_or_an_input() -> None:
    words = {w for name in FEATURE_NAMES for w in name.split("_")}
    assert not PROTECTED_NAMES & set(FEATURE_NAMES)
    assert not {"sex", "gender", "age", "ethnicity", "race", "disability", "photo"} & words
    # The records the features read cannot carry them ...
    fields = {f.name for f in dataclasses.fields(Candidate)}
    assert not PROTECTED_NAMES & fields
    params = set(inspect.signature(prepare_candidate).parameters)
    # `text` is `candidate_text_terms` of the same record (its CV and title), computed earlier.
    assert params == {"c", "doc_vector", "chunk_vectors", "text"}
    # ... and the feature code never names one (identifiers, attributes or strings).
    for module in (features, prepared, lexicon, text_module):
        tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
        docstrings = {
            id(n.value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
        }
        names: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in docstrings:
                continue
            if isinstance(node, ast.Name):
                names.add(node.id.lower())
            elif isinstance(node, ast.Attribute):
                names.add(node.attr.lower())
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.update(tokenize(node.value))
        assert not (PROTECTED_NAMES - {"name"}) & names, module.__name__


def test_skill_experience_and_location_columns() -> None:
    cands = [
        _cand(
            "full",
            skills=("python", "sql", "machine learning", "dbt"),
            years_experience=7,
            location="berlin ",
        ),
        _cand(
            "half",
            skills=("python",),
            years_experience=3,
            location="Paris",
            willing_to_relocate=True,
        ),
        _cand("none", skills=("excel",), years_experience=12, location="Paris", remote_ok=True),
    ]
    x = _build(POSTING, cands)
    assert x.shape == (3, len(FEATURE_NAMES)) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, COL["required_coverage"]], [1, 1 / 3, 0], rtol=1e-6)
    np.testing.assert_array_equal(x[:, COL["required_missing"]], [0, 2, 3])
    np.testing.assert_allclose(x[:, COL["nice_coverage"]], [0.5, 0, 0])
    np.testing.assert_array_equal(x[:, COL["experience_gap"]], [2, -2, 7])
    np.testing.assert_array_equal(x[:, COL["under_min_years"]], [0, 1, 0])
    np.testing.assert_array_equal(x[:, COL["same_location"]], [1, 0, 0])
    np.testing.assert_array_equal(x[:, COL["relocation_needed"]], [0, 1, 0])
    np.testing.assert_array_equal(x[:, COL["remote_fit"]], [0, 0, 0])  # the posting is on site
    np.testing.assert_array_equal(x[:, COL["location_fit"]], [1, 0.5, 0])
    np.testing.assert_array_equal(x[:, COL["skills_listed"]], [4, 1, 1])

    remote = dataclasses.replace(POSTING, location="", remote=True)
    xr = _build(remote, cands)
    np.testing.assert_array_equal(xr[:, COL["remote_fit"]], [0, 0, 1])
    np.testing.assert_array_equal(xr[:, COL["location_fit"]], [0, 0, 1])


def test_posting_without_skills_or_title_words() -> None:
    bare = Posting(id="p2", title="Junior", description="Anything at all.")
    x = _build(bare, [_cand("a", skills=("sql",))])
    assert x[0, COL["required_coverage"]] == 1.0
    assert x[0, COL["nice_coverage"]] == 0.0
    assert x[0, COL["title_overlap"]] == 0.0


def test_title_and_seniority() -> None:
    cands = [
        _cand("a", title="Lead Data Engineer"),
        _cand("b", title="Junior Data Analyst"),
        _cand("c", title="Registered Nurse"),
    ]
    x = _build(POSTING, cands)
    np.testing.assert_allclose(x[:, COL["title_overlap"]], [1.0, 1 / 3, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(x[:, COL["seniority_gap"]], [1, -2, -1])


def test_dense_columns_are_cosines() -> None:
    rng = np.random.default_rng(3)
    cands = [_cand(f"c{i}") for i in range(5)]
    pc = [prepare_candidate(c, _unit(rng, 16), _unit(rng, i + 1, 16)) for i, c in enumerate(cands)]
    pp = prepare_posting(POSTING, _unit(rng, 16))
    x = FeatureBuilder(Lexicon.fit(cands)).build(pp, pc)
    np.testing.assert_allclose(
        x[:, COL["dense_cosine"]], [c.doc_vector @ pp.vector for c in pc], rtol=1e-5
    )
    np.testing.assert_allclose(
        x[:, COL["chunk_max_cosine"]], [np.max(c.chunk_vectors @ pp.vector) for c in pc], rtol=1e-5
    )


def _reference_bm25(lex: Lexicon, query: set[str], text: str) -> float:
    """BM25 written the slow, obvious way."""
    tf = Counter(tokenize(text))
    dl = sum(tf.values())
    score = bound = 0.0
    for t in query:
        idf = math.log(1 + (lex.n_docs - lex.df.get(t, 0) + 0.5) / (lex.df.get(t, 0) + 0.5))
        bound += idf * (lex.k1 + 1)
        f = tf.get(t, 0)
        score += idf * f * (lex.k1 + 1) / (f + lex.k1 * (1 - lex.b + lex.b * dl / lex.avgdl))
    return score / bound


def test_vectorised_lexical_features_match_a_plain_reference() -> None:
    data = generate(DemoConfig(candidates=60, postings=4, applicants=(5, 8), seed=2))
    lex = Lexicon.fit(data.candidates[:40])  # some CVs are unseen by the lexicon
    rng = np.random.default_rng(0)
    pc = [prepare_candidate(c, _unit(rng, 8), _unit(rng, 1, 8)) for c in data.candidates]
    for posting in data.postings:
        pp = prepare_posting(posting, _unit(rng, 8))
        x = FeatureBuilder(lex).build(pp, pc)
        query = {t for t in tokenize(posting_text(posting)) if t not in STOPWORDS}
        required = {w for s in posting.required_skills for w in tokenize(s)}
        for i, c in enumerate(data.candidates):
            text = candidate_text(c)
            assert x[i, COL["bm25"]] == pytest.approx(_reference_bm25(lex, query, text), rel=1e-5)
            assert x[i, COL["bm25_required"]] == pytest.approx(
                _reference_bm25(lex, required, text), rel=1e-5
            )
            words = set(tokenize(text))
            mentioned = [all(w in words for w in tokenize(s)) for s in posting.required_skills]
            assert x[i, COL["required_text_coverage"]] == pytest.approx(np.mean(mentioned))
            assert x[i, COL["cv_log_length"]] == pytest.approx(np.log1p(len(tokenize(text))))


def test_query_terms_sharing_a_slot_are_matched_exactly() -> None:
    from ranker import kernels

    real = np.array([5, 1029, 77, 2**40 + 5], dtype=np.uint64)  # 5, 1029, 2**40+5 share a slot
    query = np.sort(real)
    table = kernels._query_table(query)
    for j, h in enumerate(query):
        assert kernels._find(table, query, h) == j
    for absent in (np.uint64(2**41 + 5), np.uint64(6), np.uint64(2**63 + 1029)):
        assert kernels._find(table, query, absent) == -1
    # The same through the builder: a query term colliding with a CV's term changes nothing.
    data = generate(DemoConfig(candidates=10, postings=2, applicants=(3, 4), seed=4))
    rng = np.random.default_rng(0)
    pc = [prepare_candidate(c, _unit(rng, 8), _unit(rng, 1, 8)) for c in data.candidates]
    pp = prepare_posting(data.postings[0], _unit(rng, 8))
    fake = pc[0].term_hashes[0] ^ np.uint64(1 << 40)  # same low bits, another term
    order = np.argsort(np.append(pp.term_hashes, fake))
    crowded = replace(
        pp,
        terms=(*pp.terms, "(fake)"),
        term_hashes=np.append(pp.term_hashes, fake)[order],
        in_text=np.append(pp.in_text, False)[order],
        in_required=np.append(pp.in_required, False)[order],
        required_slots=tuple(
            tuple(int(np.flatnonzero(order == w)[0]) for w in s) for s in pp.required_slots
        ),
    )
    lex = Lexicon.fit(data.candidates)
    np.testing.assert_array_equal(
        FeatureBuilder(lex).build(crowded, pc), FeatureBuilder(lex).build(pp, pc)
    )


def test_packed_arrays_that_disagree_with_their_counts_are_refused() -> None:
    # The compiled loop walks the arrays by the scalars' counts: a mismatch must stop it first.
    rng = np.random.default_rng(1)
    pc = [prepare_candidate(_cand(f"c{i}"), _unit(rng, 8), _unit(rng, 2, 8)) for i in range(3)]
    packed = PackedCandidates.of(pc)
    pp = prepare_posting(POSTING, _unit(rng, 8))
    builder = FeatureBuilder(Lexicon.fit([_cand("a")]))
    with pytest.raises(ValueError, match="vector rows"):
        builder.build(pp, replace(packed, vectors=packed.vectors[:-1]))
    with pytest.raises(ValueError, match="tags"):
        builder.build(pp, replace(packed, tags=packed.tags[:-1]))
    with pytest.raises(ValueError, match="same encoder"):
        builder.build(prepare_posting(POSTING, _unit(rng, 16)), packed)


def test_empty_candidate_list_and_bad_vectors() -> None:
    rng = np.random.default_rng(0)
    pp = prepare_posting(POSTING, _unit(rng, 8))
    x = FeatureBuilder(Lexicon.fit([_cand("a")])).build(pp, [])
    assert x.shape == (0, len(FEATURE_NAMES))
    with pytest.raises(InvalidInput, match="NaN"):
        prepare_candidate(_cand("a"), np.full(8, np.nan), _unit(rng, 1, 8))
    with pytest.raises(InvalidInput, match="same encoder"):
        prepare_candidate(_cand("a"), _unit(rng, 8), _unit(rng, 1, 4))


def test_fit_summary() -> None:
    c = _cand(
        "a",
        skills=("python", "dbt"),
        years_experience=3,
        location="Paris",
        willing_to_relocate=True,
    )
    s = fit_summary(POSTING, c)
    assert s.required_matched == ("python",)
    assert s.required_missing == ("sql", "machine learning")
    assert s.nice_matched == ("dbt",)
    assert not s.meets_experience
    assert s.location_fit == "willing to relocate"
    assert s.describe() == (
        "1/3 required skills (missing: sql, machine learning); nice-to-have: dbt; "
        "3 yrs vs 5 required; willing to relocate"
    )
    assert fit_summary(POSTING, _cand("b", location="Berlin")).location_fit == "same location"
    remote = dataclasses.replace(POSTING, remote=True, location="")
    assert fit_summary(remote, _cand("c", remote_ok=True)).location_fit == "remote"
    assert fit_summary(remote, _cand("d")).location_fit == "location mismatch"


def test_skills_and_locations_compare_normalised() -> None:
    assert phrase_key(" Machine-Learning ") == phrase_key("machine learning") == "machine learning"
    assert phrase_key("ZÜRICH") == phrase_key("Zurich")
    posting = dataclasses.replace(
        POSTING, location="Zürich", required_skills=("Machine-Learning", "C++")
    )
    cands = [
        _cand("a", location="ZURICH", skills=("machine learning", "c++")),
        _cand("b", location="Zurich, ", skills=("C#",)),
    ]
    x = _build(posting, cands)
    np.testing.assert_array_equal(x[:, COL["same_location"]], [1, 1])
    np.testing.assert_array_equal(x[:, COL["required_coverage"]], [1, 0])
    s = fit_summary(posting, cands[0])
    assert s.location_fit == "same location"
    assert s.required_matched == ("machine-learning", "c++") and not s.required_missing
    # Two spellings of one skill count once, on both sides.
    dup = _cand("c", skills=("machine learning", "Machine-Learning"))
    assert _build(posting, [dup])[0, COL["required_coverage"]] == 0.5
    assert _build(posting, [dup])[0, COL["skills_listed"]] == 1


def test_posting_without_location_has_neutral_location_features() -> None:
    nowhere = dataclasses.replace(POSTING, location="", remote=False)
    cands = [
        _cand("local", location="Berlin"),
        _cand("mover", location="Paris", willing_to_relocate=True),
        _cand("stayer", location="Paris"),
        _cand("remote", remote_ok=True),
    ]
    x = _build(nowhere, cands)
    for name in ("same_location", "remote_fit", "relocation_needed", "location_fit"):
        col = x[:, COL[name]]
        assert np.all(col == col[0]), f"{name} differs between candidates: {col}"
    np.testing.assert_array_equal(x[:, COL["relocation_needed"]], 0)
    np.testing.assert_array_equal(x[:, COL["location_fit"]], 1)
    # The recruiter's reasons say the same: no location, so nobody misses it.
    assert {fit_summary(nowhere, c).location_fit for c in cands} == {"no location requirement"}
    assert fit_summary(nowhere, cands[0]).describe().endswith("; no location requirement")


def test_candidate_text_is_redacted_before_embedding_and_counting() -> None:
    cv = (
        "Name: Jane Doe\n"
        "Senior Data Engineer\n"
        "Date of birth: 02.03.1985\n"
        "jane.doe@example.com | +44 20 7946 0958 | linkedin.com/in/janedoe\n"
        "Photo: https://cdn.example.com/jane.jpg\n"
        "Born on 2 March 1985. Python and SQL at Acme (Jan 2019 - Present), 2015-2019 at Foo.\n"
    )
    c = _cand("pii", cv_text=cv)
    text = candidate_text(c)
    for secret in ("Jane", "Doe", "1985", "example", "7946", "janedoe", "cdn", "Photo"):
        assert secret not in text, secret
    for kept in ("Senior Data Engineer", "Python and SQL", "Jan 2019 - Present", "2015-2019"):
        assert kept in text, kept
    rng = np.random.default_rng(0)
    prepared = prepare_candidate(c, _unit(rng, 8), _unit(rng, 1, 8))
    words = set(tokenize(text))
    assert {"jane", "doe", "janedoe", "7946"}.isdisjoint(words)
    assert len(prepared.term_hashes) == len(words)
    assert {"jane", "doe"}.isdisjoint(Lexicon.fit([c], min_df=1).df)


def _raw_similarities(
    lex: Lexicon, posting: Posting, pp: prepared.PreparedPosting, pcs: list
) -> np.ndarray:
    """dense_cosine, chunk_max_cosine and bm25 (the `RELATIVE_TO` columns) the obvious way."""
    query = {t for t in tokenize(posting_text(posting)) if t not in STOPWORDS}
    return np.array(
        [
            [
                c.doc_vector @ pp.vector,
                np.max(c.chunk_vectors @ pp.vector),
                _reference_bm25(lex, query, candidate_text(c.candidate)),
            ]
            for c in pcs
        ],
        dtype=np.float64,
    )


def test_relative_columns_equal_their_definition() -> None:
    assert features.RELATIVE_TO == ("dense_cosine", "chunk_max_cosine", "bm25")
    data = generate(DemoConfig(candidates=30, postings=2, applicants=(5, 8), seed=4))
    lex = Lexicon.fit(data.candidates)
    rng = np.random.default_rng(5)
    pc = [prepare_candidate(c, _unit(rng, 8), _unit(rng, 2, 8)) for c in data.candidates]
    posting = data.postings[0]
    pp = prepare_posting(posting, _unit(rng, 8))
    builder = FeatureBuilder(lex)
    raw = _raw_similarities(lex, posting, pp, pc)

    # Serving: the candidates are the reference set.
    x = builder.build(pp, pc)
    mean, std, best = raw.mean(axis=0), np.maximum(raw.std(axis=0), features.STD_FLOOR), raw.max(0)
    for j, name in enumerate(features.RELATIVE_TO):
        np.testing.assert_allclose(
            x[:, COL[f"{name}_z"]], (raw[:, j] - mean[j]) / std[j], atol=1e-4
        )
        np.testing.assert_allclose(x[:, COL[f"{name}_gap"]], best[j] - raw[:, j], atol=1e-5)
        assert x[:, COL[f"{name}_gap"]].min() == 0.0  # the best of the set has no gap

    # Training: a few rows against the statistics of a larger set are those rows of its build.
    some = [pc[3], pc[17], pc[8]]
    ref = builder.reference(pp, pc)
    np.testing.assert_array_equal(builder.build(pp, some, ref), x[[3, 17, 8]])
    # ... and differ from the same rows as their own reference set.
    assert not np.array_equal(builder.build(pp, some), x[[3, 17, 8]])


def test_reference_stats_ignore_order_and_floor_the_spread() -> None:
    rng = np.random.default_rng(6)
    raw = rng.random((50, 3)).astype(np.float32)
    a = features.ReferenceStats.of(raw)
    assert (
        a
        == features.ReferenceStats.of(raw[::-1])
        == features.ReferenceStats.of(raw[rng.permutation(50)])
    )
    assert a == features.ReferenceStats.from_dict(a.as_dict())
    assert a.n == 50 and a.best == tuple(raw.max(axis=0).astype(np.float64).tolist())
    flat = features.ReferenceStats.of(np.full((4, 3), 0.5, dtype=np.float32))
    assert flat.std == (features.STD_FLOOR,) * 3 and flat.mean == (0.5,) * 3


def test_bm25_reads_the_lexicon_it_is_given() -> None:
    data = generate(DemoConfig(candidates=40, postings=2, applicants=(5, 8), seed=9))
    rng = np.random.default_rng(2)
    pc = [prepare_candidate(c, _unit(rng, 8), _unit(rng, 1, 8)) for c in data.candidates]
    pp = prepare_posting(data.postings[0], _unit(rng, 8))
    frozen, pool = Lexicon.fit(data.candidates[:5]), Lexicon.fit(data.candidates)
    builder = FeatureBuilder(frozen)
    assert not np.array_equal(builder.build(pp, pc), builder.build(pp, pc, lexicon=pool))
    np.testing.assert_array_equal(
        builder.build(pp, pc, lexicon=pool), FeatureBuilder(pool).build(pp, pc)
    )


def test_kernels_compile_without_a_writable_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    # A read-only install run by a user without a home: numba finds nowhere to cache, and the
    # kernels must still compile (at every start) rather than fail to import.
    import numba.core.caching

    from ranker import kernels

    monkeypatch.setattr(numba.core.caching.CacheImpl, "_locator_classes", [])

    def twice(x: float) -> float:
        return 2 * x

    with pytest.raises(RuntimeError, match="no locator"):
        numba.njit(cache=True)(twice)  # what a plain cached njit does there
    assert kernels._compiled()(twice)(2.5) == 5.0
