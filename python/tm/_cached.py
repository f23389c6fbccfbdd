"""Cached, reproducible function calls (seed 000): ``@store.task`` and ``@tm.cached``.

The first call with given arguments runs the function and stores its result in a file under the
store's result directory; the database records the call (immutable facts) and its state. Later
identical calls load the file instead. Which process runs a call is decided by the database
(``CacheIndex.claim``), so identical calls from several processes compute once.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _keys
from .exceptions import CacheError, TaskInProgress, TmError

if TYPE_CHECKING:
    from ._tm import CacheIndex
    from .store import Store

__all__ = ["CachedFunction", "cached"]

#: How long a running call's claim holds without a heartbeat (another host takes it over after).
LEASE_SECONDS = 60.0
#: Longest pause between two looks at a call that another process is running.
MAX_POLL_SECONDS = 0.25

_HOST = socket.gethostname()
_local = threading.local()


def _now_us() -> int:
    return time.time_ns() // 1000


#: How a result file is created: never over an existing file, never through a symlink.
_CREATE = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)
)

#: Longest path component made from a name (bytes): file systems take 255, and a file's name holds
#: a seed besides a timestamp, the key and a temporary suffix.
_PART_BYTES = 80


def _safe(part: str) -> str:
    """A path component: the name's characters that every file system accepts, shortened (with a
    digest of the whole name, so distinct names stay distinct) when too long."""
    out = "".join(c if c.isalnum() or c in "._-" else "_" for c in part) or "_"
    if not out.strip("."):  # "." or "..": a folder that is not a new one inside result_dir
        out = out.replace(".", "_")
    raw = out.encode()
    if len(raw) > _PART_BYTES:
        digest = hashlib.blake2b(part.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
        out = raw[: _PART_BYTES - 13].decode(errors="ignore") + "-" + digest
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Heartbeats:
    """One daemon thread per process renews the leases of the calls this process runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owned: dict[tuple[int, str, int], CacheIndex] = {}
        self.wake = threading.Event()
        self.pid = 0

    def add(self, index: CacheIndex, key: str, token: int) -> None:
        with self.lock:
            self.owned[(id(index), key, token)] = index
            if self.pid != os.getpid():  # first use, or a forked child without the thread
                self.pid = os.getpid()
                threading.Thread(target=self._run, name="tm-cache-heartbeat", daemon=True).start()

    def remove(self, index: CacheIndex, key: str, token: int) -> None:
        with self.lock:
            self.owned.pop((id(index), key, token), None)

    def forked(self) -> None:
        """In a forked child, before anything else runs: the parent's calls are not the child's
        to renew, and the lock may have been held by a thread the child does not have."""
        self.lock = threading.Lock()
        self.owned = {}
        self.wake = threading.Event()
        self.pid = 0

    def beat_now(self) -> None:
        """Renews every lease now rather than at the next interval."""
        self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait(LEASE_SECONDS / 3)
            self.wake.clear()
            with self.lock:
                items = list(self.owned.items())
            until = _now_us() + int(LEASE_SECONDS * 1e6)
            for (_, key, token), index in items:
                # A closed store: the call's own completion reports the error.
                with contextlib.suppress(TmError):
                    index.heartbeat(key, token, until)


_heartbeats = _Heartbeats()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_heartbeats.forked)


def _makedirs(path: str, mode: int) -> None:
    """``os.makedirs`` giving every directory it creates ``mode`` (not only the last one)."""
    parent = os.path.dirname(path)
    if parent and parent != path and not os.path.isdir(parent):
        _makedirs(parent, mode)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)


class CachedFunction:
    """A function whose results are cached by call key. Call it like the function.

    Attributes:
        use_cache: whether stored results count (False runs every call and stores the new result).
        skip_if_in_progress: raise :class:`tm.TaskInProgress` instead of waiting for an identical
            call running elsewhere.
        seed: the name of the argument holding the random seed.
        version: the function's version (default: a digest of its source).
        ttl: how long a stored result counts, in seconds (None: forever).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        store: Store | None = None,
        *,
        use_cache: bool = True,
        skip_if_in_progress: bool = False,
        seed: str = "random_seed",
        version: str | None = None,
        ttl: float | timedelta | None = None,
        ignore: Iterable[str] = (),
        call: Callable[..., Any] | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"a cached function must be callable, got {fn!r}")
        if call is None and inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"{fn!r} is a coroutine function: cache it as a graph task (@tm.task(cache=True)), "
                "or cache a synchronous function that it awaits"
            )
        if isinstance(ttl, timedelta):
            ttl = ttl.total_seconds()
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl!r}")
        self.__wrapped__ = fn
        self._call = call or fn
        self._store = store
        self.use_cache = bool(use_cache)
        self.skip_if_in_progress = bool(skip_if_in_progress)
        self.seed = seed
        self._version = version
        self.ttl = ttl
        self.module = getattr(fn, "__module__", None) or "__main__"
        self.qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        self.ident = f"{self.module}.{self.qualname}"
        self._binder = _keys.Binder(fn, ignore)
        self._made: tuple[Path, str] | None = None
        functools.update_wrapper(self, fn, updated=())

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = _keys.source_version(self.__wrapped__)
        return self._version

    @property
    def store(self) -> Store:
        if self._store is None:
            from .store import default_store

            return default_store()
        return self._store

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else functools.partial(self, obj)

    def __repr__(self) -> str:
        return f"<tm cached function {self.ident}>"

    # The call -------------------------------------------------------------------------------

    def facts(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The key and the facts it is computed from, for a call with these arguments."""
        bound = self._binder.bind(args, kwargs)
        inputs_json = _keys.canonical_inputs(bound)
        seed_value = bound.get(self.seed)
        seed = None if seed_value is None else str(seed_value)
        version = self.version
        return {
            "key": _keys.key_of(self.ident, inputs_json, seed, version),
            "module": self.module,
            "func": self.qualname,
            "seed": seed,
            "inputs_json": inputs_json,
            "version": version,
        }

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The hit path, inlined: the key, one query, and a copy from memory (or the file).
        bound = self._binder.bind(args, kwargs)
        inputs_json = _keys.canonical_inputs(bound)
        seed_value = bound.get(self.seed)
        seed = None if seed_value is None else str(seed_value)
        version = self._version or self.version
        key = _keys.key_of(self.ident, inputs_json, seed, version)
        store = self._store or self.store
        index = store.cache_index
        if self.use_cache:
            hit = index.lookup(key, _now_us())
            if hit is not None:
                if hit[3] is not None:
                    return _keys.kept_value(hit[0], hit[3])
                found, value = self._load(store, index, key, *hit)
                if found:
                    return value
        f = {
            "key": key,
            "module": self.module,
            "func": self.qualname,
            "seed": seed,
            "inputs_json": inputs_json,
            "version": version,
        }
        return self._claim_and_run(store, index, f, args, kwargs)

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        """Runs the call even if a result is stored; the new result supersedes the old one."""
        f = self.facts(*args, **kwargs)
        store = self.store
        return self._claim_and_run(store, store.cache_index, f, args, kwargs, use_cache=False)

    def _claim_and_run(
        self,
        store: Store,
        index: CacheIndex,
        f: dict[str, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        use_cache: bool | None = None,
    ) -> Any:
        use = self.use_cache if use_cache is None else use_cache
        key = f["key"]
        active: set[str] = getattr(_local, "active", None) or set()
        _local.active = active
        if key in active:
            raise TmError(f"{self.ident} calls itself with the same arguments (key {key})")
        pause = 0.001
        takeover: tuple[int, str] | None = None
        while True:
            outcome, detail = index.claim(
                key,
                f["module"],
                f["func"],
                f["seed"],
                f["inputs_json"],
                f["version"],
                use_cache=use,
                pid=os.getpid(),
                host=_HOST,
                now_us=_now_us(),
                lease_us=int(LEASE_SECONDS * 1e6),
                takeover=takeover,
            )
            if outcome == "hit":
                found, value = self._load(store, index, key, *detail)
                if found:
                    return value
                use = False  # the file is gone: run again
                continue
            if outcome == "run":
                # Older entries of the key can exist only after a forced run, a lost file or
                # an expired ttl: then the new result supersedes them (and their files go).
                supersede = not use or self.ttl is not None
                return self._run(store, index, f, int(detail), args, kwargs, active, supersede)
            state: dict[str, Any] = detail
            owner = f"{state['owner_pid']}@{state['owner_host']}"
            if (
                state["owner_host"] == _HOST
                and state["owner_pid"] != os.getpid()
                and not _pid_alive(state["owner_pid"])
            ):
                takeover = (state["owner_pid"], _HOST)  # a crashed runner: take its call over
                continue
            if self.skip_if_in_progress:
                raise TaskInProgress(
                    f"{self.ident} is already running with these arguments in {owner} (key {key})",
                    key=key,
                    owner=owner,
                )
            # Wait for the other caller: woken when a call ends (PostgreSQL notifies), else after
            # an exponential backoff with jitter; never a busy spin.
            delay = pause * (0.5 + random.random())
            if index.wait_for_end(delay) is None:
                time.sleep(delay)
            pause = min(pause * 2, MAX_POLL_SECONDS)
            takeover = None
            use = use or self.use_cache

    def _run(
        self,
        store: Store,
        index: CacheIndex,
        f: dict[str, Any],
        token: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        active: set[str],
        supersede: bool = False,
    ) -> Any:
        key = f["key"]
        _heartbeats.add(index, key, token)
        active.add(key)
        started = _now_us()
        try:
            try:
                value = self._call(*args, **kwargs)
            except TaskInProgress as exc:
                # A cached callee is running elsewhere: this call is skipped, not failed.
                index.release(key, token, "SKIPPED", _now_us(), type(exc).__name__, str(exc))
                raise
            except BaseException as exc:
                index.release(key, token, "FAILED", _now_us(), type(exc).__name__, str(exc))
                raise
            # The function returned: from here on, anything that fails (a result that does not
            # pickle, a full disk, the database) must still give the key up, or identical calls
            # would wait for this one until its lease ran out.
            what = "it cannot be serialised"
            path: str | None = None
            try:
                fmt, data = _keys.encode(value)
                what = "its result file could not be written"
                path = self._write(store, f, fmt, data)
                what = "its entry could not be recorded in the database"
                if fmt in _keys.KEEP_DECODED or fmt == "pickle":
                    value = _keys.decode(fmt, data)  # hand back what a hit would
                kept = _keys.to_keep(fmt, data, value)
                now = _now_us()
                entry = index.complete(
                    key,
                    f["module"],
                    f["func"],
                    f["seed"],
                    f["inputs_json"],
                    f["version"],
                    token=token,
                    result_path=path,
                    format=fmt,
                    content_hash=store.signer.tag(data),
                    size=len(data),
                    now_us=now,
                    expires_us=None if self.ttl is None else now + int(self.ttl * 1e6),
                    duration_us=now - started,
                    keep=kept,
                )
            except BaseException as exc:
                self._not_stored(index, key, token, value, what, path, exc)
                raise  # unreachable for an Exception: _not_stored raises CacheError
            if supersede:
                self._drop_superseded(store, index, key, entry)
            # Never hand out an object that is also kept in memory.
            return value.copy() if fmt in _keys.KEEP_DECODED else value
        finally:
            active.discard(key)
            _heartbeats.remove(index, key, token)

    def _not_stored(
        self,
        index: CacheIndex,
        key: str,
        token: int,
        value: Any,
        what: str,
        path: str | None,
        exc: BaseException,
    ) -> None:
        """Gives up the key of a call whose result could not be stored, removes a result file no
        entry points at, and raises a :class:`CacheError` saying what failed (an interrupt such
        as ``KeyboardInterrupt`` is left to propagate as it is)."""
        kind = type(value)
        where = f" ({path})" if path is not None else ""
        message = (
            f"cached function {self.ident} (key {key}) returned, but its result "
            f"(a {kind.__module__}.{kind.__qualname__}) could not be stored{where}: "
            f"{what}: {type(exc).__name__}: {exc}"
        )
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        # The database may be what failed: the error about the result matters more.
        with contextlib.suppress(Exception):
            index.release(key, token, "FAILED", _now_us(), type(exc).__name__, message)
        if isinstance(exc, Exception):
            raise CacheError(message) from exc

    def _drop_superseded(
        self, store: Store, index: CacheIndex, key: str, entry: dict[str, Any]
    ) -> None:
        """Deletes the entries and files of ``key`` that ``entry`` supersedes. The new result is
        stored already: a failure here leaves an old file behind, it does not fail the call."""
        with contextlib.suppress(TmError, OSError):
            for old in index.supersede(key, entry["id"]):
                if old["content_hash"] != entry["content_hash"]:
                    index.forget(old["content_hash"])
                real = store.inside_result_dir(old["result_path"])
                if real is not None and old["result_path"] != entry["result_path"]:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(real)

    def _folder(self, store: Store) -> str:
        """The function's folder under the store's result directory (made on first use)."""
        made = self._made
        if made is None or made[0] is not store.result_dir:
            folder = os.path.join(store.result_dir, _safe(self.module), _safe(self.qualname))
            _makedirs(folder, store.modes[1])
            made = self._made = (store.result_dir, folder)
        return made[1]

    def _write(self, store: Store, f: dict[str, Any], fmt: str, data: bytes) -> str:
        """Writes a result file; returns its path. The file is created under its final name
        (no temporary file and rename, which cost a second directory update per miss): only an
        entry committed after it is closed makes anyone read it, and a partial file is removed."""
        folder = self._folder(store)
        seed = _safe(f["seed"]) if f["seed"] is not None else "noseed"
        ext = _keys.EXTENSIONS[fmt]
        while True:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            path = f"{folder}{os.sep}{stamp}_{seed}_{f['key']}.{ext}"
            try:
                fd = os.open(path, _CREATE, store.modes[0])
            except FileNotFoundError:  # the folder was deleted since (tm cache clear, rm -r)
                _makedirs(folder, store.modes[1])
                continue
            except FileExistsError:  # the same call stored in the same microsecond: next one
                continue
            break
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(fd)
        return path

    def _load(
        self,
        store: Store,
        index: CacheIndex,
        key: str,
        fmt: str,
        digest: str,
        path: str,
        kept: Any,
    ) -> tuple[bool, Any]:
        """``(True, value)`` for a usable stored result, ``(False, None)`` if its file is gone.
        ``kept`` is what memory holds for the result's content hash (None: read the file)."""
        if kept is not None:
            return True, _keys.kept_value(fmt, kept)
        real = store.inside_result_dir(path)
        if real is None:
            raise CacheError(
                f"cached result {path} of {self.ident} (key {key}) is outside the result "
                f"directory {store.result_dir}: the database names it, but tm only reads its "
                f"own result files, so it is not loaded; delete the entry with "
                f"`tm cache clear {self.qualname}`"
            )
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return False, None
        with open(fd, "rb") as fh:
            data = fh.read()
        # The content hash is an HMAC under the store's key: a row someone wrote into the
        # database cannot make tm unpickle a file of their choosing.
        store.signer.check(
            data,
            digest,
            f"cached result {path} of {self.ident} (key {key}; delete it with "
            f"`tm cache clear {self.qualname}` or call with use_cache=False)",
        )
        value = _keys.decode(fmt, data)
        index.remember(digest, _keys.to_keep(fmt, data, value), len(data))
        return True, value.copy() if fmt in _keys.KEEP_DECODED else value

    # Explaining misses ------------------------------------------------------------------------

    def why(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Explains whether this call hits, and if not, how it differs from the nearest entry."""
        return explain(self.store, self.facts(*args, **kwargs))


def explain(store: Store, f: dict[str, Any]) -> dict[str, Any]:
    """Compares call facts ``f`` with the stored entries of the same function.

    Returns:
        ``{"key", "hit", "nearest", "differences"}``: ``differences`` lists the key components
        (``version``, ``seed``, ``arg NAME``) that differ from the nearest entry.
    """
    entries = store.cache_index.entries(func=f"{f['module']}.{f['func']}")
    inputs = json.loads(f["inputs_json"])
    best: tuple[int, dict[str, Any] | None, list[str]] = (1 << 30, None, ["no entry stored"])
    for e in entries:
        diffs = _differences(f, inputs, e)
        if len(diffs) < best[0]:
            best = (len(diffs), e, diffs)
    _, nearest, diffs = best
    now = _now_us()
    hit = nearest is not None and not diffs
    expires = None if nearest is None else nearest["expires_us"]
    if hit and expires is not None and expires <= now:
        hit, diffs = False, ["the entry expired (ttl)"]
    return {
        "key": f["key"],
        "hit": hit,
        "nearest": None if nearest is None else nearest["key"],
        "differences": diffs,
    }


def _differences(f: dict[str, Any], inputs: dict[str, Any], e: dict[str, Any]) -> list[str]:
    diffs = []
    if e["version"] != f["version"]:
        diffs.extend(_version_differences(f["version"], e["version"]))
    if e["seed"] != f["seed"]:
        diffs.append(f"seed: {f['seed']} (stored {e['seed']})")
    return diffs + _arg_differences(inputs, json.loads(e["inputs_json"]), partial=False)


def _version_differences(current: str, stored: str) -> list[str]:
    """What differs between two versions: the function's own source, and each helper of the
    user's code that changed, is new, or is no longer used (see ``_keys.source_version``)."""
    own, deps = _keys.split_version(current)
    stored_own, stored_deps = _keys.split_version(stored)
    if not deps and not stored_deps:
        return [f"version: {current} (stored {stored})"]
    out = []
    if own != stored_own:
        out.append(f"version: the function's own source changed ({own}, stored {stored_own})")
    for name in sorted(set(deps) | set(stored_deps)):
        if name not in stored_deps:
            out.append(f"helper {name} is new (the stored call did not use it)")
        elif name not in deps:
            out.append(f"helper {name} is no longer used")
        elif deps[name] != stored_deps[name]:
            out.append(f"helper {name} changed")
    return out


def _arg_differences(inputs: dict[str, Any], stored: dict[str, Any], partial: bool) -> list[str]:
    diffs = []
    for name in sorted(set(inputs) | set(stored), key=lambda n: (n not in inputs, n)):
        if name not in stored:
            diffs.append(f"arg {name}: {_show(inputs[name])} (not in the stored call)")
        elif name not in inputs:
            if not partial:
                diffs.append(f"arg {name}: missing (stored {_show(stored[name])})")
        elif _keys._dumps(inputs[name]) != _keys._dumps(stored[name]):
            diffs.append(f"arg {name}: {_show(inputs[name])} (stored {_show(stored[name])})")
    return diffs


def explain_args(store: Store, func: str, call_args: dict[str, Any]) -> dict[str, Any]:
    """Like :func:`explain` without the function at hand: compares only the arguments given
    (JSON values; defaults, seed and version unknown) with the stored calls of ``func``."""
    inputs = {name: _keys.canonical(value, name) for name, value in call_args.items()}
    best: tuple[int, dict[str, Any] | None, list[str]] = (1 << 30, None, ["no entry stored"])
    for e in store.cache_index.entries(func=func):
        diffs = _arg_differences(inputs, json.loads(e["inputs_json"]), partial=True)
        if len(diffs) < best[0]:
            best = (len(diffs), e, diffs)
    _, nearest, diffs = best
    return {
        "key": None,
        "hit": nearest is not None and not diffs,
        "nearest": None if nearest is None else nearest["key"],
        "differences": diffs,
    }


def _show(value: Any) -> str:
    text = _keys._dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


_OPTIONS = frozenset({"use_cache", "skip_if_in_progress", "seed", "version", "ttl", "ignore"})
_shared: dict[tuple[str, str | None], Store] = {}
_shared_lock = threading.Lock()


def _store_for(db_url: str | None, result_dir: str | os.PathLike[str] | None) -> Store | None:
    """One store per database URL and result directory named to :func:`cached` (None: the
    default store). Making a store opens nothing: the database opens at the first call."""
    if db_url is None and result_dir is None:
        return None
    from .store import Store, default_url

    url = db_url or default_url()
    where = None if result_dir is None else os.fspath(Path(result_dir).absolute())
    with _shared_lock:
        store = _shared.get((url, where))
        if store is None:
            store = _shared[(url, where)] = Store(url, result_dir=where)
        return store


def cached(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    db_url: str | None = None,
    result_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Any:
    """Caches a function's results, bare or with the options of :meth:`tm.Store.task`.

    The store is the default one (``tm.Store()`` as configured by ``tm.config``, ``$TM_DB_URL``
    and ``$TM_RESULT_DIR``) unless ``db_url`` or ``result_dir`` name another (seed 000 passes the
    database URL to the decorator); functions naming the same pair share one store. Nothing is
    opened at decoration, only at the first call.
    """
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise TypeError(f"tm.cached() got an unexpected keyword argument {unknown[0]!r}")
    store = _store_for(db_url, result_dir)
    if fn is None:
        return lambda f: CachedFunction(f, store, **options)
    return CachedFunction(fn, store, **options)


def for_graph_task(
    fn: Callable[..., Any], call: Callable[..., Any], store: Store | None
) -> CachedFunction:
    """``@tm.task(cache=True)``: ``call`` (``fn`` itself, or its pool or async wrapper) cached by
    ``fn``'s identity, source and arguments; the run ``context`` is not part of the key."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    ignore = [name for name in ("context",) if name in params]
    return CachedFunction(fn, store, ignore=ignore, call=call)
