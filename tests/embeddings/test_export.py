"""The ONNX export: manifest, determinism, atomic replacement, `--if-missing`, the CLI command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import typer
from typer.testing import CliRunner

from embeddings import OnnxEncoder
from embeddings.export import PARITY_MIN_COSINE, PROBE_TEXTS, export_encoder
from embeddings.files import sha256_file
from embeddings.manifest import MANIFEST_FILE, EncoderManifest, is_valid_export
from tests.fixtures.encoder import encoder_test_settings


def test_manifest_describes_the_export(encoder_dir: Path) -> None:
    manifest = EncoderManifest.read(encoder_dir)
    assert manifest.model_name == "sentence-transformers/all-MiniLM-L6-v2"
    assert (manifest.dim, manifest.max_seq_length, manifest.opset) == (384, 256, 17)
    assert manifest.files["model.onnx"] == sha256_file(encoder_dir / "model.onnx")
    assert manifest.files["tokenizer.json"] == sha256_file(encoder_dir / "tokenizer.json")
    assert manifest.parity["cosine_min"] >= PARITY_MIN_COSINE
    assert manifest.parity["texts"] == len(PROBE_TEXTS)
    # Every layer's attention fused into ORT's Attention op: the point of the export layout.
    assert manifest.fused_ops["Attention"] == manifest.num_layers == 6
    assert manifest.fused_ops["SkipLayerNormalization"] == 12
    assert "cosine_min" in manifest.int8
    assert manifest.int8_available == (encoder_dir / "model.int8.onnx").is_file()
    assert manifest.int8_available == (manifest.int8["cosine_min"] >= 0.99)


def test_graph_has_dynamic_batch_and_sequence_axes(encoder_dir: Path) -> None:
    graph = onnx.load(str(encoder_dir / "model.onnx"), load_external_data=False).graph
    inputs = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert inputs == {
        "input_ids": ["batch", "sequence"],
        "attention_mask": ["batch", "sequence"],
    }
    (output,) = graph.output
    assert output.name == "sentence_embedding"
    assert output.type.tensor_type.shape.dim[1].dim_value == 384


def test_probe_texts_fit_the_window(encoder: OnnxEncoder) -> None:
    assert max(len(ids) for ids in encoder.tokenize(list(PROBE_TEXTS))) <= 254


def test_export_is_deterministic_and_replaces_the_folder(encoder_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "encoder"
    shutil.copytree(encoder_dir, target)
    (target / "stale.txt").write_text("from an older export")
    manifest = export_encoder(target, quantize=True, settings=encoder_test_settings())
    original = EncoderManifest.read(encoder_dir)
    assert manifest.files == original.files  # same sha256 for model.onnx, int8 and tokenizer
    assert (target / MANIFEST_FILE).read_bytes() == (encoder_dir / MANIFEST_FILE).read_bytes()
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder"]  # no temp folders left


def test_if_missing_skips_a_valid_export_and_redoes_a_broken_one(
    encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "encoder"
    shutil.copytree(encoder_dir, target)
    assert is_valid_export(target)

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a valid export was rebuilt")

    monkeypatch.setattr("embeddings.export._build", no_build)
    assert export_encoder(target, if_missing=True).files == EncoderManifest.read(target).files

    (target / "tokenizer.json").write_text("{}")
    assert not is_valid_export(target)
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    manifest["format"] = 0
    (target / "tokenizer.json").write_bytes((encoder_dir / "tokenizer.json").read_bytes())
    (target / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert not is_valid_export(target)  # an older export format is redone, too
    with pytest.raises(AssertionError, match="rebuilt"):
        export_encoder(target, if_missing=True)


def test_cli_export_encoder_if_missing(encoder_dir: Path, tmp_path: Path) -> None:
    from ranker.commands import encoder as encoder_commands

    app = typer.Typer()
    encoder_commands.register(app)
    app.command("noop")(lambda: None)  # a second command keeps typer in multi-command mode
    target = tmp_path / "encoder"
    shutil.copytree(encoder_dir, target)
    result = CliRunner().invoke(app, ["export-encoder", "--out", str(target), "--if-missing"])
    assert result.exit_code == 0, result.output
    assert "parity" in result.output and "cosine min" in result.output
