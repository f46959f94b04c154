"""Progress of a long CLI step: a live bar in a terminal, a log line every few seconds without.

Both show the stage, done / total, the rate and the time left; `ranker ingest` and `ranker push`
report through them, so a run in a terminal and one in a pipeline or a job log tell the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

log = logging.getLogger("ranker.progress")

LOG_EVERY_SECONDS = 5.0
"""Without a terminal, the most often a progress line is logged (besides each stage's end)."""


def duration(seconds: float) -> str:
    """A human duration: `4.2 s`, `3 min 07 s`, `1 h 02 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressReport(Protocol):
    """What a long step tells: which stage it is in, and how far through it."""

    def stage(self, name: str) -> None: ...

    def update(self, done: int, total: int) -> None: ...

    def __enter__(self) -> ProgressReport: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "", style="progress.data.speed")


class TerminalProgress:
    """A rich progress bar per stage: count, rate, time left and time elapsed."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task: TaskID | None = None

    def stage(self, name: str) -> None:
        if self._task is not None:  # one line at a time: the stage now running
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(name, total=None)

    def update(self, done: int, total: int) -> None:
        if self._task is None:
            self.stage("working")
        assert self._task is not None
        self._progress.update(self._task, completed=done, total=total)

    def __enter__(self) -> TerminalProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()


class LogProgress:
    """A log line per stage and, within one, at most every `every` seconds (and at its end)."""

    def __init__(
        self, every: float = LOG_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._every = every
        self._clock = clock
        self._name = ""
        self._started = 0.0
        self._last = 0.0

    def stage(self, name: str) -> None:
        self._name = name
        self._started = self._last = self._clock()
        log.info("%s ...", name)

    def update(self, done: int, total: int) -> None:
        now = self._clock()
        if now - self._last < self._every and done < total:
            return
        self._last = now
        elapsed = now - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * done / total:.0f}%)" if total else ""
        if done >= total:
            left = f"done in {duration(elapsed)}"
        elif rate > 0:
            left = f"about {duration((total - done) / rate)} left"
        else:
            left = "time left unknown"
        log.info("%s: %d/%d%s, %.1f/s, %s", self._name, done, total, share, rate, left)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


def progress_for(console: Console) -> TerminalProgress | LogProgress:
    """A live bar when `console` is a terminal, log lines otherwise (pipes, CI, job logs)."""
    return TerminalProgress(console) if console.is_terminal else LogProgress()
