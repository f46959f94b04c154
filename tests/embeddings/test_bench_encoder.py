"""The encoder benchmark's pieces that can be checked cheaply: FLOP count, workloads, report merge."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from bench import _machine
from bench.__main__ import KEPT, _existing_sections, _marker, main
from bench.encoder import _rounds, _workloads, encoder_flops
from embeddings import OnnxEncoder


def test_flop_count_matches_a_hand_computation() -> None:
    # One layer, L=2, h=2, f=4: projections 2*2*(4*4 + 2*2*4) = 128, attention 4*4*2 = 32.
    assert encoder_flops(2, layers=1, hidden=2, ffn=4) == 160
    # MiniLM at 256 tokens: ~6 GFLOP, about 10% of it in the attention products.
    full = encoder_flops(256)
    attention = 6 * 4 * 256**2 * 384
    assert 5.9e9 < full < 6.2e9 and 0.09 < attention / full < 0.11


def test_workloads_give_both_sides_the_same_windows(encoder: OnnxEncoder) -> None:
    tokenizer = Tokenizer.from_file(str(encoder.path / "tokenizer.json"))
    windows, documents, sentences = _workloads(encoder, tokenizer)
    assert windows.st_texts is windows.texts and sentences.st_texts is sentences.texts
    assert max(windows.sequences) <= encoder.max_seq_length
    assert min(windows.sequences) > 200  # a CV's first window is (nearly) full
    assert len(documents.st_texts) == len(documents.sequences) > 2 * len(documents.texts)
    assert max(sentences.sequences) < 40


def test_rounds_interleave_and_time_every_contender() -> None:
    calls: list[str] = []
    times = _rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rotating order
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_nominal_flops_per_cycle_follows_the_isa() -> None:
    def cpu(vendor: str, family: int, *flags: str) -> _machine.Cpu:
        return _machine.Cpu("x", vendor, family, 2, 2, 2600.0, frozenset(flags))

    assert _machine.nominal_flops_per_cycle(cpu("AuthenticAMD", 0x1A, "avx512f"))[0] == 64
    assert _machine.nominal_flops_per_cycle(cpu("AuthenticAMD", 0x19, "avx512f"))[0] == 32
    assert _machine.nominal_flops_per_cycle(cpu("GenuineIntel", 6, "avx2", "fma"))[0] == 32


def test_running_one_section_keeps_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "BENCHMARKS.md"
    start, end = _marker("other")
    out.write_text(f"# old header\n\n{start}\n## Other\nold numbers\n{end}\n")
    monkeypatch.setattr("bench.__main__._discover", lambda: ["encoder", "other"])
    monkeypatch.setattr("bench.encoder.run", lambda: "## Sentence encoder\nnew numbers\n")
    monkeypatch.setattr("bench._machine.header", lambda *args: "# Benchmarks")
    assert main(["encoder", "--out", str(out)]) == 0
    sections = _existing_sections(out.read_text())
    assert sections["encoder"].strip() == "## Sentence encoder\nnew numbers"
    assert "old numbers" in sections["other"] and KEPT in sections["other"]
    assert main(["encoder", "--out", str(out)]) == 0
    assert out.read_text().count(KEPT) == 1  # the note is not stacked on every run
