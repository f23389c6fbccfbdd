"""TLS to PostgreSQL (issue 24, item 4): libpq's sslmode, sslrootcert, sslcert and sslkey in the
URL, for the store and the agent queue, against a real server with ``ssl=on``.

The fixture makes a throwaway CA with the ``openssl`` command, a server certificate issued for
``localhost`` only (so connecting to 127.0.0.1 tells verify-ca from verify-full), a client
certificate for the role ``tmcert`` (which the server lets in only by certificate), and a second,
unrelated CA.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pg
import pytest

import tm
from tm.exceptions import StoreError
from tm.queue import TaskManager

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key_and_request(cwd: Path, name: str, subject: str) -> None:
    _openssl(
        cwd,
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        subject,
    )


def _ca(cwd: Path, name: str) -> None:
    _openssl(
        cwd,
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )


def _issue(cwd: Path, name: str, subject: str, ext: str) -> None:
    _key_and_request(cwd, name, subject)
    (cwd / f"{name}.ext").write_text(ext)
    _openssl(
        cwd,
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
    )


@dataclass
class TlsServer:
    server: pg.Server
    pki: Path

    def url(self, db: str, host: str = "localhost", user: str = "postgres", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user}@{host}:{self.server.port}/{db}" + (
            f"?{query}" if query else ""
        )

    def sessions(self, app: str) -> list[bool]:
        """Whether each open session named ``app`` uses TLS, as the server sees it."""
        out = subprocess.run(
            [
                "psql",
                self.server.url("postgres") + "?sslmode=disable",
                "-Atc",
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                f"WHERE a.application_name = '{app}'",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return [line == "t" for line in out.stdout.split()]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    pki = tmp_path_factory.mktemp("pki")
    _ca(pki, "ca")
    _ca(pki, "other")
    _issue(
        pki,
        "server",
        "/CN=localhost",
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    _issue(
        pki,
        "client",
        "/CN=tmcert",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )

    def prepare(data: Path) -> None:
        for name in ("server.crt", "server.key", "ca.crt"):
            shutil.copyfile(pki / name, data / name)
            if os.geteuid() == 0:
                shutil.chown(data / name, "postgres", "postgres")
        os.chmod(data / "server.key", 0o600)
        hba = data / "pg_hba.conf"
        # First match wins: tmcert gets in over TLS with a certificate, and in no other way.
        hba.write_text(
            "hostssl all tmcert 127.0.0.1/32 cert\n"
            "host all tmcert 127.0.0.1/32 reject\n" + hba.read_text()
        )

    with pg.server(
        "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_ca_file=ca.crt",
        prepare,
    ) as server:
        server._client("createuser", "-s", "tmcert")
        yield TlsServer(server, pki)


def _db(tls: TlsServer) -> str:
    return tls.server.create_db().rsplit("/", 1)[1]


def _use_store(url: str) -> tm.Store:
    store = tm.Store(url)

    @tm.task()
    def a() -> int:
        return 1

    graph = tm.Graph(name="tls")
    graph.add_edges([a], [])
    with tm.Executor(workers=1, store=store) as ex:
        run = ex.run(graph)
    store.flush()
    assert store.run(run.run_id) is not None
    return store


def test_require_encrypts_the_store_s_connections(tls: TlsServer) -> None:
    url = tls.url(_db(tls), host="127.0.0.1", sslmode="require", application_name="tm-require")
    store = _use_store(url)
    try:
        seen = tls.sessions("tm-require")
        assert seen and all(seen), seen
    finally:
        store.close()


def test_disable_stays_plain(tls: TlsServer) -> None:
    url = tls.url(_db(tls), host="127.0.0.1", sslmode="disable", application_name="tm-plain")
    store = _use_store(url)
    try:
        seen = tls.sessions("tm-plain")
        assert seen and not any(seen), seen
    finally:
        store.close()


def test_verify_full_checks_the_ca_and_the_host_name(tls: TlsServer) -> None:
    db = _db(tls)
    ca = tls.pki / "ca.crt"
    store = _use_store(tls.url(db, sslmode="verify-full", sslrootcert=str(ca)))
    store.close()
    # The certificate names localhost, not 127.0.0.1: verify-ca accepts it, verify-full does not.
    store = _use_store(tls.url(db, host="127.0.0.1", sslmode="verify-ca", sslrootcert=str(ca)))
    store.close()
    with pytest.raises(StoreError, match="certificate") as info:
        _ = tm.Store(tls.url(db, host="127.0.0.1", sslmode="verify-full", sslrootcert=str(ca))).core
    assert "NotValidForName" in str(info.value) or "name" in str(info.value), info.value


def test_a_certificate_from_another_ca_is_refused(tls: TlsServer) -> None:
    other = tls.pki / "other.crt"
    for mode in ("verify-ca", "verify-full", "require"):
        with pytest.raises(StoreError, match="certificate") as info:
            _ = tm.Store(tls.url(_db(tls), sslmode=mode, sslrootcert=str(other))).core
        assert "UnknownIssuer" in str(info.value) or "issuer" in str(info.value), info.value


def test_a_client_certificate_logs_in(tls: TlsServer) -> None:
    db = _db(tls)
    cert = dict(
        sslmode="verify-full",
        sslrootcert=str(tls.pki / "ca.crt"),
        sslcert=str(tls.pki / "client.crt"),
        sslkey=str(tls.pki / "client.key"),
    )
    store = _use_store(tls.url(db, user="tmcert", **cert))
    store.close()
    # Without it the server lets tmcert in no other way.
    with pytest.raises(StoreError, match="tmcert"):
        _ = tm.Store(
            tls.url(db, user="tmcert", sslmode="verify-full", sslrootcert=cert["sslrootcert"])
        ).core


def test_the_queue_connects_over_tls_too(tls: TlsServer) -> None:
    url = tls.url(
        _db(tls),
        sslmode="verify-full",
        sslrootcert=str(tls.pki / "ca.crt"),
        application_name="tm-queue-tls",
    )
    tasks = TaskManager(url)
    tid = tasks.create_task("work", {"n": 1})
    claimed = tasks.get_next_task("worker-1")
    assert claimed is not None and claimed["id"] == tid
    seen = tls.sessions("tm-queue-tls")
    assert seen and all(seen), seen
    other = tls.url(_db(tls), sslmode="verify-full", sslrootcert=str(tls.pki / "other.crt"))
    with pytest.raises(StoreError, match="certificate"):
        TaskManager(other)
