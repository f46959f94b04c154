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


def test_card_states_leakage_lexicon_and_redaction_limits(trained_registry: ModelRegistry) -> None:
    card = trained_registry.card("v0001")
    assert "record as stored now" in card["limitations"]
    lexicon = card["lexicon"]
    assert lexicon["min_df"] == 3 and lexicon["terms"] > 0
    assert lexicon["documents"] < card["data"]["counts"]["candidates"]
    assert "at least 3" in lexicon["note"] and "training postings" in lexicon["note"]
    assert "never inputs" in card["fairness_note"] and "proxies" in card["fairness_note"]
    md = (trained_registry.version_dir("v0001") / "MODEL_CARD.md").read_text()
    assert "at least 3" in md and "redacted" in md
