"""Build hook: generate the gRPC stubs from the proto and ship both inside the `ranker.v1` package.

`pip install .` (or `pip wheel .`) runs `build_py`; this subclass runs grpc_tools' protoc (a
pinned build requirement in pyproject.toml) so that a wheel never depends on `make` having run.
An editable install (`pip install -e .`) generates into the source tree instead, as `make proto`
does, because the package is then imported from there.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"
PROTO = Path("ranker") / "v1" / "ranker.proto"
STUBS = ("ranker_pb2.py", "ranker_pb2.pyi", "ranker_pb2_grpc.py")


def generate_stubs(out: Path) -> None:
    """Write ranker/v1/{__init__.py, ranker.proto, stubs} under `out` (a package root)."""
    from grpc_tools import protoc  # a build requirement, not a runtime one

    well_known = resources.files("grpc_tools") / "_proto"
    package = out / "ranker" / "v1"
    package.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_ROOT / PROTO}; see its message above")
    shutil.copyfile(PROTO_ROOT / PROTO, package / "ranker.proto")
    init = package / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC stubs of proto/ranker/v1/ranker.proto."""\n')


def _stale(package: Path) -> bool:
    source = PROTO_ROOT / PROTO
    targets = [package / name for name in (*STUBS, "__init__.py", "ranker.proto")]
    return any(not t.exists() or t.stat().st_mtime < source.stat().st_mtime for t in targets)


class BuildPyWithStubs(build_py):
    """setuptools' build_py, plus the generated stubs and the proto in `ranker/v1/`."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            if _stale(ROOT / "ranker" / "v1"):
                generate_stubs(ROOT)
        else:
            generate_stubs(Path(self.build_lib))
