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


def test_another_process_holding_the_folder_is_named_in_the_refusal(tmp_path: Path) -> None:
    code = (
        "import sys; from ranker.datalock import DataDirLock; "
        f"lock = DataDirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); "
        "sys.stdin.readline(); lock.release()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DataDirBusy, match=rf"\(pid {holder.pid}\).*RANKER_DATA_DIR"):
            DataDirLock(tmp_path).acquire()
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    with DataDirLock(tmp_path):  # released by its holder: free again
        pass
