"""
Tests for the privacy promises of the store (docs/design.md §1): rotating the key
that encrypts upstream passwords, upgrading password hashes, exporting a
tenant without its secrets, and deleting everything about a tenant.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select, text

from relay.auth.passwords import hashPassword
from relay.store.accounts import Accounts
from relay.store.activity import ActivityLog, ActivityRow
from relay.store.database import openEngine
from relay.store.errors import Invalid
from relay.store.models import Base
from relay.store.repository import Store
from relay.store.secrets import KeyRing, rotate
from relay.store.values import SecretRotation, UsageDelta
from tests.adminfixtures import acme as admin  # noqa: F401
from tests.adminfixtures import keyFile, run, snapshot  # noqa: F401
from tests.storefixtures import acceptAll, acme, databaseURL, engine, freshEngine, keyRing, postgresqlDatabase, store  # noqa: F401  # noqa: F401

SECRET = "s3cret-upstream-pw"
UPSTREAM = f"smtp+starttls://relay:{SECRET}@mail.acme.example:587"
PASSWORD = "tenant-login-pw"


def storedSecrets(engine) -> list[str]:
    """The encrypted upstream passwords, as stored."""
    with engine.connect() as connection:
        return list(connection.scalars(text("SELECT secret FROM upstreams WHERE secret IS NOT NULL ORDER BY id")))


def keys(path) -> list[str]:
    """The keys of a key file, primary first."""
    return path.read_text().split()


# secrets rotate


def test_reencryptSecrets(acme, engine, tmp_path):
    """After rotation every secret is encrypted anew with the new primary key alone; the generation stays."""
    acme.addUpstream("acme", UPSTREAM, validate=acceptAll)
    acme.addUpstream("acme", "smtp://mx.acme.example", validate=acceptAll)
    [before] = storedSecrets(engine)
    generation = acme.generation()
    rotated = rotate(tmp_path / "secret.key")
    assert Store(engine, rotated).reencryptSecrets() == SecretRotation(reencrypted=1, undecryptable=())
    [after] = storedSecrets(engine)
    assert after != before
    newKey, oldKey = keys(tmp_path / "secret.key")
    assert KeyRing([newKey]).decrypt(after) == SECRET
    assert KeyRing([oldKey]).decrypt(before) == SECRET
    assert acme.generation() == generation


def test_reencryptUndecryptable(acme, engine, tmp_path):
    """A secret no key decrypts is left as it is and named; the others are re-encrypted."""
    acme.addUpstream("acme", UPSTREAM, validate=acceptAll)
    acme.addUpstream("acme", UPSTREAM, validate=acceptAll)
    with engine.begin() as connection:
        connection.execute(text("UPDATE upstreams SET secret = 'damaged' WHERE id = 1"))
    rotation = Store(engine, rotate(tmp_path / "secret.key")).reencryptSecrets()
    assert rotation == SecretRotation(reencrypted=1, undecryptable=(1,))
    assert storedSecrets(engine)[0] == "damaged"


def test_runningRelayFollowsRotation(acme, engine, tmp_path):
    """A relay that loaded the key file before a rotation decrypts the re-encrypted secrets: it reads the file again."""
    acme.addUpstream("acme", UPSTREAM, validate=acceptAll)
    relay = Store(engine, KeyRing.fromFile(tmp_path / "secret.key", create=False))
    Store(engine, rotate(tmp_path / "secret.key")).reencryptSecrets()
    snapshot = relay.loadSnapshot()
    assert snapshot.problems == ()
    assert snapshot.tenants["acme"].upstreams[0].url.password == SECRET


def test_secretsRotateCommand(admin, databaseURL, keyFile):
    """secrets rotate adds a key, re-encrypts, says how many and what to do next; the relay decrypts."""
    admin("upstream", "add", "acme", UPSTREAM)
    admin("upstream", "add", "acme", "smtp://relay:other@mx.acme.example")
    result = admin("secrets", "rotate")
    assert (result.status, result.err) == (0, "")
    lines = result.out.splitlines()
    assert lines[:2] == [f"new primary key added to {keyFile}", "2 upstream secrets re-encrypted with it"]
    assert "copy it now to every other machine" in lines[2] and "secrets rotate --drop-old" in lines[2]
    assert len(keys(keyFile)) == 2
    assert [u.url.password for u in snapshot(databaseURL, keyFile).tenants["acme"].upstreams] == [SECRET, "other"]


def test_secretsRotateDropOld(admin, databaseURL, keyFile):
    """secrets rotate --drop-old leaves only the new key, which decrypts every secret."""
    admin("upstream", "add", "acme", UPSTREAM)
    admin("secrets", "rotate")
    result = admin("secrets", "rotate", "--drop-old")
    assert (result.status, result.out.splitlines()[-1]) == (0, f"2 old keys dropped from {keyFile}")
    assert len(keys(keyFile)) == 1
    assert snapshot(databaseURL, keyFile).tenants["acme"].upstreams[0].url.password == SECRET


def test_secretsRotateKeepsKeysForUndecryptable(admin, databaseURL, keyFile):
    """With a secret no key decrypts, --drop-old keeps the old keys and fails saying which upstream."""
    admin("upstream", "add", "acme", UPSTREAM)
    engine = openEngine(databaseURL)
    with engine.begin() as connection:
        connection.execute(text("UPDATE upstreams SET secret = 'damaged'"))
    engine.dispose()
    result = admin("secrets", "rotate", "--drop-old")
    assert result.status == 1
    assert "0 upstream secrets re-encrypted with it" in result.out
    assert result.error == "old keys kept: upstreams #1 have secrets no key decrypts"
    assert len(keys(keyFile)) == 2


def test_secretsRotateNoKeyFile(admin, keyFile):
    """Rotating a key file that does not exist fails with status 1 and creates none."""
    keyFile.unlink()
    result = admin("secrets", "rotate")
    assert (result.status, result.error) == (1, f"secret key file {keyFile} does not exist")
    assert not keyFile.exists()


# Password hashes


def test_upgradePasswordHash(acme):
    """A hash still stored is replaced (and the generation goes up); a stale one is not."""
    acme.addLogin("acme", "bob", PASSWORD)
    stored = acme.loadSnapshot().logins["bob"].passwordHash
    upgraded = hashPassword(PASSWORD)
    generation = acme.generation()
    assert acme.upgradePasswordHash("bob", stored, upgraded)
    assert (acme.loadSnapshot().logins["bob"].passwordHash, acme.generation()) == (upgraded, generation + 1)
    assert not acme.upgradePasswordHash("bob", stored, hashPassword(PASSWORD))
    assert not acme.upgradePasswordHash("nobody", stored, upgraded)
    assert (acme.loadSnapshot().logins["bob"].passwordHash, acme.generation()) == (upgraded, generation + 1)


WEAKER_HASH = "$scrypt$ln=10,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U"


@pytest.mark.parametrize("newHash", [PASSWORD, WEAKER_HASH])
def test_upgradePasswordHashInvalid(acme, newHash):
    """Only a hash of the current parameters may replace one: never a plain password or a weaker hash."""
    acme.addLogin("acme", "bob", PASSWORD)
    stored = acme.loadSnapshot().logins["bob"].passwordHash
    with pytest.raises(Invalid, match="not a hash of the current parameters"):
        acme.upgradePasswordHash("bob", stored, newHash)
    assert acme.loadSnapshot().logins["bob"].passwordHash == stored


# tenant export


def test_export(admin, databaseURL, keyFile):
    """tenant export gives everything stored about the tenant as JSON, with no password, hash or encrypted secret."""
    admin("login", "add", "acme", "bob", "--password-stdin", stdin=f"{PASSWORD}\n")
    admin("upstream", "add", "acme", UPSTREAM)
    admin("domain", "add", "acme", "acme.example")
    admin("network", "add", "acme", "192.0.2.0/24", "--no-auth")
    admin("blocklist", "add", "acme", "bad.example")
    admin("tenant", "set", "acme", "--max-size", "1000", "--rate", "5/1m")
    engine = openEngine(databaseURL)
    Store(engine, KeyRing.fromFile(keyFile)).recordUsage([UsageDelta("acme", date(2025, 3, 3), relayed=2, bytes=9)])
    [secret] = storedSecrets(engine)
    engine.dispose()
    passwordHash = snapshot(databaseURL, keyFile).logins["bob"].passwordHash

    result = admin("tenant", "export", "acme")
    assert (result.status, result.err) == (0, "")
    for withheld in (PASSWORD, passwordHash, passwordHash.split("$")[-1], SECRET, secret):
        assert withheld not in result.out
    exported = json.loads(result.out)
    tenant = exported["tenant"]
    assert (tenant["name"], tenant["maxSize"], tenant["rate"]) == ("acme", 1000, "5/1m")
    [login] = tenant["logins"]
    assert set(login) == {"username", "createdAt"} and login["username"] == "bob"
    assert tenant["upstreams"] == [
        {
            "id": 1,
            "url": "smtp+starttls://relay:***@mail.acme.example:587",
            "priority": 10,
            "oauth": None,
            "clientCertificate": None,
        }
    ]
    assert (tenant["domains"], tenant["blocklist"]) == (["acme.example"], ["bad.example"])
    assert tenant["networks"] == [{"network": "192.0.2.0/24", "noAuth": True}]
    assert exported["usage"] == [
        {"tenant": "acme", "day": "2025-03-03", "relayed": 2, "recipients": 0, "bytes": 9, "rejected": 0, "failed": 0}
    ]
    assert exported["redacted"] == [
        "login password hashes",
        "upstream passwords",
        "OAuth client secrets and refresh tokens",
        "client certificate keys",
    ]


def test_exportUnknown(admin):
    """Exporting an unknown tenant gives status 2."""
    result = admin("tenant", "export", "nope")
    assert (result.status, result.out, result.error) == (2, "", "unknown tenant 'nope'")


# tenant delete --purge


def rowsAbout(engine, tenantId: int, name: str) -> dict[str, int]:
    """
    For every table, how many of its rows hold the tenant's id (as C{id} of
    tenants, or C{tenant_id}), the id of one of its accounts (C{account_id})
    or its name.
    """
    found = {}
    with engine.connect() as connection:
        accounts = set(connection.scalars(text("SELECT id FROM accounts WHERE tenant_id = :t"), {"t": tenantId}))
        for table in Base.metadata.sorted_tables:
            idColumn = table.c.get("tenant_id", table.c.id if table.name == "tenants" else None)
            rows = connection.execute(select(table)).mappings().all()
            found[table.name] = sum(
                1
                for row in rows
                if (idColumn is not None and row[idColumn.name] == tenantId)
                or row.get("account_id") in accounts
                or any(name in str(v) for v in row.values())
            )
    return found


def test_purge(admin, databaseURL, keyFile):
    """tenant delete --purge deletes the tenant and every row about it, in every table, and says how many."""
    admin("tenant", "add", "purgeme", "--email", "ops@purgeme.example", "--company", "Purge Me")
    admin("login", "add", "purgeme", "purgeme-user", "--password-stdin", stdin=f"{PASSWORD}\n")
    admin("login", "add", "acme", "bob", "--password-stdin", stdin=f"{PASSWORD}\n")
    admin("upstream", "add", "purgeme", UPSTREAM)
    admin("domain", "add", "purgeme", "purgeme.example")
    admin("network", "add", "purgeme", "192.0.2.0/24", "--no-auth")
    admin("blocklist", "add", "purgeme", "bad.example")
    engine = openEngine(databaseURL)
    Store(engine, KeyRing.fromFile(keyFile)).recordUsage(
        [UsageDelta("purgeme", date(2025, 3, 3), relayed=1), UsageDelta("acme", date(2025, 3, 3), relayed=1)]
    )
    accounts = Accounts(engine)
    member = accounts.addMember("purgeme", "pat@purgeme.example", "Pat", PASSWORD)
    accounts.newSession(member.id)
    accounts.startReset("pat@purgeme.example")
    accounts.addApiToken("ci", "purgeme")
    ActivityLog(engine).record(
        [
            ActivityRow(
                "purgeme", datetime.now(UTC), "Q1", None, "a@purgeme.example", "b@x.example", 1, None, "250", "relayed"
            )
        ]
    )
    with engine.connect() as connection:
        tenantId = connection.scalar(text("SELECT id FROM tenants WHERE name = 'purgeme'"))
    before = rowsAbout(engine, tenantId, "purgeme")
    assert [table for table, count in before.items() if not count] == ["plans", "store_generation"]

    result = admin("tenant", "delete", "purgeme", "--purge")
    assert (result.status, result.err) == (0, "")
    assert result.out == (
        "tenant 'purgeme' deleted with every row about it (account_tokens 1, accounts 1, activity 1, api_tokens 1, "
        "blocked_domains 1, client_networks 1, logins 1, sender_domains 1, upstreams 1, usage 1, web_sessions 1)\n"
    )
    assert set(rowsAbout(engine, tenantId, "purgeme").values()) == {0}
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM usage")) == 1
    engine.dispose()
    assert list(snapshot(databaseURL, keyFile).logins) == ["bob"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["acme"], "tenant delete removes the tenant and everything stored about it, usage included: add --purge"),
        (["nope", "--purge"], "unknown tenant 'nope'"),
    ],
)
def test_deleteRefused(admin, args, message):
    """Without --purge nothing is deleted; an unknown tenant gives status 2."""
    result = admin("tenant", "delete", *args)
    assert (result.status, result.out, result.error) == (2, "", message)
    assert admin("tenant", "show", "acme").status == 0


def test_deleteTenantStore(acme):
    """Deleting a tenant is one change of the generation, and the name can be used again."""
    generation = acme.generation()
    assert acme.deleteTenant("acme")["logins"] == 0
    assert (acme.listTenants(), acme.generation()) == ([], generation + 1)
    acme.addTenant("acme", "ops@acme.example", "Acme again")
