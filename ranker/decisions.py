"""The decision log writer: every ranking served, stored off the request path, never silently lost.

When the store cannot take decisions (disk full, I/O error), the decisions already served are
kept: appended to a JSONL spool file (fsynced; in memory only if even that cannot be written)
and replayed into the store when it takes writes again. The policy
(Settings.decision_log_policy) decides about the next rankings: `strict` refuses them
(UNAVAILABLE, health NOT_SERVING) until the log is written again; `spool` keeps serving.
With `sync` (Settings.decision_log_sync) a ranking is answered only once its decision is
stored, so none is ever answered unlogged, at the cost of an fsync per ranking.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ranker.admission import lower_thread_priority
from ranker.config import Settings
from ranker.errors import StorageUnavailable
from ranker.metrics import ServiceMetrics
from ranker.permissions import PRIVATE_FILE
from ranker.rows import Decision, ScoredCandidates
from ranker.store_api import Store

log = logging.getLogger(__name__)

Policy = Literal["strict", "spool"]

MAX_HELD = 100_000
"""Decisions kept in memory when neither the store nor the spool file can take them; past
this, the spool policy refuses rankings too (UNAVAILABLE) rather than grow without bound."""


class _Pending:
    """One submitted decision: `done` is set once it is stored (or failed, with `error`)."""

    __slots__ = ("decision", "done", "error")

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.done = threading.Event()
        self.error: BaseException | None = None


class DecisionLog:
    """Writes ranking decisions to the store on a background thread, in submission order.

    Off the request path so a burst of rankings shares one fsync. `flush` lets an erasure wait
    until every decision already made is stored (`drain` also empties the spool), so the
    store's erasure then removes its rows.
    """

    def __init__(
        self,
        store: Store,
        metrics: ServiceMetrics | None,
        maxsize: int,
        policy: Policy = "strict",
        spool_path: Path | None = None,
        sync: bool = False,
        linger: float = 0.0,
        nice: int = 0,
    ) -> None:
        self._store = store
        self.linger = 0.0 if sync else linger
        self.nice = nice
        self._metrics = metrics
        self.policy: Policy = policy
        self.sync = sync
        self.spool_path = spool_path
        # Bounded: under sustained overload rankings wait rather than memory growing unchecked.
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=maxsize)
        self._backlog = threading.Lock()  # the spool file and `_held`
        self._held: list[Decision] = []
        self._spooled = 0
        self._failing: str | None = None
        if spool_path is not None and spool_path.exists():
            self._spooled = sum(1 for _ in _lines(spool_path))
            self._failing = f"{self._spooled} decisions wait in {spool_path} from an earlier run"
        self._report()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(
        cls, store: Store, metrics: ServiceMetrics | None, settings: Settings
    ) -> DecisionLog:
        """The service's decision log, as its settings say."""
        return cls(
            store,
            metrics,
            maxsize=10_000,
            policy=settings.decision_log_policy,
            spool_path=settings.decision_spool_path,
            sync=settings.decision_log_sync,
            linger=settings.decision_log_linger_ms / 1000,
            nice=settings.decision_log_nice,
        )

    # -- the request path -----------------------------------------------------------------
    def submit(self, decision: Decision) -> _Pending:
        """Queue a decision; `settle` the result before answering the ranking.

        Raises StorageUnavailable (the ranking is not answered) under `strict` while the log is
        failing, and under `spool` once the memory backlog is full.
        """
        failing = self._failing
        if self.policy == "strict" and failing is not None:
            raise StorageUnavailable(
                f"the decision log cannot be written ({failing}); under "
                "RANKER_DECISION_LOG_POLICY=strict no ranking is served unlogged until it can. "
                "Free disk space or fix the store, or set RANKER_DECISION_LOG_POLICY=spool to "
                "keep serving with a durable backlog"
            )
        if self.policy == "spool" and len(self._held) >= MAX_HELD:
            raise StorageUnavailable(
                f"the decision log cannot be written ({self._failing}) and {MAX_HELD} decisions "
                "are already held in memory; rankings are refused until the store or the spool "
                "file can be written again (free disk space)"
            )
        pending = _Pending(decision)
        self._queue.put(pending)
        return pending

    def settle(self, pending: _Pending) -> None:
        """With `sync`, wait until the decision is stored; raise StorageUnavailable if it could
        not be (the ranking must not be answered). Otherwise return at once."""
        if not self.sync:
            return
        pending.done.wait()
        if pending.error is not None:
            raise StorageUnavailable(
                f"the decision log cannot be written ({pending.error}); under "
                "RANKER_DECISION_LOG_POLICY=strict a ranking is not served unlogged. Free disk "
                "space or fix the store, or set RANKER_DECISION_LOG_POLICY=spool to keep serving "
                "with a durable backlog"
            ) from pending.error

    @property
    def failing(self) -> str | None:
        """Why the log cannot be written now (None when it can)."""
        return self._failing

    @property
    def backlog(self) -> int:
        """Decisions served but not yet in the store (spooled or held)."""
        return self._spooled + len(self._held)

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self.backlog:
            self.retry()
        if self._held:
            log.error(
                "%d decisions could not be written to the store or the spool file and are lost "
                "at shutdown",
                len(self._held),
            )

    # -- recovery -------------------------------------------------------------------------
    def retry(self) -> bool:
        """Replay the backlog into the store (or probe it, under strict); True when healthy.

        Called by the service's upkeep while failing, and before an erasure (`drain`).
        """
        if self._failing is None and not self.backlog:
            return True
        with self._backlog:
            try:
                if self.backlog:
                    self._replay()
                else:
                    self._store.probe_write()
            except Exception as e:  # noqa: BLE001 (reported, retried on the next upkeep)
                self._fail(e)
                return False
            if self._failing is not None:
                log.info("the decision log is written again")
            self._failing = None
            self._report()
            return True

    def drain(self) -> None:
        """Every decision made so far in the store (queue, spool, memory), or StorageUnavailable.

        An erasure runs this first: a decision naming the candidate must not wait in the spool
        file (a copy outside the store) or come back into the store after the erasure.
        """
        self.flush()
        if self.backlog and not self.retry():
            raise StorageUnavailable(
                f"the decision log's backlog cannot be written to the store ({self._failing}); "
                "the erasure would leave decisions naming the candidate in "
                f"{self.spool_path}. Free disk space, then retry the erasure"
            )

    def _replay(self) -> None:
        decisions: list[Decision] = []
        if self.spool_path is not None and self.spool_path.exists():
            for line in _lines(self.spool_path):
                try:
                    decisions.append(_decision_from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError):
                    # A line torn by a crash in the middle of an append cannot be read back;
                    # the rest can, so keep going and say so.
                    log.warning("skipped an unreadable line of %s", self.spool_path)
        decisions += self._held
        stored = self._store.has_decisions([d.request_id for d in decisions])
        todo = [d for d in decisions if d.request_id not in stored]
        for start in range(0, len(todo), 256):
            self._store.log_decisions(todo[start : start + 256])
        if self.spool_path is not None:
            self.spool_path.unlink(missing_ok=True)
        if decisions:
            log.info("replayed %d decisions from the backlog into the store", len(todo))
        self._spooled = 0
        self._held = []

    # -- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        # Measured at 10^6 candidates on 2 cores: writing a decision costs ~1.3 ms
        # of CPU; started at once, it raced the ranking's own answer for the cores.
        lower_thread_priority(self.nice)
        while True:
            batch = [self._queue.get()]
            if self.linger and batch[0] is not None:
                time.sleep(self.linger)
            # Drain what is already queued so a burst of rankings costs one fsync, not one each.
            while len(batch) < 256:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is None for item in batch)
            pending = [item for item in batch if item is not None]
            try:
                if pending:
                    self._write(pending)
            except Exception:
                # The writer must outlive any one batch: a dead writer would leave every later
                # decision (and an erasure's drain) waiting forever.
                log.exception("the decision-log writer failed on a batch of %d", len(pending))
                self._fail_batch(pending)
            finally:
                for p in pending:
                    p.done.set()
                for _ in batch:
                    self._queue.task_done()
            if stop:
                return

    def _write(self, pending: list[_Pending]) -> None:
        decisions = [p.decision for p in pending]
        try:
            self._store.log_decisions(decisions)
        except Exception as e:  # noqa: BLE001 (every path below reports it)
            self._fail(e)
            if self.sync:
                # Not served yet: each ranking gets UNAVAILABLE from `settle`.
                for p in pending:
                    p.error = e
                self._count("refused", len(pending))
            else:
                self._keep(decisions)  # already served: they must not be lost
            return
        if self._failing is not None and self.backlog:
            self.retry()  # the store takes writes again: bring the backlog in too
        elif self._failing is not None:
            log.info("the decision log is written again")
            self._failing = None
            self._report()

    def _fail_batch(self, pending: list[_Pending]) -> None:
        """A batch the writer could not handle at all: refused when not served yet (sync), else
        kept in memory so it is replayed once the store takes writes again."""
        try:
            if self.sync:
                for p in pending:
                    p.error = RuntimeError("the decision-log writer failed")
            else:
                with self._backlog:
                    self._held.extend(p.decision for p in pending)
        except Exception:  # noqa: BLE001 (already logged by the caller)
            pass

    def _keep(self, decisions: list[Decision]) -> None:
        """Decisions already served: append to the spool file (fsynced); in memory if that fails."""
        with self._backlog:
            if self.spool_path is not None and not self._held:
                try:
                    _append(self.spool_path, [_decision_to_json(d) for d in decisions])
                    self._spooled += len(decisions)
                    self._count("spooled", len(decisions))
                    self._report()
                    return
                except OSError as e:
                    log.error(
                        "could not append %d decisions to %s (%s); holding them in memory",
                        len(decisions),
                        self.spool_path,
                        e,
                    )
            self._held.extend(decisions)
            self._count("held", len(decisions))
            self._report()

    def _fail(self, e: BaseException) -> None:
        first = self._failing is None
        self._failing = f"{type(e).__name__}: {e}"
        if first:
            # One line per outage, not a traceback per batch: the metric counts the batches.
            log.error(
                "the decision log cannot be written to the store (%s); policy %s: %s",
                self._failing,
                self.policy,
                "rankings are refused until it can"
                if self.policy == "strict"
                else f"rankings go on; their decisions are spooled to {self.spool_path}",
            )
        self._report()

    def _count(self, outcome: str, n: int) -> None:
        if self._metrics is not None:
            self._metrics.decision_log_failures.labels(outcome=outcome).inc(n)

    def _report(self) -> None:
        if self._metrics is not None:
            self._metrics.decision_log_failing.set(0 if self._failing is None else 1)
            self._metrics.decision_log_backlog.labels(where="spool").set(self._spooled)
            self._metrics.decision_log_backlog.labels(where="memory").set(len(self._held))


# -- the spool file: one JSON object per decision, fields as the record declares them ---------


def _lines(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [line for line in f if line.strip()]


def _append(path: Path, objects: list[dict[str, Any]]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        for obj in objects:
            f.write(json.dumps(obj, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _plain(value: Any) -> Any:
    """JSON for a Decision field value, tagged so `_unplain` restores its type."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype), "shape": value.shape}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, tuple):
        return {"__tuple__": [_plain(v) for v in value]}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[k, _plain(v)] for k, v in value.items()]}
    if isinstance(value, ScoredCandidates):
        return {
            "__scored__": {
                f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
            }
        }
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        arr = np.asarray(value["__ndarray__"], dtype=value["dtype"])
        return arr.reshape(value["shape"])
    if "__datetime__" in value:
        return datetime.fromisoformat(value["__datetime__"])
    if "__tuple__" in value:
        return tuple(_unplain(v) for v in value["__tuple__"])
    if "__scored__" in value:
        return ScoredCandidates(**{k: _unplain(v) for k, v in value["__scored__"].items()})
    return {k: _unplain(v) for k, v in value["__dict__"]}


def _decision_to_json(d: Decision) -> dict[str, Any]:
    return {f.name: _plain(getattr(d, f.name)) for f in dataclasses.fields(d)}


def _decision_from_json(raw: dict[str, Any]) -> Decision:
    names = {f.name for f in dataclasses.fields(Decision)}
    return Decision(**{k: _unplain(v) for k, v in raw.items() if k in names})
