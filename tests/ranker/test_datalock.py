"""One process per data folder: the lock `ranker serve` and `ranker ingest` hold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ranker.datalock import DataDirBusy, DataDirLock


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    with DataDirLock(tmp_path / "data"):
        with pytest.raises(DataDirBusy, match=rf"another ranker process \(pid {os.getpid()}\)"):
            DataDirLock(tmp_path / "data").acquire()
    with DataDirLock(tmp_path / "data"):  # released on exit: the next holder gets it
        pass


def test_the_lock_goes_with_the_process_that_held_it(tmp_path: Path) -> None:
    # A crashed server must not leave the folder locked: the kernel drops a dead holder's lock.
    code = (
        "import os, sys; from ranker.datalock import DataDirLock; "
        f"DataDirLock({str(tmp_path)!r}).acquire(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with DataDirLock(tmp_path):
        pass
