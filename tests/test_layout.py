"""The layout contract: package boundaries hold, and the modules below them layer as documented."""

from __future__ import annotations

import ast
import subprocess
import sys
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


def _modules_naming(name: str, packages: tuple[str, ...]) -> set[str]:
    """Modules (relative paths) that use `name` as an identifier or attribute."""
    found: set[str] = set()
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            if "v1" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Attribute) and node.attr == name) or (
                    isinstance(node, ast.Name) and node.id == name
                ):
                    found.add(path.relative_to(ROOT).as_posix())
    return found


def test_embeddings_runtime_is_the_only_place_creating_onnx_runtime_sessions() -> None:
    # Encoder and scorer alike get their threads and optimisation from one `make_session`.
    packages = ("embeddings", "ranker", "training", "bench")
    assert _modules_naming("InferenceSession", packages) == {"embeddings/runtime.py"}
    assert "onnxruntime" not in _imported_top_levels("ranker") | _imported_top_levels("training")


def test_settings_and_the_offline_ingest_path_load_no_model_runtime() -> None:
    # Every CLI command builds the settings; `ranker query` and `ranker health` must stay light.
    code = (
        "import sys; import ranker.config, ranker.encoding, ranker.ingest, ranker.index; "
        "print(sorted({'onnxruntime', 'tokenizers', 'torch', 'lightgbm'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_file_locks_go_through_filelock() -> None:
    # One locking library (flock underneath), no hand-rolled fcntl calls to keep correct.
    assert "fcntl" not in _imported_top_levels("ranker") | _imported_top_levels("training")
