"""Warming the kernel's page cache with the catalog's column files after a start.

A ranking reads its ~500 retrieved candidates' blobs from the catalog's files, scattered over
them. At 10^6 candidates the blobs file is ~9 GiB: after a start, or after the files were
written and evicted, most of a ranking's reads miss the page cache and wait on the disk, one
ranking in ten at 50-100 ms on this machine's rate-limited disk, against ~4 ms served from the
page cache (BENCHMARKS.md, "At scale"). Read once from start to end on a thread of its own
(sequential reads at the disk's full speed, a few seconds per GiB), the files are then served
from memory, as a database's prewarm or a search engine's preload does at open. The pages stay
the kernel's: shared, reclaimable under pressure, not the service's resident memory.

Read once is not enough. Pages a process reads with `pread` and does not map are the first a
kernel lets go: under memory pressure, and, on this machine, by a proactive reclaimer (DAMON's
`pageout` scheme over physical memory: page-cache pages no process maps, idle for 60 s, are
paged out, up to 128 MiB/s, with no memory pressure at all). A ranking touches ~500 of 10^6
candidates, so nearly every page of the catalog looks idle: within minutes of warming, reads
miss again. So the warmer keeps the files: every `catalog_keep_warm_seconds` it touches them
again by splicing them to /dev/null (`sendfile`: the kernel marks each cached page accessed
without copying it and reads back any page lost; ~0.5 s for 12 GiB, ~0.25 s of it CPU,
measured), following the files the catalog names then (compaction replaces them). Measured at
10^6, 300 rankings interleaved with the baseline after 240 s idle: p99 87 ms with the files
warmed once, 11 ms with them kept. DAMON samples one page per region, so a few pages still go between passes
(0.1-0.2% of them per 30 s, measured).

No library does this for a file read with `pread` (vmtouch, pg_prewarm are tools of their own
programs), hence these few lines.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from ranker.metrics import ServiceMetrics

log = logging.getLogger(__name__)

CHUNK = 8 << 20
"""Bytes read per system call: large enough that the calls cost nothing beside the disk, small
enough that closing waits for at most one."""

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
    a file could not be: warming is an optimisation, so an error is logged, never raised).

    With `every` > 0 it then keeps them in the page cache: every `every` seconds it touches
    the files `keep()` names at that time (by default `paths` again) from start to end.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        metrics: ServiceMetrics | None = None,
        every: float = 0.0,
        keep: Callable[[], Sequence[Path]] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.metrics = metrics
        self.every = every
        self._keep = keep or (lambda: self.paths)
        self.read_bytes = 0
        """Bytes read by the first pass (the warming)."""
        self.sweeps = 0
        """Passes that kept the files after the first."""
        self._stop = threading.Event()
        self._done = threading.Event()
        self._null = -1
        self._buffer: bytearray | None = None
        """Set once `sendfile` was refused: passes read into it instead."""
        self._thread: threading.Thread | None = None
        if not self.paths:
            self._done.set()
            if every <= 0 or keep is None:
                return
        self._thread = threading.Thread(target=self._run, name="ranker-page-cache", daemon=True)
        self._thread.start()

    @classmethod
    def for_catalog(
        cls,
        paths: Callable[[], Sequence[Path]],
        mode: str,
        metrics: ServiceMetrics | None = None,
        every: float = 0.0,
    ) -> PageCacheWarmer:
        """The warmer of the catalog's column files (`paths()` names them at each pass) under
        the `catalog_preload` and `catalog_keep_warm_seconds` settings."""
        available = int(psutil.virtual_memory().available)

        def chosen(existing: list[Path] | None = None) -> list[Path]:
            return planned(existing or [p for p in paths() if p.is_file()], mode, available)

        existing = [p for p in paths() if p.is_file()]
        first = chosen(existing)
        left = [p.name for p in existing if p not in first]
        if left and mode == "auto":
            log.info(
                "not warming the page cache with %s: beyond %.0f%% of the %.1f GiB of memory "
                "available; rankings read those pages from the disk until they are cached",
                ", ".join(left),
                100 * AVAILABLE_SHARE,
                available / 2**30,
            )
        return cls(first, metrics, every if mode != "off" else 0.0, chosen)

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
        try:
            self._null = os.open(os.devnull, os.O_WRONLY)
            self._warm()
            while self.every > 0 and not self._stop.wait(self.every):
                self._sweep()
        except OSError as e:  # /dev/null itself could not be opened
            log.warning("stopped warming the page cache with the catalog's files: %s", e)
        finally:
            self._done.set()
            if self._null >= 0:
                os.close(self._null)

    def _warm(self) -> None:
        started = time.perf_counter()
        try:
            for path in self.paths:
                self.read_bytes += self._touch(path, self._count)
                if self._stop.is_set():
                    return
        except OSError as e:
            log.warning("stopped warming the page cache with the catalog's files: %s", e)
            return
        finally:
            self._done.set()
        if self.paths:
            log.info(
                "page cache warmed with the catalog's files (%s): %.2f GiB in %.1f s",
                ", ".join(p.name for p in self.paths),
                self.read_bytes / 2**30,
                time.perf_counter() - started,
            )

    def _sweep(self) -> None:
        """Touch the files kept now; one lost in between (compaction replaced it) is skipped."""
        started, touched = time.perf_counter(), 0
        try:
            kept = self._keep()
        except OSError as e:  # a file went between listing and sizing it: the next pass
            log.debug("skipped a pass over the catalog's files: %s", e)
            return
        for path in kept:
            try:
                touched += self._touch(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warning("could not keep %s in the page cache: %s", path.name, e)
            if self._stop.is_set():
                return
        self.sweeps += 1
        took = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.catalog_cache_sweeps.inc()
        log.log(
            logging.WARNING if took > self.every else logging.DEBUG,
            "kept %.2f GiB of the catalog's files in the page cache in %.1f s%s",
            touched / 2**30,
            took,
            " (longer than the interval: most pages were read from the disk again; the "
            "machine's memory does not hold them)"
            if took > self.every
            else "",
        )

    def _count(self, got: int) -> None:
        if self.metrics is not None:
            self.metrics.catalog_warmed_bytes.set(self.read_bytes + got)

    def _touch(self, path: Path, progress: Callable[[int], None] | None = None) -> int:
        """Pass over `path` from start to end; the bytes passed over."""
        fd = os.open(path, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):  # read in order: the kernel's readahead at its widest
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            at = 0
            while not self._stop.is_set():
                got = self._pass(fd, at)
                if got <= 0:
                    return at
                at += got
                if progress is not None:
                    progress(at)
            return at
        finally:
            os.close(fd)

    def _pass(self, fd: int, at: int) -> int:
        """Pass over up to CHUNK bytes at `at`: spliced to /dev/null where the kernel can (no
        copy), else read into a buffer."""
        if self._buffer is None:
            try:
                return os.sendfile(self._null, fd, at, CHUNK)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self._buffer = bytearray(CHUNK)
        return os.preadv(fd, [self._buffer], at)
