"""Admission of encoding work: a character budget per call and in flight, refused at once when full.

Encoding is the one kind of work whose cost the caller chooses (a 100,000-character CV takes
seconds). Admitting it against a budget keeps the encoder's queue short: a write that would
wait minutes behind others gets RESOURCE_EXHAUSTED now, and the caller can back off.
"""

from __future__ import annotations

import logging
import os
import threading

from ranker.errors import Overloaded
from ranker.metrics import ServiceMetrics

log = logging.getLogger(__name__)


def lower_thread_priority(increment: int) -> None:
    """Make the calling thread `increment` nicer (an executor's initializer for encoding threads).

    On Linux the nice value belongs to each thread, so this leaves the threads that answer reads
    alone; the kernel's scheduler then gives them the core first whenever both are runnable,
    which a queue or a budget cannot do for work that is already running. Elsewhere it does
    nothing.
    """
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
    except OSError as e:  # a sandbox may forbid it; encoding still works, only less politely
        log.warning("could not lower this thread's priority: %s", e)


class EncodeAdmission:
    """Counts the characters and calls admitted for encoding (running or waiting); thread-safe."""

    def __init__(
        self,
        max_request_chars: int,
        max_in_flight_chars: int,
        max_calls: int,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.max_request_chars = max_request_chars
        self.max_in_flight_chars = max_in_flight_chars
        self.max_calls = max_calls
        self._metrics = metrics
        self._mutex = threading.Lock()
        self._chars = 0
        self._calls = 0

    @property
    def in_flight(self) -> tuple[int, int]:
        """(characters, calls) admitted now."""
        with self._mutex:
            return self._chars, self._calls

    def admit(self, chars: int, what: str) -> int:
        """Take `chars` of the budget (give it back with `release`), or raise Overloaded at once."""
        if chars > self.max_request_chars:
            self._refused("too_large")
            raise Overloaded(
                f"{what} holds {chars:,} characters of text to encode; one call may send at most "
                f"{self.max_request_chars:,} (RANKER_MAX_REQUEST_CHARS): split it into smaller "
                "batches"
            )
        with self._mutex:
            busy = (self._chars, self._calls)
            admitted = (
                self._calls < self.max_calls and self._chars + chars <= self.max_in_flight_chars
            )
            if admitted:
                self._chars += chars
                self._calls += 1
            self._gauge()
        if not admitted:
            self._refused("busy")
            raise Overloaded(
                f"the encoder is busy ({busy[0]:,} characters in {busy[1]} calls admitted; at most "
                f"{self.max_in_flight_chars:,} characters and {self.max_calls} calls); retry "
                "with backoff, or send smaller batches"
            )
        return chars

    def release(self, chars: int) -> None:
        """Give back what `admit` took, once the work has ended (finished, failed or stopped)."""
        with self._mutex:
            self._chars -= chars
            self._calls -= 1
            self._gauge()

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.encode_chars_in_flight.set(self._chars)

    def _refused(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.encode_refused.labels(reason=reason).inc()
