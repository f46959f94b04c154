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
    first = start_server()
    seed(first, serving_demo.candidates[:20])
    # A fresh service holds no column file yet: nothing to warm, reported warm at once.
    assert first.pipeline._upkeep.warmer.paths == []
    assert first.health_status("catalog-cache") == SERVING
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
