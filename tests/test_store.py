"""Tests for L{relay.store}: the database, its migrations and L{relay.store.repository.Store}."""

from __future__ import annotations

import stat
from datetime import UTC, date, datetime, timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.exc import IntegrityError

from relay.auth.passwords import verifyPassword
from relay.core.tenant import Rate
from relay.core.urls import UpstreamURL
from relay.store import database
from relay.store.database import openEngine, requireCurrentSchema, upgrade
from relay.store.errors import Conflict, Invalid, NotFound, SchemaNotCurrent
from relay.store.models import Base
from relay.store.repository import Store
from relay.store.secrets import KeyRing
from relay.store.values import UpstreamInfo, UsageDelta
from tests.storefixtures import acceptAll, acme, databaseURL, engine, freshEngine, keyRing, postgresqlDatabase, store  # noqa: F401  # noqa: F401

SECRET = "s3cret p@ss"
UPSTREAM = "smtp+starttls://relay%40acme.example:s3cret%20p%40ss@mail.acme.example:587?timeout=30"
REDACTED = "smtp+starttls://relay%40acme.example:***@mail.acme.example:587?timeout=30"


# The database and its schema


def test_noSchema(freshEngine):
    """An empty database has no current schema, and the error says to run db upgrade."""
    with pytest.raises(SchemaNotCurrent, match=r"run `smtprelay-admin db upgrade` first"):
        requireCurrentSchema(freshEngine)


def test_upgradeIdempotent(freshEngine, keyRing):
    """Upgrading twice leaves a current schema with generation 0."""
    upgrade(freshEngine)
    upgrade(freshEngine)
    requireCurrentSchema(freshEngine)
    assert Store(freshEngine, keyRing).generation() == 0


def test_newerSchema(engine):
    """A schema migrated by a newer smtprelay is reported as such."""
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaNotCurrent, match="9999 is newer than this smtprelay"):
        requireCurrentSchema(engine)


def test_migrationsMatchModels(engine):
    """The migrations build exactly the tables, columns, keys and indexes the models declare."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def migrate(engine: Engine, revision: str, step=command.upgrade) -> None:
    """Migrate the schema up (or, with C{step=command.downgrade}, down) to a revision."""
    config = database._alembicConfig()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        step(config, revision)


def test_upgradeFrom0001KeepsData(freshEngine, keyRing):
    """A database of revision 0001 with data upgrades to the latest: the data stays, the new settings are unset."""
    migrate(freshEngine, "0001")
    now = datetime.now(UTC)
    with freshEngine.begin() as connection:
        connection.execute(
            text("INSERT INTO tenants VALUES (7, 'acme', 'ops@acme.example', 'Acme', NULL, 'suspended', :now)"),
            {"now": now},
        )
        connection.execute(text("INSERT INTO logins VALUES (1, 7, 'bob', '$scrypt$x', :now)"), {"now": now})
        connection.execute(
            text("INSERT INTO upstreams VALUES (1, 7, 'smtp://relay@mx.acme.example', :secret, 20)"),
            {"secret": keyRing.encrypt(SECRET)},
        )
        connection.execute(text("INSERT INTO sender_domains VALUES (1, 7, 'acme.example')"))
        connection.execute(text("UPDATE store_generation SET value = 4"))
    upgrade(freshEngine)
    requireCurrentSchema(freshEngine)
    snapshot = Store(freshEngine, keyRing).loadSnapshot()
    assert (snapshot.generation, snapshot.problems, list(snapshot.logins)) == (4, (), ["bob"])
    tenant = snapshot.tenants["acme"]
    assert (tenant.active, tenant.domains, tenant.upstreams[0].url.password) == (False, {"acme.example"}, SECRET)
    assert (tenant.maxSize, tenant.maxRecipients, tenant.rate, tenant.rateRecipients) == (None, None, None, None)
    assert (tenant.maxConcurrency, tenant.allowBounces, tenant.networks, tenant.blocklist) == (None, False, (), set())
    assert Store(freshEngine, keyRing).usage() == []


def test_downgradeTo0001(acme, engine):
    """The latest revision downgrades to 0001, keeping that revision's data, and upgrades again."""
    acme.setTenant("acme", maxSize=1000, rate=Rate(5, 60))
    acme.addNetwork("acme", "192.0.2.0/24")
    migrate(engine, "0001", command.downgrade)
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT name FROM tenants")) == "acme"
    assert not {"usage", "client_networks", "blocked_domains"} & set(inspect(engine).get_table_names())
    upgrade(engine)
    assert acme.showTenant("acme").maxSize is None


@pytest.mark.parametrize(
    "assignment",
    [
        "max_size = 0",
        "max_recipients = -1",
        "max_concurrency = 0",
        "rate_count = 5",
        "rate_seconds = 60",
        "rate_count = 0, rate_seconds = 60",
        "rate_recipients_count = 5",
        "rate_recipients_count = 5, rate_recipients_seconds = 0",
    ],
)
def test_limitsChecked(acme, engine, assignment):
    """The database itself refuses a limit below 1 and half a rate."""
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(text(f"UPDATE tenants SET {assignment}"))


def test_foreignKeysCascade(acme):
    """Deleting a tenant row deletes every row that belongs to it (foreign keys enforced)."""
    acme.addLogin("acme", "bob", "pw")
    acme.addUpstream("acme", UPSTREAM, validate=acceptAll)
    acme.addDomain("acme", "acme.example")
    acme.addNetwork("acme", "192.0.2.0/24")
    acme.addBlockedDomain("acme", "bad.example")
    acme.recordUsage([UsageDelta("acme", date(2025, 1, 1), relayed=1)])
    with acme._engine.begin() as connection:
        connection.execute(text("DELETE FROM tenants"))
        tables = ("logins", "upstreams", "sender_domains", "client_networks", "blocked_domains", "usage")
        counts = [connection.scalar(text(f"SELECT count(*) FROM {table}")) for table in tables]
    assert counts == [0] * len(tables)


def test_openEngineMalformed():
    """A database URL that cannot be parsed is invalid input."""
    with pytest.raises(Invalid, match="invalid database URL"):
        openEngine("not a url")


def test_openEngineUnsupported():
    """A database other than SQLite and PostgreSQL is refused, naming the two."""
    with pytest.raises(Invalid, match=r"unsupported database 'mysql': use sqlite:///PATH or postgresql\+psycopg://"):
        openEngine("mysql://user@host/db")


def test_openEnginePostgreSQLDriver():
    """postgresql:// means psycopg 3."""
    assert openEngine("postgresql://user@host/db").url.drivername == "postgresql+psycopg"


def test_openEngineCreatesDirectory(tmp_path):
    """The directory of an SQLite file is created."""
    engine = openEngine(f"sqlite:///{tmp_path / 'var' / 'lib' / 'relay.db'}")
    upgrade(engine)
    engine.dispose()
    assert (tmp_path / "var" / "lib" / "relay.db").is_file()


def test_openEngineCreatesPrivateFile(tmp_path):
    """A new SQLite store (password hashes, encrypted secrets) and its WAL files are readable by their owner only."""
    path = tmp_path / "relay.db"
    engine = openEngine(f"sqlite:///{path}")
    upgrade(engine)
    with engine.connect():  # keeps the -wal and -shm files open
        for name in ("relay.db", "relay.db-wal", "relay.db-shm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    engine.dispose()


# Tenants


def test_addTenant(store):
    """A new tenant is active, its org id in the 18-character form, its creation time in UTC."""
    before = datetime.now(UTC)
    tenant = store.addTenant("acme-2", "Ops@Acme.Example", " Acme Ltd ", "00D000000000062")
    assert (tenant.name, tenant.email, tenant.company, tenant.orgId, tenant.status) == (
        "acme-2",
        "Ops@acme.example",
        "Acme Ltd",
        "00D000000000062EAA",
        "active",
    )
    assert before - timedelta(seconds=1) <= tenant.createdAt <= datetime.now(UTC)
    assert store.listTenants() == [tenant]


def test_addTenantDuplicate(acme):
    """A second tenant of the same name is a conflict."""
    with pytest.raises(Conflict, match="^tenant 'acme' already exists$"):
        acme.addTenant("acme", "other@acme.example", "Other")


@pytest.mark.parametrize(
    "name, email, company, orgId, message",
    [
        ("Acme", "ops@acme.example", "Acme", None, "invalid tenant name 'Acme'"),
        ("-acme", "ops@acme.example", "Acme", None, "invalid tenant name '-acme'"),
        ("a" * 64, "ops@acme.example", "Acme", None, "invalid tenant name"),
        ("acme", "ops", "Acme", None, "invalid e-mail address 'ops'"),
        ("acme", "ops@localhost", "Acme", None, "invalid e-mail address 'ops@localhost'"),
        ("acme", "ops@acme.example", "  ", None, "invalid company name"),
        ("acme", "ops@acme.example", "Acme", "00D000000000062EAB", "checksum suffix should be 'EAA'"),
        ("acme", "ops@acme.example", "Acme", "12345", "invalid org id '12345'"),
    ],
)
def test_addTenantInvalid(store, name, email, company, orgId, message):
    """Bad tenant fields are invalid input, and nothing is stored."""
    with pytest.raises(Invalid, match=message):
        store.addTenant(name, email, company, orgId)
    assert store.listTenants() == []


def test_listTenantsByName(store):
    """Tenants are listed by name."""
    for name in ("zeta", "alpha", "mid"):
        store.addTenant(name, f"ops@{name}.example", name.title())
    assert [tenant.name for tenant in store.listTenants()] == ["alpha", "mid", "zeta"]


def test_showTenant(acme):
    """A tenant is shown with its user names, upstreams by priority (passwords redacted) and domains."""
    acme.addLogin("acme", "bob", "pw")
    acme.addUpstream("acme", UPSTREAM, priority=20, validate=acceptAll)
    acme.addUpstream("acme", "smtp://mx.acme.example", priority=5, validate=acceptAll)
    acme.addDomain("acme", "acme.example")
    acme.addDomain("acme", "*.acme.example")
    shown = acme.showTenant("acme")
    assert [login.username for login in shown.logins] == ["bob"]
    assert shown.upstreams == (
        UpstreamInfo(id=2, url="smtp://mx.acme.example", priority=5),
        UpstreamInfo(id=1, url=REDACTED, priority=20),
    )
    assert shown.domains == ("*.acme.example", "acme.example")
    assert SECRET not in repr(shown)


def test_showUnknownTenant(store):
    """Showing an unknown tenant names it."""
    with pytest.raises(NotFound, match="^unknown tenant 'nope'$"):
        store.showTenant("nope")


# Logins


def test_addLogin(acme):
    """A login's password is stored as a hash that verifies it."""
    acme.addLogin("acme", "bob", "pw one")
    login = acme.loadSnapshot().logins["bob"]
    assert login.tenant == "acme"
    assert "pw one" not in login.passwordHash
    assert verifyPassword("pw one", login.passwordHash)


def test_addLoginDuplicate(acme):
    """A user name taken by any tenant is a conflict naming that tenant."""
    acme.addTenant("other", "ops@other.example", "Other")
    acme.addLogin("acme", "bob", "pw")
    with pytest.raises(Conflict, match=r"^login 'bob' already exists \(tenant 'acme'\)$"):
        acme.addLogin("other", "bob", "pw")


def test_loginsCaseSensitive(acme):
    """User names differing only in case are different logins."""
    acme.addLogin("acme", "bob", "pw")
    acme.addLogin("acme", "Bob", "pw")
    assert [login.username for login in acme.showTenant("acme").logins] == ["Bob", "bob"]


@pytest.mark.parametrize(
    "tenant, username, password, error, message",
    [
        ("nope", "bob", "pw", NotFound, "unknown tenant 'nope'"),
        ("acme", "", "pw", Invalid, "invalid user name ''"),
        ("acme", "bob smith", "pw", Invalid, "invalid user name 'bob smith'"),
        ("acme", "bob", "", Invalid, "empty password"),
    ],
)
def test_addLoginRefused(acme, tenant, username, password, error, message):
    """A login for an unknown tenant, with a bad user name or an empty password is refused."""
    with pytest.raises(error, match=message):
        acme.addLogin(tenant, username, password)


# Upstreams


def test_upstreamSecretEncrypted(acme, keyRing):
    """The upstream password is stored only encrypted, apart from the URL."""
    acme.addUpstream("acme", UPSTREAM, validate=acceptAll)
    with acme._engine.connect() as connection:
        [(url, secret)] = connection.execute(text("SELECT url, secret FROM upstreams")).all()
    assert url == "smtp+starttls://relay%40acme.example@mail.acme.example:587?timeout=30"
    assert "s3cret" not in secret and "s3cret" not in url
    assert keyRing.decrypt(secret) == SECRET


def test_addUpstreamResult(acme):
    """Adding an upstream answers its redacted URL and priority."""
    added = acme.addUpstream("acme", UPSTREAM, priority=0, validate=acceptAll)
    assert added == UpstreamInfo(id=1, url=REDACTED, priority=0)


def test_upstreamValidated(acme):
    """The validator receives the parsed URL, password included."""
    seen = []
    acme.addUpstream("acme", UPSTREAM, validate=seen.append)
    assert seen == [UpstreamURL.parse(UPSTREAM)]
    assert seen[0].password == SECRET


def refuse(url: UpstreamURL) -> None:
    """An upstream validator that refuses every URL, quoting it."""
    raise ValueError(f"cannot use {url.unparse()}")


@pytest.mark.parametrize(
    "tenant, url, priority, validate, error, message",
    [
        ("nope", UPSTREAM, 10, acceptAll, NotFound, "^unknown tenant 'nope'$"),
        ("acme", "mail.acme.example", 10, acceptAll, Invalid, "not an upstream URL"),
        ("acme", "smtp://relay:s3cret@mail.acme.example:99999", 10, acceptAll, Invalid, "bad port"),
        ("acme", UPSTREAM, 10, refuse, Invalid, "^cannot use smtp"),
        ("acme", UPSTREAM, -1, acceptAll, Invalid, "invalid priority -1"),
        ("acme", UPSTREAM, 65536, acceptAll, Invalid, "invalid priority 65536"),
    ],
)
def test_addUpstreamRefused(acme, tenant, url, priority, validate, error, message):
    """A refused upstream is not stored, and the reason never shows its password."""
    with pytest.raises(error, match=message) as raised:
        acme.addUpstream(tenant, url, priority, validate=validate)
    assert "s3cret" not in str(raised.value)
    assert acme.showTenant("acme").upstreams == ()


# Sender domains


def test_addDomain(acme):
    """Domains are kept in lower case; a tenant may have a domain and its subdomains."""
    assert acme.addDomain("acme", "Acme.Example") == "acme.example"
    assert acme.addDomain("acme", "*.ACME.example") == "*.acme.example"
    assert acme.loadSnapshot().tenants["acme"].domains == frozenset({"acme.example", "*.acme.example"})


def test_addDomainDuplicate(acme):
    """A domain a tenant already has, in any case, is a conflict."""
    acme.addDomain("acme", "acme.example")
    with pytest.raises(Conflict, match="^domain 'acme.example' already allowed for tenant 'acme'$"):
        acme.addDomain("acme", "ACME.example")


def test_domainSharedByTenants(acme):
    """Two tenants may allow the same domain."""
    acme.addTenant("other", "ops@other.example", "Other")
    acme.addDomain("acme", "example.com")
    acme.addDomain("other", "example.com")
    assert acme.showTenant("other").domains == ("example.com",)


@pytest.mark.parametrize(
    "domain",
    [
        "*",
        "*.",
        "*.*.example.com",
        "example.*",
        "localhost",
        "192.0.2.1",
        "[2001:db8::1]",
        "exa mple.com",
        "-acme.example",
        "acme..example",
        "bücher.example",
        "a" * 64 + ".example",
    ],
)
def test_addDomainInvalid(acme, domain):
    """Anything but a host name, or *. and a host name, is invalid."""
    with pytest.raises(Invalid, match="invalid sender domain"):
        acme.addDomain("acme", domain)


def test_addDomainUnknownTenant(store):
    """A domain for an unknown tenant names the tenant."""
    with pytest.raises(NotFound, match="^unknown tenant 'nope'$"):
        store.addDomain("nope", "example.com")


# Generation and snapshot


def test_generationCountsChanges(store):
    """Each change increments the generation once; reads and refused changes do not."""
    steps = [
        lambda: store.addTenant("acme", "ops@acme.example", "Acme"),
        lambda: store.addLogin("acme", "bob", "pw"),
        lambda: store.addUpstream("acme", UPSTREAM, validate=acceptAll),
        lambda: store.addDomain("acme", "acme.example"),
    ]
    for expected, step in enumerate(steps, 1):
        step()
        assert store.generation() == expected
    store.listTenants()
    store.showTenant("acme")
    store.loadSnapshot()
    with pytest.raises(Conflict):
        store.addDomain("acme", "acme.example")
    assert store.generation() == len(steps)


def test_snapshot(acme):
    """The snapshot holds tenants with decrypted upstreams by priority, domains, and logins by user name."""
    acme.addTenant("globex", "ops@globex.example", "Globex", orgId="00Dx0000000ABCD")
    acme.addLogin("globex", "hank", "pw")
    acme.addUpstream("acme", UPSTREAM, priority=20, validate=acceptAll)
    acme.addUpstream("acme", "smtp://mx.acme.example", priority=5, validate=acceptAll)
    acme.addDomain("acme", "acme.example")
    snapshot = acme.loadSnapshot()
    assert snapshot.generation == 6
    assert snapshot.problems == ()
    assert set(snapshot.tenants) == {"acme", "globex"}
    tenant = snapshot.tenants["acme"]
    assert (tenant.active, tenant.orgId, tenant.domains) == (True, None, frozenset({"acme.example"}))
    assert [(upstream.priority, upstream.url.unparse()) for upstream in tenant.upstreams] == [
        (5, "smtp://mx.acme.example"),
        (20, UPSTREAM),
    ]
    assert snapshot.tenants["globex"].orgId == "00Dx0000000ABCDEA4"
    assert list(snapshot.logins) == ["hank"] and snapshot.logins["hank"].tenant == "globex"


def test_snapshotIsConsistent(acme, engine, keyRing):
    """A change committed while a snapshot is being read shows neither in its data nor in its generation."""
    writer = Store(engine, keyRing)
    interleaved = []

    def commitMeanwhile(connection, cursor, statement, *rest):
        if not interleaved and statement.lstrip().upper().startswith("SELECT") and "store_generation" in statement:
            interleaved.append(statement)
            writer.addTenant("late", "ops@late.example", "Late")

    event.listen(engine, "after_cursor_execute", commitMeanwhile)
    try:
        snapshot = acme.loadSnapshot()
    finally:
        event.remove(engine, "after_cursor_execute", commitMeanwhile)
    assert interleaved
    assert (snapshot.generation, set(snapshot.tenants)) == (1, {"acme"})
    later = acme.loadSnapshot()
    assert (later.generation, set(later.tenants)) == (2, {"acme", "late"})


def test_snapshotLeavesOutUndecryptable(acme, engine, tmp_path):
    """An upstream whose password no key decrypts is left out and reported; the rest loads."""
    acme.addUpstream("acme", UPSTREAM, validate=acceptAll)
    acme.addUpstream("acme", "smtp://mx.acme.example", priority=20, validate=acceptAll)
    otherKeys = Store(engine, KeyRing.fromFile(tmp_path / "other.key"))
    snapshot = otherKeys.loadSnapshot()
    assert [upstream.url.host for upstream in snapshot.tenants["acme"].upstreams] == ["mx.acme.example"]
    [problem] = snapshot.problems
    assert problem.startswith("tenant 'acme': upstream ") and "cannot be decrypted" in problem
    assert SECRET not in problem


def test_snapshotLeavesOutUnparsable(acme, engine):
    """An upstream whose stored URL does not parse is left out and reported."""
    acme.addUpstream("acme", "smtp://mx.acme.example", validate=acceptAll)
    with engine.begin() as connection:
        connection.execute(text("UPDATE upstreams SET url = 'garbage'"))
    snapshot = acme.loadSnapshot()
    assert snapshot.tenants["acme"].upstreams == ()
    assert snapshot.problems == (
        "tenant 'acme': upstream 1 left out: not an upstream URL: 'garbage' (expected scheme://...)",
    )
