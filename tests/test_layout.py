"""The layout contract: package boundaries hold, modules layer as documented, gRPC stays in the
transport, modules stay small."""

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


def _imported_modules(where: Path | str) -> set[str]:
    """Absolute module names one file imports; `where` is a path or a dotted module of ours."""
    path = where if isinstance(where, Path) else ROOT / (where.replace(".", "/") + ".py")
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
    # text <- prepared <- lexicon <- features <- reasons <- explain: each reads only the layers
    # below it,
    # so the feature code never drags in LightGBM, the store or the serving pipeline.
    below = {
        "ranker.prepared": {"ranker.domain", "ranker.errors", "ranker.redaction", "ranker.text"},
        "ranker.lexicon": {"ranker.domain", "ranker.errors", "ranker.prepared", "ranker.text"},
        "ranker.kernels": {"ranker.prepared"},
        "ranker.features": {"ranker.kernels", "ranker.lexicon", "ranker.prepared"},
        "ranker.reasons": {"ranker.features"},
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


def _ranker_modules() -> list[Path]:
    return [p for p in (ROOT / "ranker").rglob("*.py") if "v1" not in p.relative_to(ROOT).parts]


# The CLI client commands talk to a running service through the generated stubs themselves.
GRPC_CLIENTS = {
    "ranker/commands/serving.py",
    "ranker/commands/models.py",
    "ranker/commands/query.py",
    "ranker/commands/client.py",
}


def test_only_the_transport_imports_grpc() -> None:
    for path in _ranker_modules():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("ranker/transport/") or rel in GRPC_CLIENTS:
            continue
        grpc_imports = {
            m for m in _imported_modules(path) if m.split(".")[0] in {"grpc", "grpc_health"}
        }
        grpc_imports |= {m for m in _imported_modules(path) if m.startswith("ranker.v1")}
        assert not grpc_imports, f"{rel} imports {sorted(grpc_imports)}: gRPC is the transport's"


def test_the_domain_side_never_imports_the_transport() -> None:
    # The pipeline and everything below it are transport-free; only the CLI wires the server.
    for path in _ranker_modules():
        rel = path.relative_to(ROOT).as_posix()
        # The CLI and the review page (`ranker web`) are clients of the service.
        if rel.startswith(("ranker/transport/", "ranker/commands/", "ranker/web/")):
            continue
        transport = {m for m in _imported_modules(path) if m.startswith("ranker.transport")}
        assert not transport, f"{rel} imports {sorted(transport)}"


def test_the_transport_package_imports_nothing_itself() -> None:
    # `ranker query` imports ranker.transport.convert; the package must not drag in the server.
    assert not _imported_modules(ROOT / "ranker" / "transport" / "__init__.py")


MAX_MODULE_LINES = 600
OVERSIZED: set[str] = set()
"""Modules allowed over the limit, each with its reason; none today."""


def test_no_module_in_ranker_is_over_600_lines() -> None:
    sizes = {
        p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
        for p in _ranker_modules()
    }
    over = {rel: n for rel, n in sizes.items() if n > MAX_MODULE_LINES and rel not in OVERSIZED}
    assert not over, f"split these along their seams: {over}"
    # An exemption that no longer applies must go, so the list stays honest.
    assert all(sizes.get(rel, 0) > MAX_MODULE_LINES for rel in OVERSIZED)
