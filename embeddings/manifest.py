"""The manifest of an exported encoder folder: validated, frozen, and checked against the files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embeddings.files import sha256_file

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
INT8_MODEL_FILE = "model.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"

# Bumped whenever the exported graph or folder layout changes, so `--if-missing` redoes old exports.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class EncoderManifest:
    """What an export folder holds: the model's shape, file hashes and the figures measured at export."""

    model_name: str
    dim: int
    max_seq_length: int
    opset: int
    files: dict[str, str]
    """File name -> sha256, for every file the encoder reads."""
    special_tokens: dict[str, str]
    """`cls`, `sep` and `pad` token strings of the tokenizer."""
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    format: int = FORMAT_VERSION
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    output: str = "sentence_embedding"
    fused_ops: dict[str, int] = field(default_factory=dict)
    """Operators ONNX Runtime's transformer optimiser fused at export (Attention, SkipLayerNorm...)."""
    parity: dict[str, Any] = field(default_factory=dict)
    """ONNX vs sentence-transformers on the export's probe texts."""
    int8: dict[str, Any] = field(default_factory=dict)
    """The quantised variant: whether it is offered, its file, and its cosine to fp32."""
    versions: dict[str, str] = field(default_factory=dict)
    """Library versions that produced the export."""

    def __post_init__(self) -> None:
        for name in ("dim", "max_seq_length", "opset", "num_layers", "hidden_size", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"encoder manifest field {name} must be positive; re-export")
        if self.max_seq_length < 3:
            raise ValueError("encoder manifest max_seq_length leaves no room for text; re-export")
        for name in (MODEL_FILE, TOKENIZER_FILE):
            if name not in self.files:
                raise ValueError(f"encoder manifest lists no {name}; re-export the encoder")
        for key in ("cls", "sep", "pad"):
            if key not in self.special_tokens:
                raise ValueError(f"encoder manifest names no {key} token; re-export the encoder")
        object.__setattr__(self, "inputs", tuple(self.inputs))

    @property
    def int8_available(self) -> bool:
        return bool(self.int8.get("available")) and INT8_MODEL_FILE in self.files

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = list(self.inputs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderManifest:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, folder: Path) -> None:
        # sort_keys + fixed indent: the same export gives the same bytes.
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False)
        (folder / MANIFEST_FILE).write_text(text + "\n", encoding="utf-8")

    @classmethod
    def read(cls, folder: Path) -> EncoderManifest:
        path = folder / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no encoder at {folder} ({MANIFEST_FILE} missing): "
                "export it first with `ranker export-encoder`"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_dict(data)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"{path} is not a valid encoder manifest ({exc}); "
                "re-export with `ranker export-encoder`"
            ) from exc

    def verify_files(self, folder: Path) -> None:
        """Raise ValueError if a listed file is missing or differs from its recorded sha256."""
        for name, expected in self.files.items():
            path = folder / name
            if not path.is_file():
                raise ValueError(f"{path} is missing; re-export with `ranker export-encoder`")
            if sha256_file(path) != expected:
                raise ValueError(
                    f"{path} does not match the sha256 in {MANIFEST_FILE} (partial copy or "
                    "edited file?); re-export with `ranker export-encoder`"
                )


def is_valid_export(folder: Path) -> bool:
    """True when `folder` holds a current-format export whose files match their hashes."""
    try:
        manifest = EncoderManifest.read(folder)
        if manifest.format != FORMAT_VERSION:
            return False
        manifest.verify_files(folder)
    except (FileNotFoundError, ValueError):
        return False
    return True
