"""
Running C{smtprelay-admin} in the test process against the test database
(L{tests.storefixtures}), for the admin tests.

Use it by importing the fixtures into the test module::

    from tests.adminfixtures import Result, acme, keyFile, run, snapshot  # noqa: F401
    from tests.storefixtures import databaseURL, postgresqlDatabase  # noqa: F401
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.admin import cli as admin
from relay.core.tenant import Snapshot
from relay.store.database import openEngine
from relay.store.repository import Store
from relay.store.secrets import KeyRing

__all__ = ["Result", "acme", "keyFile", "run", "snapshot"]


@dataclass(frozen=True)
class Result:
    """What a command did: its exit status and output."""

    status: int
    out: str
    err: str

    @property
    def error(self) -> str:
        """The one error line, without the program's prefix."""
        [line] = self.err.splitlines()
        assert line.startswith("smtprelay-admin: error: ")
        return line.removeprefix("smtprelay-admin: error: ")


@pytest.fixture
def keyFile(tmp_path) -> Path:
    """Where the secret key file goes (its directory does not exist yet)."""
    return tmp_path / "keys" / "secret.key"


@pytest.fixture
def run(databaseURL, keyFile, capsys, monkeypatch):
    """Run smtprelay-admin in this process against the test database; C{stdin} feeds standard input."""

    def run(*args: str, stdin: str = "") -> Result:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        status = admin.main(["--database", databaseURL, "--secret-key-file", str(keyFile), *args])
        captured = capsys.readouterr()
        return Result(status, captured.out, captured.err)

    return run


@pytest.fixture
def acme(run):
    """A migrated database with the tenant acme; C{run} for the rest."""
    assert run("db", "upgrade").status == 0
    assert run("tenant", "add", "acme", "--email", "ops@acme.example", "--company", "Acme Ltd").status == 0
    return run


def snapshot(databaseURL: str, keyFile: Path) -> Snapshot:
    """What the relay would load from the test database."""
    engine = openEngine(databaseURL)
    try:
        return Store(engine, KeyRing.fromFile(keyFile, create=False)).loadSnapshot()
    finally:
        engine.dispose()
