"""Model registry: versions, promote/rollback through the pointer, atomic writes, refusals."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from filelock import FileLock, Timeout

from ranker.errors import InvalidInput, ModelRejected, NotFound
from ranker.features import FEATURE_NAMES
from ranker.registry import (
    BOOSTER_FILE,
    CARD_FILE,
    CARD_MD_FILE,
    LEXICON_FILE,
    LOCK_FILE,
    MODEL_FILE,
    POINTER_FILE,
    ModelRegistry,
)
from training.card import render_markdown
from training.train import TrainResult


def _register(registry: ModelRegistry, result: TrainResult, **overrides: object) -> str:
    values: dict[str, object] = {
        "onnx_model": result.onnx_model,
        "booster_text": result.booster_text,
        "lexicon": result.lexicon,
        "check_rows": result.check_rows,
        "check_scores": result.check_scores,
        "card": result.card,
        "render_card": render_markdown,
    }
    values.update(overrides)
    return registry.register(**values)  # type: ignore[arg-type]


def _folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def test_trained_registry_has_one_promoted_version(trained_registry: ModelRegistry) -> None:
    assert trained_registry.versions() == ["v0001"]
    assert trained_registry.current_version() == "v0001"
    folder = trained_registry.version_dir("v0001")
    for name in (MODEL_FILE, BOOSTER_FILE, LEXICON_FILE, CARD_FILE, CARD_MD_FILE):
        assert (folder / name).is_file(), name
    bundle = trained_registry.load()
    bundle.check()
    assert bundle.version == "v0001"
    assert bundle.feature_names == FEATURE_NAMES
    assert bundle.booster_path == folder / BOOSTER_FILE
    assert bundle.card["version"] == "v0001"


def test_promote_and_rollback_walk_the_history(
    tmp_path: Path, trained_model: tuple[ModelRegistry, TrainResult]
) -> None:
    _, result = trained_model
    registry = ModelRegistry(tmp_path / "reg")
    assert registry.versions() == [] and registry.current_version() is None
    with pytest.raises(NotFound, match="ranker train"):
        registry.load()
    v1, v2, v3 = (_register(registry, result) for _ in range(3))
    assert [v1, v2, v3] == ["v0001", "v0002", "v0003"] == registry.versions()
    assert registry.current_version() is None  # registering does not promote

    registry.promote(v1)
    registry.promote(v3)
    registry.promote(v3)  # promoting the version in service changes nothing
    registry.promote(v2)
    assert registry.current_version() == v2
    assert registry.history() == [v1, v3, v2]
    assert registry.rollback() == v3
    assert registry.rollback() == v1
    assert registry.current_version() == v1
    with pytest.raises(NotFound, match="no earlier promoted version"):
        registry.rollback()
    pointer = json.loads((registry.root / POINTER_FILE).read_text())
    assert pointer["current"] == v1
    assert [e["action"] for e in pointer["events"]] == [
        "promote",
        "promote",
        "promote",
        "rollback",
        "rollback",
    ]


def test_unknown_and_malformed_versions(registry_path: Path) -> None:
    registry = ModelRegistry(registry_path)
    with pytest.raises(NotFound, match="v0042 is not in"):
        registry.promote("v0042")
    with pytest.raises(InvalidInput, match="look like v0001"):
        registry.card("../etc")


def test_pointer_write_is_atomic(
    registry_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    trained_model: tuple[ModelRegistry, TrainResult],
) -> None:
    registry = ModelRegistry(registry_path)
    v2 = _register(registry, trained_model[1])
    before = (registry.root / POINTER_FILE).read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        registry.promote(v2)
    monkeypatch.undo()
    # The old pointer is intact and no temporary file is left behind.
    assert (registry.root / POINTER_FILE).read_bytes() == before
    assert registry.current_version() == "v0001"
    assert not [p for p in registry.root.iterdir() if p.name.startswith(f".{POINTER_FILE}")]


def test_register_refuses_a_model_whose_parity_fails(
    tmp_path: Path, trained_model: tuple[ModelRegistry, TrainResult]
) -> None:
    _, result = trained_model
    registry = ModelRegistry(tmp_path / "reg")
    wrong = np.asarray(result.check_scores) + 0.01
    with pytest.raises(ModelRejected, match="differ from those recorded at training"):
        _register(registry, result, check_scores=wrong)
    # Nothing half-written stays: no version, no temporary folder.
    assert registry.versions() == []
    assert _folders(registry.root) == []


def test_register_refuses_different_feature_names(
    tmp_path: Path, trained_model: tuple[ModelRegistry, TrainResult]
) -> None:
    _, result = trained_model
    registry = ModelRegistry(tmp_path / "reg")
    card = dict(result.card)
    card["feature_names"] = [*FEATURE_NAMES[:-1], "renamed"]
    with pytest.raises(ModelRejected, match="trained on features"):
        _register(registry, result, card=card)
    assert registry.versions() == []


def test_load_refuses_changed_files_and_promote_keeps_the_old_version(
    registry_path: Path, trained_model: tuple[ModelRegistry, TrainResult]
) -> None:
    registry = ModelRegistry(registry_path)
    v2 = _register(registry, trained_model[1])
    onnx = registry.version_dir(v2) / MODEL_FILE
    onnx.write_bytes(onnx.read_bytes()[:-10])
    with pytest.raises(ModelRejected, match="changed since"):
        registry.promote(v2)
    assert registry.current_version() == "v0001"


def test_check_refuses_names_differing_from_the_builder(registry_path: Path) -> None:
    registry = ModelRegistry(registry_path)
    card_path = registry.version_dir("v0001") / CARD_FILE
    card = json.loads(card_path.read_text())
    card["feature_names"] = list(reversed(card["feature_names"]))
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelRejected, match="retrain"):
        registry.load("v0001").check()


def test_model_card_content(trained_registry: ModelRegistry) -> None:
    card = trained_registry.card("v0001")
    assert card["feature_names"] == list(FEATURE_NAMES)
    test = card["metrics"]["test"]
    assert {"model", "dense_cosine", "bm25"} <= set(test)
    assert set(test["model"]) >= {"ndcg@5", "ndcg@10", "mrr", "recall@10"}
    assert len(card["data"]["sha256"]) == 64
    assert card["data"]["counts"]["postings"] == 12
    split = card["data"]["split"]
    assert split["valid_start"] < split["test_start"]
    assert card["seed"] == card["params"]["seed"]
    assert card["parity"]["max_abs_diff"] <= 1e-4
    assert card["code_version"] != "unknown"
    assert card["intended_use"] and card["limitations"] and card["fairness_note"]
    md = (trained_registry.version_dir("v0001") / CARD_MD_FILE).read_text()
    assert "# Model card: candidate ranker v0001" in md
    assert "| dense_cosine |" in md and card["data"]["sha256"] in md


def _replace_booster(registry: ModelRegistry, version: str, text: str) -> None:
    """Overwrite model.txt and update its digest in the card, so only `check()` can catch it."""
    folder = registry.version_dir(version)
    (folder / BOOSTER_FILE).write_text(text, encoding="utf-8")
    card = json.loads((folder / CARD_FILE).read_text())
    card["files"][BOOSTER_FILE] = hashlib.sha256((folder / BOOSTER_FILE).read_bytes()).hexdigest()
    (folder / CARD_FILE).write_text(json.dumps(card))


def _other_booster(names: list[str]) -> str:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, len(names)))
    data = lgb.Dataset(x, x[:, 0] + rng.normal(size=200), feature_name=names)
    params = {"objective": "regression", "verbosity": -1, "num_threads": 1, "seed": 1}
    return str(lgb.train(params, data, num_boost_round=5).model_to_string())


def test_check_refuses_a_garbage_booster_file(
    registry_path: Path, trained_model: tuple[ModelRegistry, TrainResult]
) -> None:
    registry = ModelRegistry(registry_path)
    v2 = _register(registry, trained_model[1])
    _replace_booster(registry, v2, "this is not a LightGBM model\n")
    with pytest.raises(ModelRejected, match="model.txt is not a loadable LightGBM model"):
        registry.load(v2).check()
    with pytest.raises(ModelRejected, match="not a loadable LightGBM model"):
        registry.promote(v2)
    assert registry.current_version() == "v0001"


def test_check_refuses_a_booster_naming_other_features(
    registry_path: Path, trained_model: tuple[ModelRegistry, TrainResult]
) -> None:
    registry = ModelRegistry(registry_path)
    v2 = _register(registry, trained_model[1])
    _replace_booster(registry, v2, _other_booster([f"f{i}" for i in range(len(FEATURE_NAMES))]))
    with pytest.raises(ModelRejected, match="model.txt names features"):
        registry.load(v2).check()


def test_check_refuses_a_booster_that_disagrees_with_the_onnx_model(
    registry_path: Path, trained_model: tuple[ModelRegistry, TrainResult]
) -> None:
    registry = ModelRegistry(registry_path)
    v2 = _register(registry, trained_model[1])
    _replace_booster(registry, v2, _other_booster(list(FEATURE_NAMES)))
    with pytest.raises(ModelRejected, match="ONNX scores differ from LightGBM's"):
        registry.load(v2).check()


def test_register_refuses_a_garbage_booster(
    tmp_path: Path, trained_model: tuple[ModelRegistry, TrainResult]
) -> None:
    registry = ModelRegistry(tmp_path / "reg")
    with pytest.raises(ModelRejected, match="not a loadable LightGBM model"):
        _register(registry, trained_model[1], booster_text="garbage")
    assert registry.versions() == [] and _folders(registry.root) == []


def test_evaluations_are_stored_beside_the_version(registry_path: Path) -> None:
    registry = ModelRegistry(registry_path)
    assert registry.evaluations("v0001") == []
    first = registry.record_evaluation("v0001", {"metrics": {"model": {"ndcg@10": 0.5}}})
    registry.record_evaluation("v0001", {"metrics": {"model": {"ndcg@10": 0.6}}})
    assert first.parent == registry.version_dir("v0001") / "evaluations"
    got = [e["metrics"]["model"]["ndcg@10"] for e in registry.evaluations("v0001")]
    assert got == [0.5, 0.6]
    # The version still loads: evaluations are outside its file digests.
    registry.load("v0001").check()
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]


def test_check_refuses_a_model_trained_on_other_feature_code(
    registry_path: Path,
    trained_model: tuple[ModelRegistry, TrainResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same feature names, changed computation (FEATURES_VERSION bumped): refused, not served."""
    import ranker.registry as registry_module

    registry = ModelRegistry(registry_path)
    version = registry.current_version()
    assert version is not None
    registry.load(version).check()
    monkeypatch.setattr(registry_module, "FEATURES_VERSION", registry_module.FEATURES_VERSION + 1)
    with pytest.raises(ModelRejected, match="feature code version"):
        registry.load(version).check()


def test_writers_hold_a_lock_other_processes_see(tmp_path: Path) -> None:
    # Any process locking `<registry>/.lock` (as every writer does) is refused meanwhile.
    registry = ModelRegistry(tmp_path / "reg")
    other = FileLock(tmp_path / "reg" / LOCK_FILE, timeout=0)
    with registry._locked():
        with pytest.raises(Timeout):
            other.acquire()
    with other:  # released with the block
        pass
    assert (tmp_path / "reg" / LOCK_FILE).is_file()  # kept, so every writer locks one inode


def test_aliases_and_history_record_actor_and_reason(
    registry_path: Path, trained_model: tuple[ModelRegistry, TrainResult]
) -> None:
    registry = ModelRegistry(registry_path)
    v1 = registry.current_version()
    assert v1 is not None
    v2 = _register(registry, trained_model[1])
    registry.set_alias("challenger", v2, actor="ana", reason="try the retrain")
    assert registry.aliases() == {"champion": v1, "challenger": v2}
    event = registry.events()[-1]
    assert (event["action"], event["alias"], event["version"]) == ("set-alias", "challenger", v2)
    assert event["actor"] == "ana" and event["reason"] == "try the retrain" and event["at"]
    with pytest.raises(InvalidInput, match="champion"):
        registry.set_alias("challenger", v1)
    with pytest.raises(InvalidInput, match="ranker models promote"):
        registry.set_alias("champion", v2)
    # Promoting the challenger makes it the champion and clears the alias, in one event.
    registry.promote(v2, actor="bo", reason="won in shadow")
    assert registry.aliases() == {"champion": v2}
    event = registry.events()[-1]
    assert event["actor"] == "bo" and event["cleared_alias"] == "challenger"
    assert event["replaced"] == v1 and event["forced"] is False
    assert registry.rollback(actor="cy", reason="complaints") == v1
    event = registry.events()[-1]
    assert (event["action"], event["actor"], event["reason"]) == ("rollback", "cy", "complaints")
    with pytest.raises(NotFound, match="no alias"):
        registry.clear_alias("challenger")


def test_gate_verdict_needs_passed_gates_measured_against_what_serves(
    registry_path: Path, trained_model: tuple[ModelRegistry, TrainResult]
) -> None:
    registry = ModelRegistry(registry_path)
    v1 = registry.current_version()
    v2 = _register(registry, trained_model[1])
    verdict = registry.gate_verdict(v2, v1)
    assert not verdict.ok and "ranker gates" in str(verdict.problem)
    gates = [
        {"gate": "beats_retrieval", "passed": True},
        {"gate": "vs_in_service", "passed": False},
    ]
    registry.record_gates(v2, {"passed": False, "in_service": v1, "gates": gates})
    verdict = registry.gate_verdict(v2, v1)
    assert not verdict.ok and "vs_in_service" in str(verdict.problem)
    assert "beats_retrieval" not in str(verdict.problem)
    registry.record_gates(v2, {"passed": True, "in_service": v1, "gates": gates[:1]})
    assert registry.gate_verdict(v2, v1).ok
    stale = registry.gate_verdict(v2, "v0009")
    assert not stale.ok and f"measured against {v1}" in str(stale.problem)
    # gates.json is outside the file digests: the version still loads and checks.
    registry.load(v2).check()
