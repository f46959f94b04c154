"""A throwaway PostgreSQL server for the tests and the benchmarks: initdb, pg_ctl start,
databases on demand, stop.

Debian's `postgresql` package provides the server (`make install` installs it as root with
apt-get; see the Makefile's `postgres` target). initdb and pg_ctl refuse to run as root, so as
root they run as the package's `postgres` system user (`runuser -u postgres --`) on a data
folder in a temporary directory that user owns. The server listens on 127.0.0.1 on a free port
and on a Unix socket in the same directory, with trust authentication: it is reachable only from
this machine and lives only as long as its owner.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

SUPERUSER = "ranker"
INSTALL_HINT = (
    "install Debian's PostgreSQL server (`apt-get install -y postgresql`, which `make install` "
    "runs as root) or put initdb and pg_ctl on PATH"
)


def bin_dir() -> Path | None:
    """The newest Debian server install (/usr/lib/postgresql/N/bin), else initdb on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throwaway PostgreSQL cluster: initdb, pg_ctl start, databases on demand, stop."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="ranker-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError as e:
                raise RuntimeError(
                    "running as root, and there is no `postgres` system user to run the server "
                    f"as: {INSTALL_HINT}"
                ) from e
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [*self._prefix, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()} {log}"
            )

    def start(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -F -c max_connections=200"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            options,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def relation_files(self, url: str, tables: list[str]) -> list[Path]:
        """The heap and TOAST files of `tables` (to read erased bytes back off the disk)."""
        import psycopg

        files: list[Path] = []
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # what shared buffers hold, written to the files
            for table in tables:
                for (rel,) in conn.execute(
                    "SELECT pg_relation_filepath(c.oid) FROM pg_class c WHERE c.oid = "
                    "%s::regclass OR c.oid = (SELECT reltoastrelid FROM pg_class "
                    "WHERE oid = %s::regclass)",
                    (table, table),
                ):
                    base = self.data / rel
                    files += [p for p in base.parent.glob(base.name + "*") if p.is_file()]
        return files

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
