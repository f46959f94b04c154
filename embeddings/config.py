"""Settings of the text encoder: where it lives and how ONNX Runtime runs it (env prefix `RANKER_`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GraphOptimization = Literal["disable", "basic", "extended", "all"]


@dataclass(frozen=True)
class OrtSessionSettings:
    """How ONNX Runtime runs one model: what `embeddings.runtime.make_session` takes.

    Shared by the text encoder and the ranking model's scorer. Kept here rather than beside
    `make_session` so the settings (imported by every CLI command) never load onnxruntime.
    """

    intra_op_threads: int = 0
    """Threads inside one operator; 0 means one per physical core."""

    inter_op_threads: int = 1
    """Threads across operators."""

    graph_optimization: GraphOptimization = "all"
    """Graph optimisation level."""

    allow_spinning: bool = False
    """Whether idle worker threads busy-wait for the next run."""

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 1:
            raise ValueError(
                "ONNX Runtime needs intra_op_threads >= 0 (0: one per core) and "
                f"inter_op_threads >= 1, got {self.intra_op_threads} and {self.inter_op_threads}"
            )


class EncoderSettings(BaseSettings):
    """The encoder's part of the service settings; `ranker.config.Settings` extends it.

    `embeddings` may import nothing else of ours, so the encoder's fields live here and the
    service's single settings object inherits them rather than duplicating them.
    """

    model_config = SettingsConfigDict(env_prefix="RANKER_", extra="ignore")

    data_dir: Path = Field(default=Path("data"))
    """Root of the embedded default: store, index, encoder, registry and demo data live below it."""

    encoder_dir: Path | None = None
    """Folder of the exported ONNX encoder; defaults to `<data_dir>/encoder`."""

    intra_op_threads: int = Field(default=0, ge=0)
    """ONNX Runtime threads inside one operator; 0 lets ONNX Runtime use one per physical core."""

    inter_op_threads: int = Field(default=1, ge=1)
    """ONNX Runtime threads across operators; the graphs here are sequential, so 1 is right."""

    ort_allow_spinning: bool = False
    """Let ONNX Runtime's idle worker threads spin (busy-wait) for the next run. Off: on a
    small, shared CPU their spinning slows the work that follows; on for pure batch encoding."""

    graph_optimization: GraphOptimization = "all"
    """ONNX Runtime graph optimisation level for every session we create."""

    encoder_batch_size: int = Field(default=32, ge=1, le=1024)
    """Texts per ONNX call when encoding; texts are sorted by length first."""

    encoder_quantized: bool = False
    """Use the int8-quantised encoder (`model.int8.onnx`) when the export produced one."""

    chunk_overlap: int = Field(default=32, ge=0)
    """Tokens shared by neighbouring chunks of a text longer than the model window."""

    @property
    def ort_session(self) -> OrtSessionSettings:
        """The ONNX Runtime settings above, as `make_session` takes them (encoder and scorer)."""
        return OrtSessionSettings(
            intra_op_threads=self.intra_op_threads,
            inter_op_threads=self.inter_op_threads,
            graph_optimization=self.graph_optimization,
            allow_spinning=self.ort_allow_spinning,
        )

    @property
    def resolved_encoder_dir(self) -> Path:
        """The encoder folder, defaulting below the data folder."""
        return self.encoder_dir if self.encoder_dir is not None else self.data_dir / "encoder"
