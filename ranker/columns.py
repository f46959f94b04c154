"""Append-only files of the catalog's per-candidate bytes, read back for a few candidates."""

from __future__ import annotations

import mmap
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ranker.kernels import RWF_NOWAIT, read_runs
from ranker.permissions import private_dir

_FADV_RANDOM = getattr(os, "POSIX_FADV_RANDOM", None)
_FADV_SEQUENTIAL = getattr(os, "POSIX_FADV_SEQUENTIAL", None)


class AppendFile:
    """Bytes appended to a file (`os.pwrite`) and read back by range (`os.pread`).

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
        self.advise(_FADV_RANDOM)
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

    def advise(self, advice: int | None) -> None:
        """Tell the kernel how the file will be read (`os.POSIX_FADV_*`; None where the
        platform has no such advice). Random by default: a ranking reads the few candidates a
        search found, scattered over the file, and the kernel's readahead would read ~128 KiB
        around each ~10 KB run it missed in its page cache. At 10^6 candidates (a 9.6 GB blobs
        file), a ranking whose 500 runs were one in five evicted waited 84 ms with readahead,
        12.6 ms without (median of 8; the machine's disk is rate-limited)."""
        if advice is not None:
            os.posix_fadvise(self._fd, 0, 0, advice)

    @contextmanager
    def read_in_order(self) -> Iterator[None]:
        """Within the block, the file is read from start to end (a compaction's copy), with
        the kernel's readahead at its widest; random again after."""
        self.advise(_FADV_SEQUENTIAL)
        try:
            yield
        finally:
            self.advise(_FADV_RANDOM)

    def read(self, start: int, length: int) -> bytes:
        return os.pread(self._fd, length, start)

    def zero(self, start: int, length: int) -> None:
        """Overwrite bytes with zeros (erasure: the bytes leave the file, not just the index)."""
        if length > 0:
            os.pwrite(self._fd, bytes(length), start)

    def flush(self) -> None:
        """Make the bytes written so far durable."""
        os.fsync(self._fd)

    def close(self) -> None:
        self._file.close()


class BlockFile(AppendFile):
    """An `AppendFile` of whole `block`-byte blocks, gathered by runs of blocks.

    Two ways to read: through a memory map while the file holds at most `map_up_to` bytes, with
    pread beyond (0: always pread), so the map's resident pages are bounded by that size:
    - pread (the default): one `preadv2` per run, into the caller's arrays, in compiled code
      (`kernels.read_runs`); the runs the page cache does not hold are asked of the disk all at
      once, then read, rather than waited for one by one. The pages read stay in the kernel's
      page cache, so the service's resident memory is its own whatever share of the file the
      rankings have touched.
    - a shared read-only memory map: one numpy `take` per gather, no system call per run;
      ~0.8 ms less per ranking at 10^5 and 10^6 candidates (BENCHMARKS.md). Every page a gather
      touches stays mapped into the service, and each fault maps up to 16 cached neighbours, so
      its resident memory grows by ~12× the bytes gathered (measured at 10^6, random rankings)
      up to the files' size. Those pages are clean and file-backed: the kernel reclaims them
      under pressure, and a memory limit (cgroup) charges them as it charges pread's page
      cache. Releasing them as it goes (`MADV_DONTNEED` past a bound) was measured slower than
      pread: the hot pages are then faulted in again.
    Writes go through `pwrite` either way; a shared map sees them at once.
    """

    def __init__(self, path: Path | None, block: int, length: int = 0, map_up_to: int = 0) -> None:
        super().__init__(path, length)
        if length % block:
            raise ValueError(f"{path} holds {length} bytes, not whole blocks of {block}")
        self.block = block
        self.map_up_to = map_up_to
        self._view = np.zeros((0, block), dtype=np.uint8)
        self._map_lock = threading.Lock()
        self._nowait = RWF_NOWAIT if _reads_nowait(self._fd) else 0

    def append(self, data: bytes | np.ndarray) -> int:
        raw = data.tobytes() if isinstance(data, np.ndarray) else data
        if len(raw) % self.block:
            raise ValueError(f"{len(raw)} bytes appended, not whole blocks of {self.block}")
        return super().append(raw)

    def _mapped_view(self, blocks: int) -> np.ndarray:
        """The map as a (blocks, block) array holding at least `blocks` blocks (remapped when the
        file grew; an old map is unmapped when its last reader drops it)."""
        view = self._view
        if len(view) >= blocks:
            return view
        with self._map_lock:
            if len(self._view) < blocks:
                n = len(self) // self.block
                m = mmap.mmap(self._fd, n * self.block, mmap.MAP_SHARED, mmap.PROT_READ)
                self._view = np.frombuffer(m, dtype=np.uint8).reshape(n, self.block)
            return self._view

    @property
    def mapped(self) -> bool:
        """Whether a gather now reads through the memory map (the file is within `map_up_to`)."""
        return reads_mapped(len(self), self.map_up_to)

    def _unmap(self) -> None:
        """Drop the map once the file outgrew `map_up_to`: its pages leave the service's
        resident memory when the last gather still holding it ends."""
        if len(self._view):
            with self._map_lock:
                self._view = np.zeros((0, self.block), dtype=np.uint8)

    def take(
        self, first: np.ndarray, head: np.ndarray, tail: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Runs of blocks split in two: the `head[i]` blocks from `first[i]`, back to back, and
        the `tail[i]` blocks after them, back to back; each a (blocks, block) array."""
        tail = np.zeros_like(head) if tail is None else tail
        nh, nt = int(np.sum(head)), int(np.sum(tail))
        if self.mapped:
            view = self._mapped_view(int(np.max(first + head + tail, initial=0)))
            return (
                np.take(view, range_index(first, head), axis=0),
                np.take(view, range_index(first + head, tail), axis=0),
            )
        self._unmap()
        out_h = np.empty(nh * self.block, dtype=np.uint8)
        out_t = np.empty(nt * self.block, dtype=np.uint8)
        i64 = np.int64
        first, head, tail = first.astype(i64), head.astype(i64), tail.astype(i64)
        failed = read_runs(self._fd, first, head, tail, self.block, out_h, out_t, self._nowait)
        if failed >= 0:  # from that run on, read here again: a lasting error is raised as such
            b = self.block
            ph, pt = int(np.sum(head[:failed])) * b, int(np.sum(tail[:failed])) * b
            vh, vt = out_h.data, out_t.data  # 1-D: slices are byte ranges
            for f, h, t in zip(
                first[failed:].tolist(), head[failed:].tolist(), tail[failed:].tolist(), strict=True
            ):
                h, t = h * b, t * b
                got = os.preadv(self._fd, [vh[ph : ph + h], vt[pt : pt + t]], f * b)
                if got != h + t:
                    raise OSError(f"short read of the catalog's file: {got} of {h + t} bytes")
                ph, pt = ph + h, pt + t
        return out_h.reshape(nh, self.block), out_t.reshape(nt, self.block)

    def close(self) -> None:
        with self._map_lock:
            self._view = np.zeros((0, self.block), dtype=np.uint8)
        super().close()


def _reads_nowait(fd: int) -> bool:
    """Whether the file system reads `fd` with RWF_NOWAIT (Linux; not every file system)."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None:
        return False
    try:
        os.preadv(fd, [bytearray(1)], 0, flag)
    except BlockingIOError:  # not cached: the flag is honoured
        return True
    except OSError:  # EOPNOTSUPP, EINVAL: refused
        return False
    return True


def reads_mapped(size: int, map_up_to: int) -> bool:
    """Whether a `BlockFile` of `size` bytes is read through its memory map (an empty file
    has nothing to map)."""
    return 0 < size <= map_up_to


def range_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Every position in the ranges `[starts[i], starts[i] + lengths[i])`, in order."""
    lengths = np.asarray(lengths, dtype=np.intp)
    total = int(lengths.sum())
    # A range's start, minus where it begins in the output, plus the output position.
    shift = np.repeat(np.asarray(starts, dtype=np.intp) - run_starts(lengths), lengths)
    shift += np.arange(total, dtype=np.intp)
    return shift


@dataclass
class Copied:
    """Column files written by `copy_live`: the files, their names, where each run now starts
    (blobs in bytes, records in bytes)."""

    blobs: BlockFile
    records: AppendFile
    names: dict[str, str]
    blob_starts: np.ndarray
    rec_starts: np.ndarray


def copy_live(
    blobs: BlockFile,
    records: AppendFile,
    directory: Path,
    blob_runs: tuple[np.ndarray, np.ndarray],
    record_runs: tuple[np.ndarray, np.ndarray],
) -> Copied:
    """Copy runs of `blobs` (first block, blocks) and of `records` (start, length), in order,
    back to back into new files of `directory` under new names, made durable."""
    tag = secrets.token_hex(4)
    names = {"blobs": f"blobs.{tag}.bin", "records": f"records.{tag}.bin"}
    out = Copied(
        BlockFile(directory / names["blobs"], blobs.block, 0, blobs.map_up_to),
        AppendFile(directory / names["records"]),
        names,
        np.zeros(len(blob_runs[0]), np.int64),
        np.zeros(len(record_runs[0]), np.int64),
    )
    try:
        with blobs.read_in_order(), records.read_in_order():
            for at in range(0, len(blob_runs[0]), 4096):  # ~40 MB of blobs at a time
                part = slice(at, at + 4096)
                first, count = blob_runs[0][part], blob_runs[1][part]
                data, _ = blobs.take(first, count)
                out.blob_starts[part] = out.blobs.append(data) + run_starts(count) * blobs.block
                starts, lengths = record_runs[0][part], record_runs[1][part]
                raw = b"".join(
                    records.read(int(s), int(n)) for s, n in zip(starts, lengths, strict=True)
                )
                out.rec_starts[part] = out.records.append(raw) + run_starts(lengths)
            out.blobs.flush()
            out.records.flush()
    except BaseException:
        # A full disk, say: the files being copied from are untouched; the copies go.
        for f, name in ((out.blobs, names["blobs"]), (out.records, names["records"])):
            f.close()
            (directory / name).unlink(missing_ok=True)
        raise
    return out


def run_starts(lengths: np.ndarray) -> np.ndarray:
    """Where consecutive runs of `lengths` start when laid back to back, from 0."""
    out = np.zeros(len(lengths), dtype=np.int64)
    out[1:] = np.cumsum(np.asarray(lengths, dtype=np.int64)[:-1])
    return out


def remove_unnamed(directory: Path, named: set[str]) -> None:
    """Column files in `directory` that `named` does not list: left by a compaction that a
    crash interrupted before its state was saved."""
    for path in directory.glob("*.bin"):
        if path.name not in named and path.name.startswith(("blobs", "records")):
            path.unlink(missing_ok=True)
