"""
The database the store and admin tests run against: each test gets an empty
one, SQLite and then PostgreSQL; and the store on it.

PostgreSQL is reached at C{$SMTPRELAY_TEST_POSTGRESQL} (default
L{POSTGRESQL}); the session creates a database of its own there and drops
it at the end, and each test gets an empty schema in it.  When PostgreSQL is
unreachable its tests are skipped, except under C{CI=true} where they fail:
CI must test what production runs.

Use it by importing both fixtures into the test module, with those of the
store the module uses::

    from tests.storefixtures import databaseURL, postgresqlDatabase  # noqa: F401
    from tests.storefixtures import acme, engine, freshEngine, keyRing, store  # noqa: F401
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import URL, Engine, create_engine, make_url
from sqlalchemy.exc import OperationalError

from relay.core.urls import UpstreamURL
from relay.store.database import openEngine, upgrade
from relay.store.repository import Store
from relay.store.secrets import KeyRing

__all__ = [
    "POSTGRESQL",
    "acceptAll",
    "acme",
    "databaseURL",
    "engine",
    "freshEngine",
    "keyRing",
    "postgresqlDatabase",
    "store",
]

POSTGRESQL = os.environ.get("SMTPRELAY_TEST_POSTGRESQL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _autocommit(url: URL):
    return create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


@pytest.fixture(scope="session")
def postgresqlDatabase() -> Iterator[URL]:
    """A PostgreSQL database for this test session, dropped at its end."""
    server = _autocommit(make_url(POSTGRESQL))
    name = f"smtprelay_test_{secrets.token_hex(6)}"
    try:
        with server.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    except OperationalError as e:
        unreachable = f"PostgreSQL at {server.url.render_as_string()} is unreachable: {' '.join(str(e.orig).split())}"
    else:
        unreachable = None
    if unreachable:
        server.dispose()
        if os.environ.get("CI") == "true":
            pytest.fail(f"{unreachable} (CI=true: the PostgreSQL tests must run)", pytrace=False)
        pytest.skip(unreachable)
    try:
        yield server.url.set(database=name)
    finally:
        with server.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        server.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def databaseURL(request: pytest.FixtureRequest, tmp_path) -> str:
    """The URL of an empty database (no schema): an SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    database: URL = request.getfixturevalue("postgresqlDatabase")
    schema = f"test_{secrets.token_hex(6)}"
    engine = _autocommit(database)
    with engine.connect() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine.dispose()
    return database.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


@pytest.fixture
def freshEngine(databaseURL) -> Iterator[Engine]:
    """An engine on the empty test database."""
    engine = openEngine(databaseURL)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(freshEngine) -> Engine:
    """An engine on the test database, schema migrated."""
    upgrade(freshEngine)
    return freshEngine


@pytest.fixture
def keyRing(tmp_path) -> KeyRing:
    """A key ring with one fresh key, from the file C{secret.key}."""
    return KeyRing.fromFile(tmp_path / "secret.key")


@pytest.fixture
def store(engine, keyRing) -> Store:
    """An empty store."""
    return Store(engine, keyRing)


@pytest.fixture
def acme(store) -> Store:
    """The store with the tenant acme."""
    store.addTenant("acme", "ops@acme.example", "Acme Ltd")
    return store


def acceptAll(url: UpstreamURL) -> None:
    """An upstream validator that accepts every URL."""
