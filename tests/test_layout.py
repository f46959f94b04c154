"""The layout contract: package boundaries hold, and the modules below them layer as documented."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_levels(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        if "v1" in path.parts:  # generated gRPC code
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_embeddings_imports_nothing_else_of_ours() -> None:
    assert not _imported_top_levels("embeddings") & {"ranker", "training"}


def test_ranker_never_imports_training() -> None:
    assert "training" not in _imported_top_levels("ranker")


def test_serving_path_does_not_import_torch() -> None:
    # torch is for exporting the encoder only; serving runs on onnxruntime + tokenizers.
    for package in ("ranker",):
        assert not _imported_top_levels(package) & {
            "torch",
            "sentence_transformers",
            "transformers",
        }


def _imported_modules(module: str) -> set[str]:
    """Full names of the modules one module of ours imports (absolute imports)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_text_normalisation_imports_nothing_of_ours() -> None:
    # Records, prepared features, filters and reasons all compare terms through it.
    ours = {"embeddings", "ranker", "training"}
    assert not {m.split(".")[0] for m in _imported_modules("ranker.text")} & ours


def test_features_layer_text_prepared_lexicon_builder() -> None:
    # text <- prepared <- lexicon <- features <- explain: each reads only the layers below it,
    # so the feature code never drags in LightGBM, the store or the serving pipeline.
    below = {
        "ranker.prepared": {"ranker.domain", "ranker.errors", "ranker.redaction", "ranker.text"},
        "ranker.lexicon": {"ranker.domain", "ranker.errors", "ranker.prepared", "ranker.text"},
        "ranker.features": {"ranker.lexicon", "ranker.prepared"},
    }
    for module, allowed in below.items():
        ours = {m for m in _imported_modules(module) if m.split(".")[0] == "ranker"}
        assert ours <= allowed, (module, ours - allowed)
