"""The one place that creates ONNX Runtime sessions: providers, threads and graph optimisation."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort
import psutil

from embeddings.config import OrtSessionSettings

log = logging.getLogger(__name__)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings share one FMA unit, so they don't count)."""
    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    try:
        # A container or `taskset` may pin us to fewer CPUs than the machine has.
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        allowed = physical
    return max(1, min(physical, allowed))


def intra_op_threads(settings: OrtSessionSettings) -> int:
    """Threads one operator may use: the setting, or one per physical core when it is 0."""
    return settings.intra_op_threads or physical_cores()


def make_session(path: Path, settings: OrtSessionSettings | None = None) -> ort.InferenceSession:
    """Open an ONNX model on the CPU with the given threads and graph optimisation."""
    settings = settings if settings is not None else OrtSessionSettings()
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist; export or register it first")
    options = ort.SessionOptions()
    # Set explicitly rather than leaving 0 to ONNX Runtime, so the count is the one torch gets
    # in the benchmark, shows in logs, and respects CPU affinity: oversubscribed threads on a
    # pinned container make GEMMs slower, not faster.
    options.intra_op_num_threads = intra_op_threads(settings)
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization]
    # Spinning worker threads keep a core busy after each run, waiting for more work; in a
    # service whose next step (FAISS, features) runs on the same two cores they steal its time.
    # Measured here: inline encode 36-40 ms -> 12-19 ms, and the search after it 31 -> 13 ms.
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0"
    )
    # ORT's "Please consider ..." notices are noise in a service log; errors still surface as raises.
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    log.debug(
        "opened %s with %d intra-op threads, optimisation %s",
        path.name,
        options.intra_op_num_threads,
        settings.graph_optimization,
    )
    return session
