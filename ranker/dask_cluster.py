"""A Dask client for offline work: a scheduler's address, or `local:N` worker processes here."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ranker.errors import InvalidInput

if TYPE_CHECKING:
    from distributed import Client

LOCAL = re.compile(r"^local:(\d+)$")
"""`local:N`: a LocalCluster of N single-threaded worker processes on this machine."""

CONNECT_TIMEOUT_SECONDS = 30
"""How long to wait for a remote scheduler before giving up with a message."""


@contextlib.contextmanager
def dask_client(address: str) -> Iterator[Client]:
    """A connected client, closed (with its local cluster, if any) on exit.

    `local:N` starts N worker processes with one thread each: LightGBM's network layer is one
    per process, so Dask training needs processes, never threads, and one thread per worker
    keeps each worker's LightGBM and ONNX Runtime from fighting over the shared cores.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise InvalidInput(
            "Dask is not installed here; install the `dask` extra "
            "(`pip install 'candidate-ranker[dask]'`, or `make install`), or run without --dask"
        ) from e

    local = LOCAL.match(address.strip())
    if local is not None:
        n = int(local.group(1))
        if n < 1:
            raise InvalidInput(f"--dask {address}: a local cluster needs at least one worker")
        with (
            LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_SECONDS)
    except (OSError, TimeoutError, ValueError) as e:
        raise InvalidInput(
            f"cannot reach the Dask scheduler at {address!r} ({e}); start it (`dask scheduler`, "
            "then `dask worker ADDRESS` on each machine), or use --dask local:N"
        ) from e
    with client:
        yield client


def worker_threads(client: Client) -> int:
    """Threads over all the cluster's workers (at least 1): how many tasks run at once."""
    return max(1, sum(client.nthreads().values()))
