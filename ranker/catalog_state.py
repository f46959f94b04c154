"""The catalog's in-memory state saved beside its column files, so a restart loads, not rebuilds."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ranker.atomic import atomic_file

log = logging.getLogger(__name__)

STATE_FILE = "state.npz"
_FORMAT = 2
DEFAULT_FILES = {"blobs": "blobs.bin", "records": "records.bin"}
"""The column files' names until a compaction writes new ones (`CatalogState.files`)."""


@dataclass(frozen=True)
class CatalogState:
    """Everything of a `CandidateCatalog` that is not in its column files."""

    generation: str
    """The store generation the catalog reflects: another one means it is stale."""
    dim: int
    lengths: dict[str, int]
    """Rows written to each column file (rows past these are unused)."""
    hot: dict[str, np.ndarray]
    scalars: np.ndarray
    ids: list[str]
    """Candidate id by slot ("" for a free slot)."""
    free: list[int]
    df: tuple[np.ndarray, np.ndarray]
    """The live lexicon's document frequencies: term hashes, counts."""
    lexicon_totals: tuple[int, float]
    """Documents and total length in words."""
    skills: tuple[np.ndarray, np.ndarray, np.ndarray]
    """The skill index: skill hashes, holders per skill, the holders' slots."""
    change_seq: int | None = None
    """The store's change-feed entry the catalog reflects (every entry up to it is in it):
    a stale catalog catches up from there instead of being rebuilt. None: unknown."""
    files: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_FILES))
    """The column files' names in the folder, by column (`blobs`, `records`)."""


def save_state(directory: Path, state: CatalogState) -> None:
    """Write `state` as one file, atomically (a crash leaves the previous state or this one)."""
    header = {
        "format": _FORMAT,
        "generation": state.generation,
        "dim": state.dim,
        "lengths": state.lengths,
        "free": state.free,
        "lexicon_totals": list(state.lexicon_totals),
        "change_seq": state.change_seq,
        "files": state.files,
    }
    arrays: dict[str, np.ndarray] = {f"hot_{k}": v for k, v in state.hot.items()}
    arrays |= {
        "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
        "scalars": state.scalars,
        "ids": np.asarray(state.ids, dtype=str),
        "df_hashes": state.df[0],
        "df_counts": state.df[1],
        "skill_keys": state.skills[0],
        "skill_sizes": state.skills[1],
        "skill_slots": state.skills[2],
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types the kwargs as bool
    with atomic_file(directory / STATE_FILE) as f:
        f.write(buf.getbuffer())


def load_state(directory: Path, generation: str | None) -> CatalogState | None:
    """The state saved in `directory` when it reflects `generation` (any generation when None:
    the caller checks it); None when missing, stale or unreadable (the caller rebuilds the
    catalog from the store)."""
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]))
            if header.get("format") != _FORMAT or (
                generation is not None and header.get("generation") != generation
            ):
                log.info("saved catalog is out of date (store changed since)")
                return None
            hot = {k[4:]: z[k] for k in z.files if k.startswith("hot_")}
            seq = header.get("change_seq")
            return CatalogState(
                generation=str(header["generation"]),
                dim=int(header["dim"]),
                lengths={k: int(v) for k, v in header["lengths"].items()},
                hot=hot,
                scalars=z["scalars"],
                ids=z["ids"].tolist(),
                free=[int(i) for i in header["free"]],
                df=(z["df_hashes"], z["df_counts"]),
                skills=(z["skill_keys"], z["skill_sizes"], z["skill_slots"]),
                lexicon_totals=(
                    int(header["lexicon_totals"][0]),
                    float(header["lexicon_totals"][1]),
                ),
                change_seq=None if seq is None else int(seq),
                files={**DEFAULT_FILES, **header.get("files", {})},
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        log.warning("saved catalog in %s is unreadable (%s); rebuilding it from the store", path, e)
        return None
