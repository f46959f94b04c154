"""Owner-only data: files 0600, folders 0700 (CVs, protected attributes, tokens, decisions)."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def _owned(path: Path) -> bool:
    # Never chmod what another account owns (a shared parent such as /var/lib): it would fail,
    # and it is that account's decision.
    try:
        return path.stat().st_uid == os.geteuid()
    except OSError:
        return False


def private_dir(path: Path) -> Path:
    """`path` as an owner-only folder: created 0700 (missing parents too), tightened if ours."""
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            pass
    if _owned(path) and path.stat().st_mode & 0o777 != PRIVATE_DIR:
        path.chmod(PRIVATE_DIR)
    return path


def private_file(path: Path) -> Path:
    """`path` as an owner-only file: created empty with 0600 if missing, tightened if ours."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        if _owned(path) and path.stat().st_mode & 0o777 != PRIVATE_FILE:
            path.chmod(PRIVATE_FILE)
    else:
        os.close(fd)
    return path


def tighten_if_present(path: Path) -> None:
    """0600 for a file another tool may have created (an old store's -wal and -shm)."""
    path = Path(path)
    if path.exists() and _owned(path) and path.stat().st_mode & 0o777 != PRIVATE_FILE:
        path.chmod(PRIVATE_FILE)
