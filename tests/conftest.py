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
