"""Atomic file replacement: a crash leaves the old file or the new one, never half of either."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` when the block ends without an error.

    Written to a temp file beside `path`, fsynced, then renamed over it; an error inside the
    block leaves `path` as it was and removes the temp file. The file is owner-only (0600:
    `mkstemp`'s mode), and so is a folder this creates (0700).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_text_file(path: Path, newline: str | None = None) -> Iterator[TextIO]:
    """`atomic_file` as UTF-8 text; `newline` as for `open` (the csv module wants "")."""
    with atomic_file(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline=newline)
        try:
            yield text
        finally:
            # Hand the binary file back unclosed: `atomic_file` still has to fsync it.
            text.detach()


def write_bytes_atomic(path: Path, chunks: list[bytes] | bytes) -> Path:
    """Write `chunks` to `path` atomically (`atomic_file`)."""
    with atomic_file(path) as f:
        for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
            f.write(chunk)
    return Path(path)


def write_text_atomic(path: Path, text: str) -> Path:
    """`write_bytes_atomic` for UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))
