"""Session-wide test setup."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import browser
import pg
import pytest

# A test runner started in the background (as CI may be) inherits SIGINT as *ignored*, and ignored
# signals stay ignored across exec, so the child processes that Ctrl-C tests signal would never see
# KeyboardInterrupt. A handled signal is reset to its default on exec: handle it here.
signal.signal(signal.SIGINT, signal.default_int_handler)


# --- PostgreSQL: one real server per test session (see tests/pg.py) ---------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Installing the server package can take minutes on a fresh machine: do it while collecting,
    # outside any test's timeout, and only when a collected test needs the server.
    needs = {"pg_url", "pg_server", "db_url", "kind"}
    if any(
        needs & set(getattr(item, "fixturenames", ())) or "postgresql" in item.name
        for item in items
    ):
        pg.ensure_installed()
    # Likewise Chromium for the dashboard's browser tests.
    if any(item.path.name.startswith("test_ui_browser") for item in items):
        browser.ensure_installed()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg.Server]:
    with pg.server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: pg.Server) -> str:
    """A fresh, empty database on the session's server, as a postgresql:// URL."""
    return pg_server.create_db()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """The URL of a fresh store database: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/tm.db"
    server: pg.Server = request.getfixturevalue("pg_server")
    return server.create_db()


# --- Dask and Ray: one real local cluster of each per test session (tests/test_pools_*.py) -------


@pytest.fixture(scope="session")
def dask_client() -> Iterator[object]:
    """A client of a ``distributed.LocalCluster`` with 2 worker processes that does not re-run a
    task whose worker died (as the cluster tm.DaskPool starts itself), so tm's retries apply."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str]:
    """A local Ray instance with 2 CPUs in this process; yields its address for other drivers."""
    import ray

    # "special": a custom resource that the per-task resource test asks for.
    info = ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, resources={"special": 1}
    )
    yield info.address_info["address"]
    ray.shutdown()
