"""A real `ranker serve` in a separate process on 127.0.0.1, and a real stub to it, for measurements."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ranker.config import Settings
from ranker.v1 import ranker_pb2_grpc as pb_grpc

_MAX_MESSAGE = 64 * 1024 * 1024


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _env(settings: Settings, port: int) -> dict[str, str]:
    # The child reads its settings from RANKER_ variables, exactly as `ranker serve` does in
    # production: every field the bench set explicitly is passed on, then the address.
    env = dict(os.environ)
    for name in sorted(settings.model_fields_set):
        value = getattr(settings, name)
        if value is not None:
            env[f"RANKER_{name.upper()}"] = str(value)
    env.update(
        {
            "RANKER_HOST": "127.0.0.1",
            "RANKER_PORT": str(port),
            "RANKER_METRICS_PORT": "0",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    return env


class ServerProcess:
    """`ranker serve` on a data folder, in its own process; a context manager that stops it.

    Started with the same interpreter as the bench, through `ranker.cli.main`, so it is the very
    command `make run` serves with. Waits until the health service says SERVING, then until
    `catalog-cache` does too (the catalog's files read into the page cache after the start,
    `RANKER_CATALOG_PRELOAD`): rankings are measured as a service runs, not while it warms.
    """

    def __init__(self, settings: Settings, log_path: Path, startup_timeout: float = 900.0) -> None:
        self.settings = settings
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.startup_seconds = 0.0
        self.warm_seconds = 0.0
        """From the start until health `catalog-cache` said SERVING."""

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not started"
        return self.proc.pid

    def rss_bytes(self) -> int:
        """Resident memory of the server process now."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def stub(self) -> pb_grpc.CandidateRankerStub:
        assert self.channel is not None, "the server is not started"
        return pb_grpc.CandidateRankerStub(self.channel)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from ranker.cli import main; main()", "serve"],
                env=_env(self.settings, self.port),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.channel = grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ],
        )
        try:
            self._wait_serving(started)
            self.startup_seconds = time.perf_counter() - started
            self._wait_serving(started, "catalog-cache")
            self.warm_seconds = time.perf_counter() - started
        except BaseException:
            self.stop()
            raise

    def _wait_serving(self, started: float, service: str = "") -> None:
        assert self.proc is not None and self.channel is not None
        health = health_pb2_grpc.HealthStub(self.channel)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the bench server exited with code {self.proc.returncode} while starting; "
                    f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet, or still loading
            if time.perf_counter() - started > self.startup_timeout:
                raise TimeoutError(
                    f"the bench server's {service or 'service'} did not become SERVING within "
                    f"{self.startup_timeout:.0f}s; "
                    f"see {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing the server meant to do on shutdown is done."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stop()

    def stop(self) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL if it does not exit in time."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.settings.grace_seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
