"""
Everything a database holds, as bytes to search for a secret that must not
be there in clear: the SQLite file itself, or every row of every table of a
PostgreSQL database.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData, create_engine, select

__all__ = ["storedText"]


def storedText(databaseURL: str) -> bytes:
    if databaseURL.startswith("sqlite:///"):
        return Path(databaseURL.removeprefix("sqlite:///")).read_bytes()
    engine = create_engine(databaseURL)
    try:
        tables = MetaData()
        tables.reflect(engine)
        with engine.connect() as connection:
            rows = [repr(tuple(row)) for table in tables.sorted_tables for row in connection.execute(select(table))]
    finally:
        engine.dispose()
    return "\n".join(rows).encode()
