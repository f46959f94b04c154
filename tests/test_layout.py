"""The layout contract of DESIGN.md: package boundaries hold."""

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
