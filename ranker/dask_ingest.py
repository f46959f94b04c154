"""Bulk encoding on Dask workers for `ranker ingest --dask`: batches out, vectors back, in order.

The driver (`ranker.ingest.ingest_files`) still checks the files, skips erased and unchanged
candidates, writes the store and rebuilds the index; only the encoding moves. Each worker loads
the ONNX encoder once (a per-process cache keyed by the folder and settings) from the same path
as the driver, so that folder must be reachable there (the same machine, a shared file system,
or a copy at the same path); a worker holding a different export is refused.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embeddings.config import EncoderSettings
from embeddings.manifest import EncoderManifest
from ranker.domain import Candidate, Posting
from ranker.encoding import TextEncoder, encode_candidates, encode_postings
from ranker.errors import InvalidInput
from ranker.ingest import INGEST_BATCH, Batch, BatchEncoder
from ranker.rows import CandidateRow, PostingRow

if TYPE_CHECKING:
    from distributed import Client, Future

IN_FLIGHT_PER_THREAD = 2
"""Batches sent ahead per worker thread: enough to keep every worker busy while the driver
stores, few enough that a file of millions of candidates never sits in memory at once."""


@functools.lru_cache(maxsize=4)
def _worker_encoder(folder: str, settings_json: str, files: tuple[tuple[str, str], ...]) -> Any:
    """The encoder of this worker process, loaded on its first batch and kept for the rest."""
    from embeddings.encoder import OnnxEncoder

    path = Path(folder)
    try:
        manifest = EncoderManifest.read(path)
        manifest.verify_files(path)
        found = manifest.files
    except (OSError, ValueError) as e:
        raise InvalidInput(
            f"a Dask worker cannot read the encoder at {folder} ({e}); make the exported encoder "
            "folder reachable at that path on every worker"
        ) from e
    if found != dict(files):
        raise InvalidInput(
            f"a Dask worker's encoder at {folder} is another export than the driver's; copy the "
            "driver's folder there (or export on one machine and share it)"
        )
    return OnnxEncoder(path, EncoderSettings.model_validate_json(settings_json))


def _encode_batch(
    folder: str, settings_json: str, files: tuple[tuple[str, str], ...], part: list[Candidate]
) -> list[CandidateRow | InvalidInput]:
    """Runs on a worker: `ranker.encoding.encode_candidates` with the worker's encoder."""
    encoder: TextEncoder = _worker_encoder(folder, settings_json, files)
    return encode_candidates(encoder, part)


def _encode_postings(
    folder: str, settings_json: str, files: tuple[tuple[str, str], ...], part: list[Posting]
) -> list[PostingRow | InvalidInput]:
    """Runs on a worker: `ranker.encoding.encode_postings` with the worker's encoder."""
    encoder: TextEncoder = _worker_encoder(folder, settings_json, files)
    return encode_postings(encoder, part)


def worker_encoder_settings(settings: EncoderSettings, threads: int) -> EncoderSettings:
    """The driver's encoder settings for the workers, with `threads` ONNX Runtime threads each.

    Sent explicitly, field by field: a worker's own environment does not change how it encodes.
    """
    values = {name: getattr(settings, name) for name in EncoderSettings.model_fields}
    return EncoderSettings.model_validate(values | {"intra_op_threads": threads})


class DaskBatches(BatchEncoder):
    """Encodes ingest batches on the workers of a Dask cluster, a bounded number at a time."""

    def __init__(
        self, client: Client, encoder_dir: Path, settings: EncoderSettings, threads: int = 1
    ) -> None:
        """`settings`: the driver's (its encoder fields go to the workers); `threads`: ONNX
        Runtime threads per worker task (`Settings.dask_encoder_threads`)."""
        from ranker.dask_cluster import worker_threads

        try:
            manifest = EncoderManifest.read(encoder_dir)
        except (OSError, ValueError) as e:
            raise InvalidInput(
                f"no usable encoder at {encoder_dir} ({e}); export it first: "
                "`ranker export-encoder`"
            ) from e
        self.client = client
        self._dim = manifest.dim
        self._args = (
            str(Path(encoder_dir).resolve()),
            worker_encoder_settings(settings, threads).model_dump_json(),
            tuple(sorted(manifest.files.items())),
        )
        self.in_flight = IN_FLIGHT_PER_THREAD * worker_threads(client)

    @property
    def dim(self) -> int:
        return self._dim

    def candidates(
        self, batches: Iterable[Batch]
    ) -> Iterator[tuple[Batch, list[CandidateRow | InvalidInput]]]:
        window: deque[tuple[Batch, Future | None]] = deque()
        for batch in batches:
            window.append((batch, self._submit(_encode_batch, batch.candidates)))
            if len(window) >= self.in_flight:
                yield self._result(*window.popleft())
        while window:
            yield self._result(*window.popleft())

    def postings(self, postings: Sequence[Posting]) -> list[PostingRow | InvalidInput]:
        parts = [
            list(postings[i : i + INGEST_BATCH]) for i in range(0, len(postings), INGEST_BATCH)
        ]
        futures = [self._submit(_encode_postings, part) for part in parts]
        return [row for future in futures for row in (future.result() if future else [])]

    def _submit(self, fn: Any, items: list[Any]) -> Future | None:
        # pure=False: no hashing of the texts for a cache key; every batch is new work.
        return self.client.submit(fn, *self._args, items, pure=False) if items else None

    @staticmethod
    def _result(
        batch: Batch, future: Future | None
    ) -> tuple[Batch, list[CandidateRow | InvalidInput]]:
        return batch, ([] if future is None else future.result())
