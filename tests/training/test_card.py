"""Model card: the code version says when the tree had uncommitted changes; the notes are honest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ranker.registry import ModelRegistry
from training.card import code_version


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_code_version_marks_uncommitted_changes(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    clean = code_version(tmp_path)
    assert clean.startswith("git:") and len(clean) == len("git:") + 40
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) == clean + "-dirty"
    _git(tmp_path, "commit", "-q", "-am", "two")
    (tmp_path / "new.py").write_text("")  # untracked files count too
    assert code_version(tmp_path).endswith("-dirty")


def test_code_version_outside_a_checkout(tmp_path: Path) -> None:
    assert not code_version(tmp_path).startswith("git:")


def test_card_states_point_in_time_lexicon_and_redaction_limits(
    trained_registry: ModelRegistry,
) -> None:
    card = trained_registry.card("v0001")
    assert "record as stored now" not in card["limitations"]
    assert "current when they applied" in card["limitations"]
    lexicon = card["lexicon"]
    assert lexicon["min_df"] == 3 and lexicon["terms"] > 0
    # The whole pool's statistics (as serving's live lexicon holds them), not the applicants'.
    assert lexicon["documents"] == card["data"]["counts"]["candidates"]
    assert "at least 3" in lexicon["note"] and "live pool" in lexicon["note"]
    assert "never inputs" in card["fairness_note"] and "proxies" in card["fairness_note"]
    md = (trained_registry.version_dir("v0001") / "MODEL_CARD.md").read_text()
    assert "at least 3" in md and "redacted" in md


def test_card_holds_both_views_baselines_and_paired_differences(
    trained_registry: ModelRegistry,
) -> None:
    card = trained_registry.card("v0001")
    ev = card["evaluation"]
    assert ev["relevant_at_or_above"] == 2 and "expectation over all orders" in ev["ties"]
    assert "count as not relevant" in ev["unlabelled"]
    assert ev["in_service"] is None  # the first version had nothing to compare with
    for name in ("applicants", "pool"):
        view = ev["views"][name]
        assert set(view["metrics"]) == {"model", *ev["baselines"]}
        assert {"retrieval", "hand_rule", "dense_cosine", "bm25", "required_coverage"} <= set(
            ev["baselines"]
        )
        ndcg = view["metrics"]["model"]["ndcg@10"]
        assert ndcg["ci_low"] <= ndcg["mean"] <= ndcg["ci_high"]
        assert ndcg["n"] + ndcg["undefined"] == view["postings"] >= 1
        assert "postings_without_relevant" in view
        diff = view["differences"]["model - retrieval"]["mrr"]
        assert diff["verdict"] in ("higher", "lower", "no significant difference")
    assert ev["views"]["pool"]["relevant_retrieved"] <= ev["views"]["pool"]["relevant_applicants"]
    # `ranker models list` reads the short summary.
    assert (
        card["metrics"]["test"]["model"]["ndcg@10"]
        == (ev["views"]["applicants"]["metrics"]["model"]["ndcg@10"]["mean"])
    )
    md = (trained_registry.version_dir("v0001") / "MODEL_CARD.md").read_text()
    assert "### Applicant view" in md and "### Pool view" in md and "| hand_rule |" in md
    assert "| model - retrieval |" in md and "not relevant" in md and "tied candidates" in md
    assert "n (postings defined)" in md
