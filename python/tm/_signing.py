"""Signing what tm stores and later loads: HMAC-SHA256 with a key that is not in the database.

Anyone who can write the database could otherwise make every process that reads it unpickle
(run) what they wrote: persisted task results, a distributed run's parameters and results, the
cached-call index that says which file to load. So every pickle tm writes to the database is
sealed (a tag over its bytes), every cached result's content hash is a tag, and a value whose
tag does not match is refused with :class:`tm.SignatureError` before anything is unpickled.

The key is ``$TM_SECRET_KEY`` if set, else the file ``secret.key`` that tm creates (random,
mode 0600) beside the store: next to an SQLite database file, else in the parent directory of
the store's ``result_dir`` (``.tm/secret.key`` by default). An in-memory database uses a key
that lives as long as the process. Every process sharing a store (every host on a PostgreSQL
store) needs the same key: copy the file's content into ``TM_SECRET_KEY``. Anyone holding the
key can make tm run code, like anyone who could write the database before.

This module is the one place that signs and verifies; the Rust engine calls :func:`dumps_for`.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import pickle
import secrets
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exceptions import SignatureError, StoreError

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Signer", "dumps_for", "for_store"]

#: The environment variable holding the key (any non-empty text; its UTF-8 bytes are the key).
ENV = "TM_SECRET_KEY"
#: The key file's name.
KEY_FILE = "secret.key"
#: What a sealed blob starts with, then the 32-byte tag, then the pickle.
MAGIC = b"tm-hmac1"
_TAG = 32

_digest = hmac.digest
_compare = hmac.compare_digest


class Signer:
    """Tags, seals and verifies bytes with one key. ``source`` says where the key came from."""

    __slots__ = ("key", "source")

    def __init__(self, key: bytes, source: str) -> None:
        if not key:
            raise StoreError(f"the secret key from {source} is empty")
        self.key = key
        self.source = source

    def tag(self, data: bytes) -> str:
        """The hex HMAC-SHA256 of ``data`` (a cached result's content hash)."""
        return _digest(self.key, data, "sha256").hex()

    def check(self, data: bytes, tag: str, what: str) -> None:
        """Raises :class:`tm.SignatureError` unless ``tag`` is :meth:`tag` of ``data``."""
        if not _compare(_digest(self.key, data, "sha256").hex(), tag):
            raise SignatureError(self._refusal(what))

    def seal(self, data: bytes) -> bytes:
        """``data`` with its tag in front."""
        return MAGIC + _digest(self.key, data, "sha256") + data

    def unseal(self, blob: bytes, what: str) -> bytes:
        """The data of a sealed blob; raises :class:`tm.SignatureError` if its tag does not match
        (or it is not sealed at all)."""
        start = len(MAGIC) + _TAG
        view = memoryview(blob)
        if len(blob) < start or view[: len(MAGIC)] != MAGIC:
            raise SignatureError(self._refusal(what, unsigned=True))
        data = view[start:]
        if not _compare(_digest(self.key, data, "sha256"), view[len(MAGIC) : start]):
            raise SignatureError(self._refusal(what))
        return data.tobytes()

    def dumps(self, value: Any) -> bytes:
        """``value`` pickled and sealed."""
        return self.seal(pickle.dumps(value, protocol=5))

    def loads(self, blob: bytes, what: str) -> Any:
        """The value of a blob :meth:`dumps` made; nothing is unpickled unless its tag matches."""
        return pickle.loads(self.unseal(blob, what))

    def _refusal(self, what: str, unsigned: bool = False) -> str:
        how = "carries no signature" if unsigned else "has a signature that does not match"
        return (
            f"{what} {how} (HMAC-SHA256 with the key from {self.source}), so it is not loaded: "
            f"it was written with another key (every process sharing a store needs the same "
            f"key: set {ENV}), by a tm without signing, or by someone who could write the "
            f"store but does not hold the key"
        )


_lock = threading.Lock()
_by_location: dict[str, Signer] = {}
#: The result directory of each store location opened in this process (see :func:`register`).
_result_dirs: dict[str, Path] = {}
_process_key = secrets.token_bytes(32)


def _read_or_create(path: Path, create: bool) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        if not create:
            raise StoreError(
                f"no secret key: {path} does not exist and the store is read-only; "
                f"set {ENV} to the key of the processes that wrote it"
            ) from None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written whole under a private name, then linked into place: another process creating the
    # key at the same time either wins (and this one reads its key) or loses, never half-writes.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb") as fh:
            fh.write(secrets.token_hex(32).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


def _signer(location: str, result_dir: Path | None, create: bool) -> Signer:
    env = os.environ.get(ENV)
    if env:
        return Signer(env.encode("utf-8", "surrogateescape"), f"${ENV}")
    if location == ":memory:":
        return Signer(_process_key, "this process (an in-memory store)")
    if os.path.isabs(location):
        path = Path(location).parent / KEY_FILE
    else:
        from .store import default_result_dir

        path = Path(result_dir or default_result_dir()).absolute().parent / KEY_FILE
    return Signer(_read_or_create(path, create), str(path))


def register(location: str, result_dir: Path) -> None:
    """Notes which result directory the store at ``location`` uses (the key file of a
    PostgreSQL store sits beside it); called when a store opens its database."""
    _result_dirs[location] = result_dir


def for_store(store: Store) -> Signer:
    """The signer of ``store`` (opens its database to learn where it is)."""
    location = store.core.location
    signer = _signer(location, store.result_dir, create=not store.read_only)
    with _lock:
        _by_location[location] = signer
    return signer


def dumps_for(location: str, value: Any) -> bytes:
    """``value`` pickled and sealed with the key of the store at ``location`` (for the engine,
    which knows the store's location but not the Python object)."""
    signer = _by_location.get(location)
    if signer is None:
        signer = _signer(location, _result_dirs.get(location), create=True)
        with _lock:
            signer = _by_location.setdefault(location, signer)
    return signer.dumps(value)
