"""ONNX Runtime sessions: threads and graph optimisation come from the settings, in one place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from embeddings.config import OrtSessionSettings
from embeddings.runtime import make_session, physical_cores
from tests.fixtures.encoder import encoder_test_settings


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def test_threads_and_optimisation_come_from_settings(tiny_model: Path) -> None:
    settings = OrtSessionSettings(intra_op_threads=1, graph_optimization="basic")
    session = make_session(tiny_model, settings)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert session.get_providers() == ["CPUExecutionProvider"]
    out = session.run(None, {"x": np.array([-1.0, 2.0], dtype=np.float32)})[0]
    np.testing.assert_array_equal(out, [0.0, 2.0])


def test_zero_threads_means_one_per_physical_core(tiny_model: Path) -> None:
    session = make_session(tiny_model, OrtSessionSettings(intra_op_threads=0))
    assert session.get_session_options().intra_op_num_threads == physical_cores() >= 1


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="export or register it first"):
        make_session(tmp_path / "absent.onnx", OrtSessionSettings())


@pytest.mark.parametrize(("allow", "entry"), [(False, "0"), (True, "1")])
def test_thread_spinning_follows_the_setting(tiny_model: Path, allow: bool, entry: str) -> None:
    session = make_session(tiny_model, OrtSessionSettings(allow_spinning=allow))
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry


def test_the_ranker_settings_carry_the_env_variables_into_the_session_settings() -> None:
    # RANKER_INTRA_OP_THREADS & co. keep their names; both models read them through one type.
    settings = encoder_test_settings(
        intra_op_threads=3,
        inter_op_threads=2,
        graph_optimization="extended",
        ort_allow_spinning=True,
    )
    assert settings.ort_session == OrtSessionSettings(
        intra_op_threads=3, inter_op_threads=2, graph_optimization="extended", allow_spinning=True
    )


def test_impossible_thread_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="inter_op_threads >= 1"):
        OrtSessionSettings(inter_op_threads=0)
