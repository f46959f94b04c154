"""Retrying background work with a doubling pause, one log line per failure (no traceback)."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class RetryBackoff:
    """Runs a task when due; after a failure, waits `first` seconds, doubling up to `most`.

    For work that is retried forever in the background (saving the index: the store stays the
    truth, so a failed save is only a cache not refreshed): a full disk must not fill the log
    with a traceback every half second.
    """

    def __init__(self, what: str, first: float = 0.5, most: float = 60.0) -> None:
        self.what = what
        self.first = first
        self.most = most
        self.failures = 0
        self._next = 0.0

    def run(self, now: float, task: Callable[[], bool]) -> None:
        """Call `task` (True when it did its work) unless a pause after a failure is running."""
        if now < self._next:
            return
        try:
            done = task()
        except Exception as e:  # noqa: BLE001 (logged below; retried when the pause is over)
            self.failures += 1
            pause = min(self.most, self.first * 2 ** min(self.failures - 1, 16))
            self._next = now + pause
            log.warning(
                "could not %s (%s: %s); attempt %d failed, next in %.1f s",
                self.what,
                type(e).__name__,
                e,
                self.failures,
                pause,
            )
            return
        if done and self.failures:
            log.info("%s: succeeded again after %d failed attempts", self.what, self.failures)
            self.failures = 0
