"""Generated exports in the data folder (the demo JSONL/CSV files): rewritten without erased
candidates, so an erasure leaves no copy of the CV there either."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ranker.atomic import atomic_text_file
from ranker.metrics import ServiceMetrics

log = logging.getLogger(__name__)

KEY_FIELD = {"candidates": "id", "outcomes": "candidate_id", "protected": "candidate_id"}
"""Per export file (by name without suffix), the field naming the candidate a row is about."""

SUFFIXES = (".jsonl", ".csv")


@dataclass(frozen=True)
class ExportScrub:
    """What an erasure did to the export files."""

    rewritten: tuple[Path, ...] = ()
    """Files rewritten without the erased candidates' rows."""
    holding: tuple[Path, ...] = ()
    """Files that still hold an erased id (unknown layout, or could not be rewritten)."""


def _jsonl(path: Path, key: str, ids: Collection[str]) -> bool:
    """Rewrite `path` without rows whose `key` is an erased id; True when rows were dropped."""
    kept: list[str] = []
    dropped = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line) if line.strip() else None
            except ValueError:
                row = None
            if isinstance(row, dict) and row.get(key) in ids:
                dropped += 1
            else:
                kept.append(line)
    if dropped:
        with atomic_text_file(path) as out:
            out.writelines(kept)
    return dropped > 0


def _csv(path: Path, key: str, ids: Collection[str]) -> bool:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or key not in rows[0]:
        raise ValueError(f"no {key} column")
    col = rows[0].index(key)
    kept = [rows[0]] + [r for r in rows[1:] if not (len(r) > col and r[col] in ids)]
    if len(kept) == len(rows):
        return False
    buf = io.StringIO()
    csv.writer(buf).writerows(kept)
    with atomic_text_file(path, newline="") as out:
        out.write(buf.getvalue())
    return True


def _mentions(path: Path, ids: Collection[str]) -> bool:
    data = path.read_bytes()
    return any(i.encode() in data for i in ids)


def scrub_exports(
    folder: Path, ids: Collection[str], metrics: ServiceMetrics | None = None
) -> ExportScrub:
    """Rewrite the export files in `folder` without the rows of `ids` (atomically); logged.

    Files whose layout is unknown are searched for the ids and reported in `holding` when
    they mention one; so is a file that could not be rewritten (the error is logged).
    """
    scrub = _scrub(folder, ids)
    if scrub.rewritten:
        log.info(
            "erasure: rewrote %s without the erased candidates",
            ", ".join(str(p) for p in scrub.rewritten),
        )
    if scrub.holding:
        log.warning(
            "erasure: %s still hold(s) an erased candidate; remove it from them by hand",
            ", ".join(str(p) for p in scrub.holding),
        )
    if metrics is not None:
        metrics.erasure_exports_holding.set(len(scrub.holding))
    return scrub


def _scrub(folder: Path, ids: Collection[str]) -> ExportScrub:
    wanted = set(ids)
    rewritten: list[Path] = []
    holding: list[Path] = []
    if not wanted or not folder.is_dir():
        return ExportScrub()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix not in SUFFIXES:
            continue
        key = KEY_FIELD.get(path.stem)
        try:
            if key is None:
                if _mentions(path, wanted):
                    holding.append(path)
                continue
            changed = (
                _jsonl(path, key, wanted) if path.suffix == ".jsonl" else _csv(path, key, wanted)
            )
        except (OSError, ValueError) as e:
            log.error("erasure: could not rewrite %s without the erased candidates (%s)", path, e)
            holding.append(path)
            continue
        if changed:
            rewritten.append(path)
    return ExportScrub(tuple(rewritten), tuple(holding))
