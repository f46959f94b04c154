"""Append-only typed arrays in files, read through a memory map: the catalog's cold columns."""

from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path

import numpy as np

from ranker.permissions import private_dir


class AppendColumn:
    """An append-only array of one dtype (rows of `width` values) in a file.

    Writes go through `os.pwrite`, reads through a read-only memory map of the file, so only the
    pages a ranking reads become resident: the column costs disk, not memory. The file is grown
    ahead in doubling steps (sparse) and mapped whole, so an append rarely remaps; a map handed
    out stays valid after a remap, because the file only grows. `path` None keeps the column in
    an unnamed temporary file (removed when closed). Not thread-safe: the catalog's lock guards
    it.
    """

    def __init__(
        self, path: Path | None, dtype: np.dtype | type, width: int = 1, length: int = 0
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.width = width
        self._row_bytes = self.dtype.itemsize * width
        if path is None:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115  # closed by close()
        else:
            private_dir(path.parent)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "r+b")
        self._fd = self._file.fileno()
        self._len = length
        size = os.fstat(self._fd).st_size
        if size < length * self._row_bytes:
            raise ValueError(
                f"{path} holds {size} bytes, fewer than the {length} rows recorded; delete the "
                "folder so the catalog is rebuilt from the store"
            )
        self._cap = 0
        self._view = self._mapped(max(length, 1024))

    def __len__(self) -> int:
        return self._len

    def _mapped(self, rows: int) -> np.ndarray:
        # Never shrink a file written by an earlier process: rows past `length` are only unused.
        size = max(rows * self._row_bytes, os.fstat(self._fd).st_size)
        os.ftruncate(self._fd, size)
        self._cap = size // self._row_bytes
        mm = mmap.mmap(self._fd, self._cap * self._row_bytes, prot=mmap.PROT_READ)
        flat = np.frombuffer(mm, dtype=self.dtype, count=self._cap * self.width)
        return flat.reshape(self._cap, self.width) if self.width > 1 else flat

    def view(self) -> np.ndarray:
        """The rows written so far (a read-only view of the map)."""
        return self._view[: self._len]

    def append(self, rows: np.ndarray) -> int:
        """Write `rows` at the end; returns the index of the first."""
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        n = len(data) if self.width > 1 or data.ndim else 1
        start = self._len
        if start + n > self._cap:
            self._view = self._mapped(max(2 * self._cap, start + n))
        if n:
            os.pwrite(self._fd, data.tobytes(), start * self._row_bytes)
        self._len = start + n
        return start

    def zero(self, start: int, count: int) -> None:
        """Overwrite rows with zeros (erasure: the bytes leave the file, not just the index)."""
        if count > 0:
            os.pwrite(self._fd, bytes(count * self._row_bytes), start * self._row_bytes)

    def flush(self) -> None:
        """Make the rows written so far durable."""
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


def gather_ranges(column: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The rows `[starts[i], starts[i] + lengths[i])` of `column` for every i, concatenated."""
    return np.take(column, range_index(starts, lengths), axis=0)
