"""Warming the page cache with the catalog's column files after a start (ranker.preload)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from ranker.preload import AVAILABLE_SHARE, PageCacheWarmer, planned
from tests.fixtures.pagecache import cached, evict_file
from tests.fixtures.server import ServerHandle, seed, wait_for
from training.demo import DemoData

SERVING = health_pb2.HealthCheckResponse.SERVING


def _files(tmp_path: Path, *sizes: int) -> list[Path]:
    out = []
    for i, n in enumerate(sizes):
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(os.urandom(n))
        out.append(p)
    return out


def test_auto_warms_the_files_that_fit_in_a_share_of_the_available_memory(tmp_path: Path) -> None:
    a, b, c = _files(tmp_path, 1000, 3000, 10)
    budget = math.ceil(4000 / AVAILABLE_SHARE)  # a and b fit together; c would overflow it
    assert planned([a, b, c], "auto", budget) == [a, b]
    assert planned([a, b, c], "auto", budget - 2) == [a]  # b no longer fits: c is not tried
    assert planned([a, b, c], "on", 0) == [a, b, c]
    assert planned([a, b, c], "off", 10**12) == []


def test_the_warmer_reads_every_file_into_the_page_cache(tmp_path: Path) -> None:
    paths = _files(tmp_path, 3 * (8 << 20) + 12345, 70_000)
    assert all(evict_file(p) for p in paths), "the kernel kept the pages: nothing to test"
    assert not any(cached(p) for p in paths)
    warmer = PageCacheWarmer(paths)
    assert warmer.wait(60)
    assert warmer.read_bytes == sum(p.stat().st_size for p in paths)
    assert all(cached(p) for p in paths)
    warmer.close()


def test_the_warmer_keeps_the_files_cached_and_follows_the_ones_named_then(
    tmp_path: Path,
) -> None:
    first, second = _files(tmp_path, 3 * (8 << 20) + 999, 50_000)
    named = [first]
    warmer = PageCacheWarmer([first], every=0.05, keep=lambda: list(named))
    assert warmer.wait(60)
    # Pages lost after the warming (as a reclaimer pages them out) are read back by a pass.
    assert evict_file(first), "the kernel kept the pages: nothing to test"
    wait_for(lambda: cached(first), "the evicted file read back", timeout=60)
    # A file replaced in between (compaction) is followed; one gone is skipped, not fatal.
    assert evict_file(second)
    named[:] = [tmp_path / "gone.bin", second]
    wait_for(lambda: cached(second), "the newly named file read in", timeout=60)
    sweeps = warmer.sweeps
    wait_for(lambda: warmer.sweeps > sweeps, "another pass", timeout=60)
    assert warmer.read_bytes == first.stat().st_size  # only the first pass counts as warming
    warmer.close()
    assert not warmer._thread.is_alive()  # type: ignore[union-attr]


def test_a_file_system_without_splicing_is_read_instead(tmp_path: Path) -> None:
    (path,) = _files(tmp_path, 2 * (8 << 20) + 7)
    assert evict_file(path)
    warmer = PageCacheWarmer([])
    warmer._buffer = bytearray(8 << 20)  # as after sendfile was refused once
    assert warmer._touch(path) == path.stat().st_size
    assert cached(path)


def test_nothing_to_warm_is_done_at_once_and_a_lost_file_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert PageCacheWarmer([]).done
    (gone,) = _files(tmp_path, 100)
    warmer = PageCacheWarmer([gone, tmp_path / "missing.bin"])
    with caplog.at_level(logging.WARNING, logger="ranker.preload"):
        assert warmer.wait(60)
    assert "stopped warming the page cache" in caplog.text
    warmer.close()


def test_closing_stops_the_warming(tmp_path: Path) -> None:
    paths = _files(tmp_path, 8 << 20, 8 << 20)
    warmer = PageCacheWarmer(paths)
    warmer.close()  # stops at the next chunk, at the latest
    assert warmer.done and warmer.read_bytes <= 2 * (8 << 20)


def test_a_restarted_service_warms_its_catalog_and_reports_it(
    start_server: Callable[..., ServerHandle], serving_demo: DemoData
) -> None:
    first = start_server(catalog_keep_warm_seconds=0.05)
    seed(first, serving_demo.candidates[:20])
    # A fresh service holds no column file yet: nothing to warm, reported warm at once.
    assert first.pipeline._upkeep.warmer.paths == []
    assert first.health_status("catalog-cache") == SERVING
    # ... but it keeps the files it writes from then on.
    written = first.pipeline._catalog.column_paths()
    assert written and all(evict_file(p) for p in written)
    wait_for(lambda: all(cached(p) for p in written), "its new files kept in the page cache")
    first.stop()
    again = start_server()  # the same data folder: its catalog's files are on disk now
    warmer = again.pipeline._upkeep.warmer
    assert [p.name.split(".")[0] for p in warmer.paths] == ["blobs", "records"]
    wait_for(lambda: again.health_status("catalog-cache") == SERVING, "catalog-cache SERVING")
    assert warmer.read_bytes == sum(p.stat().st_size for p in warmer.paths) > 0
    assert again.server.metrics.catalog_warmed_bytes._value.get() == warmer.read_bytes
    again.stop()
    off = start_server(catalog_preload="off")
    assert off.pipeline._upkeep.warmer.paths == []
    assert off.pipeline._upkeep.warmer._thread is None  # nor kept
