"""``tm.Store``: the embedded state database (SQLite) where runs and task transitions are recorded,
and the manager of cached function calls (``@store.task``, seed 000).

The database is ``db_url``, else ``$TM_DB_URL``, else ``tm.config.DEFAULT_DB_URL``, else
``sqlite:///.tm/tm.db`` (relative to the working directory); cached results go to ``result_dir``,
else ``$TM_RESULT_DIR``, else ``tm.config.DEFAULT_RESULT_DIR``, else ``.tm/results``. Nothing is
opened or created until first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from . import _signing, config
from ._tm import CacheIndex, StoreCore
from .exceptions import StoreError

__all__ = ["Store", "default_result_dir", "default_store", "default_url"]


def default_url() -> str:
    """The database URL used when none is given: ``$TM_DB_URL``, ``tm.config.DEFAULT_DB_URL`` or
    ``sqlite:///.tm/tm.db``."""
    return os.environ.get("TM_DB_URL") or config.DEFAULT_DB_URL or "sqlite:///.tm/tm.db"


def default_result_dir() -> str:
    """Where cached results go when no ``result_dir`` is given: ``$TM_RESULT_DIR``,
    ``tm.config.DEFAULT_RESULT_DIR`` or ``.tm/results``."""
    return os.environ.get("TM_RESULT_DIR") or config.DEFAULT_RESULT_DIR or ".tm/results"


_default: Store | None = None
_default_lock = threading.Lock()


def default_store() -> Store:
    """The store ``@tm.cached`` uses, made on first use from the defaults at that moment."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Store()
        return _default


class Store:
    """Run history in SQLite: ``Executor(store=Store())`` records every run and task transition.

    Writes are queued and committed in batches by one writer thread (group commit); reads use their
    own connections and never block it, so the CLI can read while an executor writes.

    It is also the manager of cached calls: ``@store.task`` caches a function's results in files
    under ``result_dir``, with their facts and state in the database (see :meth:`task`).

    Results that tasks persist (``@task(persist=True)``) are also kept in memory, up to
    ``cache_bytes`` (least recently used dropped first), so reading one back costs no disk access
    and a long-running process stays bounded.

    Args:
        db_url: ``sqlite:///relative.db``, ``sqlite:////absolute.db``, a file path,
            ``sqlite://:memory:``, or a PostgreSQL server's
            ``postgresql://user:password@host:port/database``, which processes on many hosts
            can share (``result_dir`` must then be a directory they all see).
        result_dir: the directory of cached results.
        cache_bytes: the budget of each in-memory cache (recently used cached-call results, so a
            hit reads no file though the database is still asked; persisted task results): 64 MiB
            by default, 0 keeps none.
        read_only: open an existing SQLite database for reading only: nothing is created,
            migrated or written beside it, so history on a read-only file system or in a
            directory this process cannot write can be inspected; every write raises
            ``tm.StoreError``. (PostgreSQL databases open as usual.)
        file_mode: the permission bits of a SQLite database file that tm creates (its ``-wal``
            and ``-shm`` files take the same) and, with search bits added where reading is
            allowed, of the directories it creates for it: ``$TM_FILE_MODE`` (octal, such as
            ``640``) or ``0o600`` (owner only) by default, since the database holds what tasks
            returned. The umask still applies; existing files keep their modes. The agent queue's
            files follow ``$TM_FILE_MODE`` too.
    """

    def __init__(
        self,
        db_url: str | None = None,
        result_dir: str | os.PathLike[str] | None = None,
        *,
        cache_bytes: int = 64 << 20,
        read_only: bool = False,
        file_mode: int | None = None,
    ) -> None:
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        if file_mode is not None and not (0 <= file_mode <= 0o777 and file_mode & 0o600 == 0o600):
            raise ValueError(
                f"file_mode must be permission bits (0o600-0o777) letting the owner read and "
                f"write, got {file_mode:#o}"
            )
        self.file_mode = file_mode
        self.url = db_url or default_url()
        self.result_dir = Path(result_dir or default_result_dir()).absolute()
        self.cache_bytes = cache_bytes
        self.read_only = read_only
        self._core: StoreCore | None = None
        self._cache: CacheIndex | None = None
        self._lock = threading.Lock()
        self._root: tuple[Path, str] | None = None
        self._signer: _signing.Signer | None = None

    @property
    def modes(self) -> tuple[int, int]:
        """The permission bits of the files and directories tm creates for this store (result
        files and their folders too): ``file_mode``, else ``$TM_FILE_MODE``, else owner-only;
        a directory adds search bits where reading is allowed (0o600 -> 0o700)."""
        mode = self.file_mode
        if mode is None:
            text = os.environ.get("TM_FILE_MODE")
            try:
                mode = int(text, 8) if text else 0o600
            except ValueError:
                mode = 0o600  # the database refuses a bad value loudly; results stay private
        return mode, mode | (mode & 0o444) >> 2

    @property
    def core(self) -> StoreCore:
        """The open database (opened, created and migrated on first use; raises ``tm.StoreError``)."""
        # Once open, no lock: a child forked while another thread held it would wait forever.
        core = self._core
        if core is not None:
            return core
        with self._lock:
            if self._core is None:
                core = StoreCore(self.url, read_only=self.read_only, file_mode=self.file_mode)
                core.set_cache_capacity(self.cache_bytes)
                _signing.register(core.location, self.result_dir)
                self._core = core
            return self._core

    @property
    def signer(self) -> _signing.Signer:
        """Signs and verifies what this store's database and result files hold (the key:
        ``$TM_SECRET_KEY`` or ``secret.key`` beside the store, created on first use)."""
        signer = self._signer
        if signer is None:
            signer = self._signer = _signing.for_store(self)
        return signer

    def inside_result_dir(self, path: str | os.PathLike[str]) -> str | None:
        """``path`` resolved (``..`` and symlinks) if it names a file inside ``result_dir``, else
        None. Result paths come from the database, which must not decide which files tm reads or
        deletes: a row pointing elsewhere is refused whatever its hash."""
        root = self._root
        if root is None or root[0] != self.result_dir:
            root = self._root = (
                self.result_dir,
                os.path.join(os.path.realpath(self.result_dir), ""),
            )
        text = os.fspath(path)
        if not os.path.isabs(text) or f"{os.sep}..{os.sep}" in f"{text}{os.sep}":
            return None
        real = os.path.realpath(text)
        return real if real.startswith(root[1]) else None

    @property
    def location(self) -> str:
        return self.core.location

    def flush(self) -> None:
        """Waits until every recorded transition is committed (raises ``tm.StoreError`` on failure)."""
        self.core.flush()

    def runs(
        self, graph: str | None = None, state: str | None = None, limit: int | None = 20
    ) -> list[dict[str, Any]]:
        """Recent runs, newest first."""
        return self.core.list_runs(graph=graph, state=state, limit=limit)

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run with its tasks (facts and state), or None."""
        return self.core.get_run(run_id)

    def attempts(self, run_id: str, task: int | str) -> list[dict[str, Any]]:
        """Every attempt of one task of a run."""
        return self.core.attempts(run_id, task)

    def result(self, run_id: str, task: int | str) -> Any:
        """The persisted result of one task of a run (by node index or name).

        Raises:
            KeyError: no such run or task, or the task has no persisted result.
        """
        node = task
        if isinstance(task, str):
            detail = self.core.get_run(run_id)
            if detail is None:
                raise KeyError(f"no run {run_id!r} in {self.location}")
            nodes = [t["node"] for t in detail["tasks"] if t["name"] == task]
            if not nodes:
                raise KeyError(f"run {run_id!r} has no task {task!r}")
            node = nodes[0]
        row = self.core.result(run_id, int(node))
        if row is None:
            raise KeyError(f"task {task!r} of run {run_id!r} has no persisted result")
        fmt, data = row
        if fmt != "pickle":
            raise StoreError(f"task {task!r} of run {run_id!r}: unknown result format {fmt!r}")
        return self.signer.loads(data, f"the persisted result of task {task!r} of run {run_id!r}")

    def cache_info(self) -> dict[str, int]:
        """The in-memory result cache: entries, bytes, capacity, hits, misses, evictions."""
        return self.core.cache_info()

    @property
    def cache_index(self) -> CacheIndex:
        """The cached-call index of this database (opened on first use)."""
        cache = self._cache
        if cache is None:
            core = self.core
            with self._lock:
                if self._cache is None:
                    self._cache = CacheIndex(core, self.cache_bytes)
                cache = self._cache
        return cache

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        use_cache: bool = True,
        skip_if_in_progress: bool = False,
        seed: str = "random_seed",
        version: str | None = None,
        ttl: float | timedelta | None = None,
        ignore: Iterable[str] = (),
    ) -> Any:
        """Caches a function's results in this store (seed 000's decorator), bare or with options.

        The first call with given arguments runs the function and stores the result in
        ``result_dir/<module>/<function>/<UTC timestamp>_<seed>_<key>.<ext>``; later identical
        calls load it. Identical calls from several threads or processes run once.

        Args:
            use_cache: False runs every call; each new result supersedes the stored one.
            skip_if_in_progress: raise ``tm.TaskInProgress`` instead of waiting when an identical
                call runs elsewhere (a cached caller whose callee raised it is recorded skipped).
            seed: the name of the argument holding the random seed (recorded and in file names).
            version: the function's version; default a digest of its source and of the helpers
                of the user's own code it references (transitively; not the standard library or
                installed packages), so editing the function or a helper invalidates its results.
            ttl: how long a result counts (seconds or timedelta); default forever.
            ignore: parameters left out of the key (a logger, a connection, ...).

        Returns:
            A :class:`tm.CachedFunction` (call it like the function; ``.refresh(...)`` forces a
            run, ``.why(...)`` explains a miss), or a decorator making one.
        """
        from ._cached import CachedFunction

        def wrap(f: Callable[..., Any]) -> CachedFunction:
            return CachedFunction(
                f,
                self,
                use_cache=use_cache,
                skip_if_in_progress=skip_if_in_progress,
                seed=seed,
                version=version,
                ttl=ttl,
                ignore=ignore,
            )

        return wrap if fn is None else wrap(fn)

    def cache_entries(
        self, func: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Stored results (of one function: ``qualname`` or ``module.qualname``), newest first."""
        return self.cache_index.entries(func=func, limit=limit)

    def clear_cache(
        self, func: str | None = None, older_than: float | timedelta | None = None
    ) -> list[dict[str, Any]]:
        """Deletes stored results and their files (of one function, older than an age in seconds
        or a timedelta); returns the deleted entries. A file the database names outside
        ``result_dir`` is never deleted (its entry is, marked ``"outside": True``)."""
        import time

        if isinstance(older_than, timedelta):
            older_than = older_than.total_seconds()
        before = None if older_than is None else time.time_ns() // 1000 - int(older_than * 1e6)
        gone = self.cache_index.clear(func=func, created_before_us=before)
        for e in gone:
            real = self.inside_result_dir(e["result_path"])
            e["outside"] = real is None
            if real is not None:
                Path(real).unlink(missing_ok=True)
        return gone

    def close(self) -> None:
        """Flushes and closes the database. Idempotent."""
        with self._lock:
            core, self._core = self._core, None
            self._cache = None
        if core is not None:
            core.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"tm.Store({self.url!r}, result_dir={str(self.result_dir)!r})"
