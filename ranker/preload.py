"""Warming the kernel's page cache with the catalog's column files after a start.

A ranking reads its ~500 retrieved candidates' blobs from the catalog's files, scattered over
them. At 10^6 candidates the blobs file is ~9 GiB: after a start, or after the files were
written and evicted, most of a ranking's reads miss the page cache and wait on the disk, one
ranking in ten at 50-100 ms on this machine's rate-limited disk, against ~4 ms served from the
page cache (BENCHMARKS.md, "At scale"). Read once from start to end on a thread of its own
(sequential reads at the disk's full speed, a few seconds per GiB), the files are then served
from memory, as a database's prewarm or a search engine's preload does at open. The pages stay
the kernel's: shared, reclaimable under pressure, not the service's resident memory.

No library does this for a file read with `pread` (vmtouch, pg_prewarm are tools of their own
programs), hence these few lines.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from ranker.metrics import ServiceMetrics

log = logging.getLogger(__name__)

CHUNK = 8 << 20
"""Bytes read per system call: large enough that the calls cost nothing beside the disk."""

AVAILABLE_SHARE = 0.75
"""With `catalog_preload` = auto: the files are warmed while they fit in this share of the
memory available at start (free memory and the reclaimable page cache), leaving a quarter for
what else the machine runs: a file that does not fit would only evict its own pages again."""


def planned(paths: Sequence[Path], mode: str, available: int) -> list[Path]:
    """The files to warm, in order: every one (`on`), none (`off`), or (`auto`) the first ones
    whose sizes add up to at most `AVAILABLE_SHARE` of `available` bytes."""
    if mode == "off":
        return []
    out, total = [], 0
    for p in paths:
        total += p.stat().st_size
        if mode == "auto" and total > AVAILABLE_SHARE * available:
            break
        out.append(p)
    return out


class PageCacheWarmer:
    """Reads `paths` from start to end on a daemon thread; `done` once every byte was read (or
    a file could not be: warming is an optimisation, so an error is logged, never raised)."""

    def __init__(self, paths: Sequence[Path], metrics: ServiceMetrics | None = None) -> None:
        self.paths = list(paths)
        self.metrics = metrics
        self.read_bytes = 0
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.paths:
            self._done.set()
            return
        self._thread = threading.Thread(target=self._run, name="ranker-page-cache", daemon=True)
        self._thread.start()

    @classmethod
    def for_catalog(
        cls, paths: Sequence[Path], mode: str, metrics: ServiceMetrics | None = None
    ) -> PageCacheWarmer:
        """The warmer of the catalog's column files under the `catalog_preload` setting."""
        existing = [p for p in paths if p.is_file()]
        available = int(psutil.virtual_memory().available)
        chosen = planned(existing, mode, available)
        left = [p.name for p in existing if p not in chosen]
        if left and mode == "auto":
            log.info(
                "not warming the page cache with %s: beyond %.0f%% of the %.1f GiB of memory "
                "available; rankings read those pages from the disk until they are cached",
                ", ".join(left),
                100 * AVAILABLE_SHARE,
                available / 2**30,
            )
        return cls(chosen, metrics)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def close(self) -> None:
        """Stop reading (at the next chunk) and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            for path in self.paths:
                self._read(path)
                if self._stop.is_set():
                    return
            took = time.perf_counter() - started
            log.info(
                "page cache warmed with the catalog's files (%s): %.2f GiB in %.1f s",
                ", ".join(p.name for p in self.paths),
                self.read_bytes / 2**30,
                took,
            )
        except OSError as e:
            log.warning("stopped warming the page cache with the catalog's files: %s", e)
        finally:
            self._done.set()

    def _read(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):  # read in order: the kernel's readahead at its widest
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            buf = bytearray(CHUNK)
            at = 0
            while not self._stop.is_set():
                got = os.preadv(fd, [buf], at)
                if got <= 0:
                    return
                at += got
                self.read_bytes += got
                if self.metrics is not None:
                    self.metrics.catalog_warmed_bytes.set(self.read_bytes)
        finally:
            os.close(fd)
