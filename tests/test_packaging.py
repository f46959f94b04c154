"""Packaging: the wheel carries the stubs, the proto and the licence; a fresh install serves."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
import typer
from typer.testing import CliRunner

from ranker import __version__
from ranker.cli import app
from ranker.commands import encoder as encoder_commands
from ranker.commands import serving
from ranker.registry import ModelRegistry
from tests.fixtures.server import SERVING_DEMO
from training.demo import generate, write_demo

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "build_stubs.py", "LICENSE", "MANIFEST.in", "README.md")
PACKAGES = ("embeddings", "ranker", "training", "proto")

runner = CliRunner()


def _source_copy(dest: Path) -> Path:
    """The project as a fresh clone holds it: no generated stubs, no build leftovers."""
    dest.mkdir(parents=True)
    for name in SOURCES:
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.rmtree(dest / "ranker" / "v1", ignore_errors=True)  # generated, ignored by git
    return dest


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RANKER_") and k not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }
    return {**env, **extra}


def test_wheel_carries_stubs_proto_licence_and_metadata(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(src), "-w", str(tmp_path / "dist")],
        check=True, capture_output=True, text=True, env=_clean_env(), cwd=tmp_path, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("candidate_ranker-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(f"candidate_ranker-{__version__}.dist-info/METADATA").decode()
        proto = z.read("ranker/v1/ranker.proto").decode()
    for stub in ("__init__.py", "ranker_pb2.py", "ranker_pb2.pyi", "ranker_pb2_grpc.py"):
        assert f"ranker/v1/{stub}" in names
    assert proto == (ROOT / "proto/ranker/v1/ranker.proto").read_text(encoding="utf-8")
    assert f"candidate_ranker-{__version__}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in metadata
    assert f"Version: {__version__}" in metadata
    assert "Author:" in metadata and "Classifier: Programming Language :: Python :: 3" in metadata
    # Serving needs neither torch nor the stub generator at run time.
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if re.search(r"torch|sentence-transformers|grpcio-tools", r)]


def test_version_option() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"ranker {__version__}"


def test_export_encoder_without_the_export_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes an import fail as it does when the package is not installed.
    for name in encoder_commands._EXPORT_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    result = runner.invoke(app_with(encoder_commands), ["export-encoder", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "pip install 'candidate-ranker[export]'" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_serve_without_an_encoder_says_what_to_run(tmp_path: Path) -> None:
    result = runner.invoke(
        app_with(serving),
        ["serve", "--port", "0", "--metrics-port", "0"],
        env={"RANKER_DATA_DIR": str(tmp_path / "data")},
    )
    assert result.exit_code == 1
    assert "run `ranker export-encoder` first" in " ".join(result.output.split())
    assert not (tmp_path / "data" / "encoder").exists()  # nothing was exported behind our back


def app_with(module: ModuleType) -> typer.Typer:
    sub = typer.Typer()
    sub.callback()(lambda: None)  # a group even with one command: its name is then required
    module.register(sub)
    return sub


@pytest.mark.slow
def test_fresh_venv_install_then_version_ingest_serve_query(
    tmp_path: Path, encoder_dir: Path, trained_registry: ModelRegistry
) -> None:
    # A venv that sees the project's dependencies, pip and setuptools (a .pth line to their
    # site-packages, whose own .pth files, e.g. an editable install of this project, are not
    # processed) but not its code; without the old setuptools ensurepip would bring.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = _source_copy(tmp_path / "src")
    env = _clean_env()
    subprocess.run(
        [str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
        check=True, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    ranker = str(venv / "bin" / "ranker")
    where = subprocess.run(
        [str(vpy), "-c", "import ranker.v1.ranker_pb2 as m; print(m.__file__)"],
        check=True, capture_output=True, text=True, env=env, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert where.startswith(purelib), where  # the installed copy, not the source tree
    version = subprocess.run([ranker, "--version"], capture_output=True, text=True, env=env)
    assert version.stdout.strip() == f"ranker {__version__}", version.stderr

    demo = generate(SERVING_DEMO)
    write_demo(demo, tmp_path / "files")
    registry = tmp_path / "registry"
    shutil.copytree(trained_registry.root, registry, ignore=shutil.ignore_patterns(".lock"))
    env = _clean_env(
        RANKER_DATA_DIR=str(tmp_path / "data"),
        RANKER_ENCODER_DIR=str(encoder_dir),
        RANKER_REGISTRY_DIR=str(registry),
        RANKER_DEMO_DIR=str(tmp_path / "files"),
        RANKER_PORT="0",
        RANKER_METRICS_PORT="0",
    )
    ingest = subprocess.run(
        [ranker, "ingest"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert ingest.returncode == 0, ingest.stderr + ingest.stdout
    proc = subprocess.Popen(
        [ranker, "serve"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            if m := re.search(r"listening on [\d.]+:(\d+)", line):
                port = int(m.group(1))
                break
        assert port, "the server never said where it listens"
        address = f"127.0.0.1:{port}"
        for _ in range(300):
            health = subprocess.run(
                [ranker, "health", "--address", address], capture_output=True, text=True, env=env
            )
            if health.returncode == 0:
                break
            time.sleep(0.2)
        assert "SERVING" in health.stdout, health.stderr
        query = subprocess.run(
            [ranker, "query", "--posting-id", demo.postings[0].id, "--k", "3",
             "--address", address],
            capture_output=True, text=True, env={**env, "COLUMNS": "200"}, timeout=120,
        )  # fmt: skip
        assert query.returncode == 0, query.stderr
        assert str(trained_registry.current_version()) in query.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=60)
