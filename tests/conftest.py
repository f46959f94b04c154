"""Session-wide fixtures, one module per area, so expensive artefacts are built once per run."""

from __future__ import annotations

import os

# The bundled sentence-transformer must load from site-packages, never from a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = [
    "tests.fixtures.encoder",  # exported ONNX encoder (embeddings)
    "tests.fixtures.training",  # small demo data set and a trained, registered model (training)
    "tests.fixtures.server",  # a real gRPC server on port 0 with a real stub (serving)
    "tests.fixtures.recruiter",  # a server seeded with the recruiter's problem cases (issue 13)
    "tests.fixtures.postgres",  # a real PostgreSQL server, started and stopped by the run
    "tests.fixtures.dask",  # a LocalCluster of 2 worker processes (offline work on Dask)
]
