"""The ONNX encoder: parity with sentence-transformers, batching, chunking, bad input, defaults."""

from __future__ import annotations

import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embeddings import DocumentEmbedding, OnnxEncoder, load_encoder
from embeddings.chunking import chunk_spans, combine
from tests.embeddings.conftest import VARIED_TEXTS, seeded_texts
from tests.fixtures.encoder import encoder_test_settings


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_varied_texts_fit_the_window(encoder: OnnxEncoder) -> None:
    # The parity test below is only meaningful inside the window (the reference truncates).
    lengths = [len(ids) for ids in encoder.tokenize(VARIED_TEXTS)]
    assert max(lengths) <= encoder.max_seq_length - 2


def test_parity_with_sentence_transformers(encoder: OnnxEncoder, reference_model: Any) -> None:
    ours = encoder.encode(VARIED_TEXTS)
    theirs = reference_model.encode(
        VARIED_TEXTS, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    cos = _cos(ours, theirs)
    worst = int(cos.argmin())
    assert cos.min() >= 0.9999, f"cosine {cos.min():.6f} on {VARIED_TEXTS[worst]!r}"


def test_vectors_are_float32_unit_rows(encoder: OnnxEncoder) -> None:
    vectors = encoder.encode(VARIED_TEXTS)
    assert vectors.shape == (len(VARIED_TEXTS), 384) == (len(VARIED_TEXTS), encoder.dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_order_is_preserved_under_length_sorted_batching(encoder: OnnxEncoder) -> None:
    texts = seeded_texts(seed=3, n=24, min_words=1, max_words=60)
    one_by_one = np.stack([encoder.encode([t])[0] for t in texts])
    shuffled = list(range(len(texts)))
    random.Random(5).shuffle(shuffled)
    batched = encoder.encode([texts[i] for i in shuffled])
    np.testing.assert_allclose(batched, one_by_one[shuffled], atol=1e-5)
    # Distinct texts give distinct vectors, so a permutation bug could not pass by accident.
    assert np.abs(one_by_one[0] - one_by_one[1]).max() > 1e-2


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batch_size_does_not_change_vectors(
    encoder: OnnxEncoder, encoder_dir: Path, batch_size: int
) -> None:
    texts = seeded_texts(seed=11, n=12, min_words=1, max_words=120)
    other = OnnxEncoder(encoder_dir, encoder_test_settings(encoder_batch_size=batch_size))
    np.testing.assert_allclose(other.encode(texts), encoder.encode(texts), atol=1e-5)


def test_in_window_text_is_one_chunk_equal_to_the_plain_path(encoder: OnnxEncoder) -> None:
    texts = VARIED_TEXTS[:6]
    docs = encoder.encode_documents(texts)
    plain = encoder.encode(texts)
    for doc, vector in zip(docs, plain, strict=True):
        assert isinstance(doc, DocumentEmbedding)
        assert doc.chunks.shape == (1, 384)
        np.testing.assert_array_equal(doc.vector, vector)
        np.testing.assert_array_equal(doc.chunks[0], vector)


def test_long_text_is_chunked_into_unit_vectors(encoder: OnnxEncoder) -> None:
    long_text = seeded_texts(seed=1, n=1, min_words=900, max_words=900)[0]
    ids = encoder.tokenize([long_text])[0]
    window = encoder.max_seq_length - 2
    assert len(ids) > 2 * window
    (doc,) = encoder.encode_documents([long_text])
    spans = chunk_spans(len(ids), window, overlap=32)
    assert doc.chunks.shape == (len(spans), 384) and len(spans) >= 3
    np.testing.assert_allclose(np.linalg.norm(doc.chunks, axis=1), 1.0, atol=1e-5)
    assert doc.vector.dtype == np.float32
    assert np.linalg.norm(doc.vector) == pytest.approx(1.0, abs=1e-5)
    # Each chunk is exactly its token window; the document vector is their combination.
    windows = encoder.encode_token_windows([ids[a:b] for a, b in spans])
    np.testing.assert_allclose(doc.chunks, windows, atol=1e-5)
    np.testing.assert_allclose(doc.vector, combine(doc.chunks, spans), atol=1e-6)
    np.testing.assert_array_equal(encoder.encode([long_text])[0], doc.vector)
    # The document vector sits among its chunks rather than at the first one only.
    assert (doc.chunks @ doc.vector).min() > 0.5
    assert not np.allclose(doc.vector, doc.chunks[0], atol=1e-3)


def test_chunk_overlap_setting_is_used(encoder_dir: Path, encoder: OnnxEncoder) -> None:
    long_text = seeded_texts(seed=2, n=1, min_words=500, max_words=500)[0]
    n = len(encoder.tokenize([long_text])[0])
    wide = OnnxEncoder(encoder_dir, encoder_test_settings(chunk_overlap=200))
    (doc,) = wide.encode_documents([long_text])
    assert len(doc.chunks) == len(chunk_spans(n, encoder.max_seq_length - 2, 200))
    assert len(doc.chunks) > len(encoder.encode_documents([long_text])[0].chunks)


@pytest.mark.parametrize("bad", ["", " ", "\n\t  \r\n", "\u3000"])
def test_empty_or_whitespace_text_is_rejected(encoder: OnnxEncoder, bad: str) -> None:
    with pytest.raises(ValueError, match=r"text 1 is empty or whitespace-only"):
        encoder.encode(["fine", bad, "also fine"])
    with pytest.raises(ValueError, match="empty or whitespace-only"):
        encoder.encode_documents([bad])


def test_text_without_any_token_is_rejected(encoder: OnnxEncoder) -> None:
    with pytest.raises(ValueError, match="no tokens"):
        encoder.encode(["\u200b\u200b"])


def test_wrong_types_are_rejected(encoder: OnnxEncoder) -> None:
    with pytest.raises(TypeError, match=r"wrap it as \[text\]"):
        encoder.encode("a single string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text 0 is int"):
        encoder.encode([42])  # type: ignore[list-item]


def test_any_unicode_is_accepted(encoder: OnnxEncoder) -> None:
    odd = ["lone surrogate \ud800 here", "\ud83d\ude00 paired surrogates", "\x00nul and \x07bell"]
    vectors = encoder.encode(odd)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_list_gives_empty_array(encoder: OnnxEncoder) -> None:
    assert encoder.encode([]).shape == (0, 384)
    assert encoder.encode_documents([]) == []


def test_concurrent_callers_get_the_same_vectors(encoder: OnnxEncoder) -> None:
    texts = seeded_texts(seed=4, n=8, min_words=3, max_words=40)
    expected = encoder.encode(texts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: encoder.encode(texts), range(4)))
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_metadata(encoder: OnnxEncoder) -> None:
    assert encoder.dim == 384
    assert encoder.max_seq_length == 256
    assert encoder.manifest["model_name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert not encoder.quantized


def test_int8_variant_is_used_when_asked_and_stays_close(
    encoder_dir: Path, encoder: OnnxEncoder
) -> None:
    manifest = encoder.manifest
    quantized = OnnxEncoder(encoder_dir, encoder_test_settings(encoder_quantized=True))
    assert quantized.quantized == manifest["int8"]["available"]
    if not quantized.quantized:
        pytest.skip(f"export did not offer int8: {manifest['int8']}")
    texts = VARIED_TEXTS[2:12]
    cos = _cos(quantized.encode(texts), encoder.encode(texts))
    assert cos.min() >= 0.98 and cos.mean() >= 0.99
    assert cos.min() < 1 - 1e-6  # it really is a different model


def test_load_encoder_with_explicit_path(encoder_dir: Path) -> None:
    loaded = load_encoder(encoder_dir, encoder_test_settings())
    assert loaded.encode(["Python developer"]).shape == (1, 384)


def test_load_encoder_default_reads_settings(
    encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(encoder_dir, tmp_path / "data" / "encoder")
    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RANKER_ENCODER_DIR", raising=False)
    loaded = load_encoder()
    assert loaded.path == tmp_path / "data" / "encoder"
    assert loaded.encode(["Python developer"]).shape == (1, 384)


def test_missing_explicit_folder_says_how_to_export(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ranker export-encoder"):
        load_encoder(tmp_path / "nowhere", encoder_test_settings())


def test_corrupted_model_is_refused(encoder_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "encoder"
    shutil.copytree(encoder_dir, copy)
    with (copy / "model.onnx").open("r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match="re-export"):
        OnnxEncoder(copy, encoder_test_settings())


@pytest.mark.slow
def test_load_encoder_exports_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoder_dir: Path
) -> None:
    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RANKER_ENCODER_DIR", raising=False)
    loaded = load_encoder()
    assert loaded.path == tmp_path / "data" / "encoder"
    reference = OnnxEncoder(encoder_dir, encoder_test_settings())
    np.testing.assert_array_equal(
        loaded.encode(VARIED_TEXTS[:4]), reference.encode(VARIED_TEXTS[:4])
    )


def test_overlap_as_wide_as_the_window_is_refused_at_start(encoder_dir: Path) -> None:
    with pytest.raises(ValueError, match="RANKER_CHUNK_OVERLAP"):
        OnnxEncoder(encoder_dir, encoder_test_settings(chunk_overlap=254))
