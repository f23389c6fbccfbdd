"""Pickles tm stores are signed with a key that is not in the database (HMAC-SHA256).

Someone who can write the database but does not hold the key cannot make tm unpickle what they
wrote: a cached result whose row names a file of theirs, a persisted task result, a distributed
run's parameters. The key is ``$TM_SECRET_KEY`` or a ``secret.key`` tm creates with mode 0600
beside the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tm
import tm._signing


class Touch:
    """Unpickling it creates ``marker``: proof that tm ran what someone else wrote."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def tamper(db: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Rewrites rows as another process with write access to the database could."""
    script = (
        "import json, sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1])\n"
        "with con:\n"
        "    for sql, params in json.loads(sys.argv[2]):\n"
        "        con.execute(sql, [bytes.fromhex(p[4:]) if isinstance(p, str) and "
        "p.startswith('hex:') else p for p in params])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(db), json.dumps(statements)], check=True)


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TM_SECRET_KEY", raising=False)


def test_key_file_is_created_private_beside_the_store(tmp_path: Path) -> None:
    with tm.Store(f"sqlite:///{tmp_path / 'db' / 'tm.db'}", result_dir=tmp_path / "r") as store:
        signer = store.signer
        key = tmp_path / "db" / "secret.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert signer.key == key.read_bytes().strip() and len(signer.key) == 64
        assert signer.source == str(key)
        assert not [p for p in key.parent.iterdir() if p.name.startswith(".secret")]
    with tm.Store(f"sqlite:///{tmp_path / 'db' / 'tm.db'}") as again:
        assert again.signer.key == signer.key  # the same file, read back


def test_env_key_wins_and_creates_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_SECRET_KEY", "correct horse")
    with tm.Store(f"sqlite:///{tmp_path / 'tm.db'}", result_dir=tmp_path / "r") as store:
        assert store.signer.key == b"correct horse"
        assert store.signer.source == "$TM_SECRET_KEY"
    assert not (tmp_path / "secret.key").exists()


def test_a_cached_result_row_naming_a_file_of_anothers_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "tm.db"
    store = tm.Store(f"sqlite:///{db}", result_dir=tmp_path / "results")

    @store.task
    def make(x: int) -> complex:
        return complex(x, 1)  # stored as a pickle

    assert make(1) == complex(1, 1)
    store.close()
    # Inside result_dir, with the plain SHA-256 the row used to be checked against.
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Touch(marker))
    planted = tmp_path / "results" / "planted.pkl"
    planted.write_bytes(evil)
    sql = "UPDATE cache_entries SET result_path = ?, content_hash = ?, size = ?"
    tamper(db, (sql, (str(planted), hashlib.sha256(evil).hexdigest(), len(evil))))
    other = tm.Store(f"sqlite:///{db}", result_dir=tmp_path / "results")
    with pytest.raises(tm.SignatureError, match="does not match") as info:
        other.task(make.__wrapped__)(1)
    assert isinstance(info.value, tm.StoreError)
    assert "make" in str(info.value) and "TM_SECRET_KEY" in str(info.value)
    other.close()
    assert not marker.exists()


def test_a_cached_result_written_with_another_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'tm.db'}"

    def inc(x: int) -> int:
        return x + 1

    monkeypatch.setenv("TM_SECRET_KEY", "one")
    with tm.Store(url, result_dir=tmp_path / "r") as a:
        assert a.task(inc)(1) == 2
    monkeypatch.setenv("TM_SECRET_KEY", "two")
    with (
        tm.Store(url, result_dir=tmp_path / "r") as b,
        pytest.raises(tm.SignatureError, match=r"\$TM_SECRET_KEY"),
    ):
        b.task(inc)(1)
    monkeypatch.setenv("TM_SECRET_KEY", "one")
    with tm.Store(url, result_dir=tmp_path / "r") as c:
        assert c.task(inc)(1) == 2


@tm.task(persist=True)
def produce() -> dict[str, int]:
    return {"n": 1}


@tm.task
def consume(produce: dict[str, int]) -> int:
    return produce["n"] + 1


def test_a_persisted_task_result_is_signed_and_a_forged_one_refused(tmp_path: Path) -> None:
    db = tmp_path / "tm.db"
    g = tm.Graph("signed")
    g.add_edges(produce, consume)
    store = tm.Store(f"sqlite:///{db}", result_dir=tmp_path / "results")
    with tm.Executor(store=store) as ex:
        run = ex.run(g)
        assert run.result() == 2
    store.flush()
    run_id = run.run_id
    assert run_id is not None
    assert store.result(run_id, "produce") == {"n": 1}
    store.close()
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Touch(marker))
    tamper(db, ("UPDATE task_results SET data = ?", ("hex:" + evil.hex(),)))
    with (
        tm.Store(f"sqlite:///{db}", result_dir=tmp_path / "results") as other,
        pytest.raises(tm.SignatureError, match="carries no signature"),
    ):
        other.result(run_id, "produce")
    forged = tm._signing.MAGIC + b"\0" * 32 + evil
    tamper(db, ("UPDATE task_results SET data = ?", ("hex:" + forged.hex(),)))
    with tm.Store(f"sqlite:///{db}", result_dir=tmp_path / "results") as other:
        with pytest.raises(tm.SignatureError, match="does not match"):
            other.result(run_id, "produce")
        g2 = tm.Graph("signed")
        g2.add_edges(produce, consume)
        with tm.Executor(store=other) as ex, pytest.raises(tm.SignatureError):
            ex.resume(run_id, g2)
    assert not marker.exists()


def test_signer_seals_and_refuses_a_changed_byte() -> None:
    s = tm._signing.Signer(b"k", "test")
    blob = s.dumps({"a": [1, 2]})
    assert s.loads(blob, "x") == {"a": [1, 2]}
    changed = bytearray(blob)
    changed[-2] ^= 1
    with pytest.raises(tm.SignatureError, match="x has a signature that does not match"):
        s.loads(bytes(changed), "x")
    with pytest.raises(tm.SignatureError):
        tm._signing.Signer(b"other", "test").loads(blob, "x")
    assert s.tag(b"data") != tm._signing.Signer(b"other", "t").tag(b"data")
    with pytest.raises(tm.StoreError, match="empty"):
        tm._signing.Signer(b"", "test")


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    code = (
        "import sys, tm\n"
        "s = tm.Store(sys.argv[1], result_dir=sys.argv[2])\n"
        "print(s.signer.key.decode())\n"
    )
    url = f"sqlite:///{tmp_path / 'tm.db'}"
    env = {k: v for k, v in os.environ.items() if k != "TM_SECRET_KEY"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, str(tmp_path / "r")],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(6)
    ]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert keys == {(tmp_path / "secret.key").read_text().strip()}
