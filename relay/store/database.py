"""
Connecting to the store's database and migrating its schema.

Two databases are supported: an SQLite file (the default, for one machine)
and PostgreSQL through psycopg 3 (shared by several relay processes).
Alembic migrates the schema; there is no C{alembic.ini}, the migrations are
found inside this package.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError

from relay.store.errors import Invalid, SchemaNotCurrent

__all__ = ["DEFAULT_DATABASE", "openEngine", "requireCurrentSchema", "snapshotEngine", "upgrade"]

DEFAULT_DATABASE = "sqlite:///var/smtprelay.db"

_MIGRATIONS = Path(__file__).parent / "migrations"
_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


def openEngine(url: str) -> Engine:
    """
    Make an engine for a database URL (nothing is connected yet).

    SQLite: the file and its directory are created, the file with mode
    C{0600}; foreign keys are enforced; the
    journal is in WAL mode, so that the relay reads while the admin writes;
    transactions begin at their first statement, reads included, so that a
    transaction sees one snapshot.  PostgreSQL: C{postgresql://} means
    C{postgresql+psycopg://}.

    @param url: C{sqlite:///relative/path.db}, C{sqlite:////absolute/path.db}
        or C{postgresql+psycopg://user:password@host/database}.
    @raise Invalid: the URL cannot be parsed or names another database.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise Invalid(f"invalid database URL: {e}") from None
    if parsed.drivername not in _DRIVERS:
        raise Invalid(
            f"unsupported database {parsed.drivername!r}: use sqlite:///PATH or postgresql+psycopg://USER@HOST/DATABASE"
        )
    parsed = parsed.set(drivername=_DRIVERS[parsed.drivername])
    if parsed.get_backend_name() == "sqlite":
        return _openSQLite(parsed)
    return create_engine(parsed, pool_pre_ping=True)


def _openSQLite(url: URL) -> Engine:
    if url.database and url.database != ":memory:":
        _createPrivately(Path(url.database))
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def connect(dbapi_connection, record) -> None:
        # Take transaction control from the sqlite3 module, which does not
        # begin a transaction before a SELECT (see SQLAlchemy's SQLite notes).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin(connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def _createPrivately(path: Path) -> None:
    """
    Create an SQLite file (and its directory) readable by its owner only,
    unless it exists: it holds password hashes and encrypted secrets.
    SQLite gives its C{-wal} and C{-shm} files the database file's mode.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def snapshotEngine(engine: Engine) -> Engine:
    """
    The engine to read with when several queries must agree: on PostgreSQL
    its transactions are C{REPEATABLE READ}, seeing the database as of their
    first query.  SQLite transactions already do (see L{openEngine}).
    """
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ")
    return engine


def _alembicConfig() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def upgrade(engine: Engine) -> None:
    """
    Create or migrate the schema to the latest revision, in one transaction.
    Does nothing when it is current.
    """
    config = _alembicConfig()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def requireCurrentSchema(engine: Engine) -> None:
    """
    Check that the schema is at the latest revision this code knows.

    @raise SchemaNotCurrent: it is missing, older, or newer than this code.
    """
    script = ScriptDirectory.from_config(_alembicConfig())
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    if current == set(script.get_heads()):
        return
    unknown = current - {revision.revision for revision in script.walk_revisions()}
    if unknown:
        raise SchemaNotCurrent(
            f"database schema revision {', '.join(sorted(unknown))} is newer than this smtprelay: upgrade smtprelay"
        )
    raise SchemaNotCurrent("database schema is not current: run `smtprelay-admin db upgrade` first")
