"""Append-only files of the catalog's per-candidate bytes, read with pread for a few candidates."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ranker.permissions import private_dir


class AppendFile:
    """Bytes appended to a file (`os.pwrite`) and read back by range (`os.preadv`).

    Read with system calls, not through a memory map: the pages read stay in the kernel's page
    cache (shared, reclaimable) instead of being mapped into the service, so its resident memory
    is its own, whatever share of the file the rankings have touched. `path` None keeps the bytes
    in an unnamed temporary file (removed when closed). Not thread-safe for writes: the catalog's
    lock guards them; reads may run in parallel.
    """

    def __init__(self, path: Path | None, length: int = 0) -> None:
        if path is None:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115  # closed by close()
        else:
            private_dir(path.parent)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "r+b")
        self._fd = self._file.fileno()
        size = os.fstat(self._fd).st_size
        if size < length:
            raise ValueError(
                f"{path} holds {size} bytes, fewer than the {length} recorded; delete the folder "
                "so the catalog is rebuilt from the store"
            )
        self._len = length

    def __len__(self) -> int:
        return self._len

    def append(self, data: bytes | np.ndarray) -> int:
        """Write `data` at the end; returns its offset."""
        raw = data.tobytes() if isinstance(data, np.ndarray) else data
        start = self._len
        if raw:
            os.pwrite(self._fd, raw, start)
        self._len = start + len(raw)
        return start

    def read(self, start: int, length: int) -> bytes:
        return os.pread(self._fd, length, start)

    def read_into(self, starts: Sequence[int], lengths: Sequence[int], out: np.ndarray) -> None:
        """Read the ranges `[starts[i], starts[i] + lengths[i])` into `out`, one after another."""
        view = out.data.cast("B")
        pos = 0
        fd = self._fd
        for start, length in zip(starts, lengths, strict=True):
            got = os.preadv(fd, [view[pos : pos + length]], start)
            if got != length:
                raise OSError(f"short read of the catalog's file: {got} of {length} bytes")
            pos += length

    def zero(self, start: int, length: int) -> None:
        """Overwrite bytes with zeros (erasure: the bytes leave the file, not just the index)."""
        if length > 0:
            os.pwrite(self._fd, bytes(length), start)

    def flush(self) -> None:
        """Make the bytes written so far durable."""
        os.fsync(self._fd)

    def close(self) -> None:
        self._file.close()


def range_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Every position in the ranges `[starts[i], starts[i] + lengths[i])`, in order."""
    lengths = np.asarray(lengths, dtype=np.intp)
    total = int(lengths.sum())
    offsets = np.zeros(len(lengths), dtype=np.intp)
    offsets[1:] = np.cumsum(lengths[:-1])
    # A range's start, minus where it begins in the output, plus the output position.
    shift = np.repeat(np.asarray(starts, dtype=np.intp) - offsets, lengths)
    shift += np.arange(total, dtype=np.intp)
    return shift
