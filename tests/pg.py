"""A real PostgreSQL server for the tests: installed from Debian's packages when missing, started
in a temporary directory on a free loopback port, stopped afterwards. No mocks.

PostgreSQL refuses to run as root, so when the tests run as root the server's own commands run as
the `postgres` user (which the Debian package creates) on a directory that user owns.
"""

from __future__ import annotations

import fcntl
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Serialises installs across test sessions running side by side on one machine.
INSTALL_LOCK = Path(tempfile.gettempdir()) / "tm-postgresql-install.lock"


def _bin_dir() -> Path | None:
    """The newest installed server's bin directory (it holds initdb, pg_ctl, createdb)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    return Path(found[-1]).parent if found else None


def ensure_installed() -> Path:
    """Installs the server from Debian's packages unless present; returns its bin directory."""
    found = _bin_dir()
    if found is not None:
        return found
    if shutil.which("apt-get") is None:
        raise RuntimeError("PostgreSQL is not installed and apt-get is not available")
    with open(INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _bin_dir()
        if found is not None:
            return found
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
            env=env,
            check=True,
            capture_output=True,
        )
    found = _bin_dir()
    if found is None:
        raise RuntimeError("installed postgresql but found no /usr/lib/postgresql/*/bin/initdb")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One running cluster; `url(db)` names a database on it, `create_db()` makes a fresh one."""

    def __init__(self, bindir: Path, root: Path, port: int, options: str = "") -> None:
        self.bindir = bindir
        self.root = root
        self.port = port
        self.options = options
        self._names = itertools.count()

    def stop(self) -> None:
        """Stops the server (fast: open sessions are ended), as an outage would."""
        _pg_ctl_stop(self.bindir, self.root).check_returncode()

    def start(self) -> None:
        """Starts the stopped server again on the same port."""
        _pg_ctl_start(self.bindir, self.root, self.options).check_returncode()

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def _client(self, *args: str) -> None:
        subprocess.run(
            [
                str(self.bindir / args[0]),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                *args[1:],
            ],
            check=True,
            capture_output=True,
        )

    def create_db(self) -> str:
        """A new empty database; returns its URL."""
        name = f"tm_{os.getpid()}_{next(self._names)}"
        self._client("createdb", name)
        return self.url(name)


def _pg_ctl_start(bindir: Path, root: Path, options: str) -> subprocess.CompletedProcess[bytes]:
    """Starts the cluster in ``root/data`` with ``options``, logging to ``root/server.log``."""
    return subprocess.run(
        _as_owner(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(root / "data"),
                "-l",
                str(root / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        capture_output=True,
    )


def _pg_ctl_stop(bindir: Path, root: Path) -> subprocess.CompletedProcess[bytes]:
    """Stops the cluster in ``root/data`` (fast: open sessions are ended)."""
    return subprocess.run(
        _as_owner([str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w", "stop"]),
        capture_output=True,
    )


def listening(url: str, channel: str) -> int:
    """How many sessions of the server at ``url`` last ran ``LISTEN channel``."""
    out = subprocess.run(
        [
            "psql",
            url,
            "-Atc",
            f"SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN {channel}'",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def server(
    extra_options: str = "", prepare: Callable[[Path], None] | None = None
) -> Iterator[Server]:
    """Starts a throwaway cluster (fsync off: the data dies with the test session).

    ``prepare`` is called with the data directory after ``initdb`` and before the server starts
    (to place certificates, edit ``pg_hba.conf``); ``extra_options`` are added to the server's.
    """
    bindir = ensure_installed()
    root = Path(tempfile.mkdtemp(prefix="tm-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    try:
        subprocess.run(
            _as_owner(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        if prepare is not None:
            prepare(data)
        port = 0
        for _ in range(5):  # another process may take the free port before the server binds it
            port = _free_port()
            options = (
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                f"{extra_options}"
            )
            started = _pg_ctl_start(bindir, root, options)
            if started.returncode == 0:
                break
        else:
            log = (root / "server.log").read_text(errors="replace")
            raise RuntimeError(f"PostgreSQL did not start:\n{log}")
        try:
            yield Server(bindir, root, port, options)
        finally:
            _pg_ctl_stop(bindir, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
