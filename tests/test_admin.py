"""Tests for L{relay.admin.cli}, the C{smtprelay-admin} command."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from relay.admin import cli as admin
from relay.auth.passwords import verifyPassword
from relay.seams.discovery import Discovery, LoadedType
from tests.adminfixtures import Result, acme, keyFile, run, snapshot  # noqa: F401
from tests.storefixtures import databaseURL, postgresqlDatabase  # noqa: F401

UPSTREAM = "smtp+starttls://relay:s3cret@mail.acme.example:587"
REDACTED = "smtp+starttls://relay:***@mail.acme.example:587"
UPGRADE_FIRST = "run `smtprelay-admin db upgrade` first"
GLOBEX = ["globex", "--email", "ops@globex.example", "--company", "Globex", "--org-id", "00D000000000062"]


# db upgrade and preconditions


def test_upgradeIdempotent(run):
    """db upgrade succeeds on an empty database and again on a current one."""
    for _ in range(2):
        result = run("db", "upgrade")
        assert (result.status, result.out, result.err) == (0, "database schema is up to date\n", "")


@pytest.mark.parametrize(
    "command",
    [
        ["tenant", "add", "acme", "--email", "ops@acme.example", "--company", "Acme"],
        ["tenant", "list"],
        ["tenant", "show", "acme"],
        ["login", "add", "acme", "bob"],
        ["upstream", "add", "acme", UPSTREAM],
        ["domain", "add", "acme", "acme.example"],
        ["tenant", "set", "acme", "--max-size", "5"],
        ["tenant", "export", "acme"],
        ["network", "add", "acme", "192.0.2.0/24"],
        ["usage"],
        ["secrets", "rotate"],
    ],
)
def test_schemaRequired(run, command):
    """Every command but db upgrade refuses to run before the schema is current, saying what to do."""
    result = run(*command)
    assert result.status == 1
    assert result.error == f"database schema is not current: {UPGRADE_FIRST}"
    assert result.out == ""


def test_databaseUnreachable(keyFile, capsys):
    """An unreachable database fails with status 1 and one line, no traceback."""
    unreachable = "postgresql://postgres:pw@127.0.0.1:1/x"
    status = admin.main(["--database", unreachable, "--secret-key-file", str(keyFile), "tenant", "list"])
    err = capsys.readouterr().err
    assert status == 1
    assert Result(status, "", err).error.startswith("database: connection failed:")
    assert "pw" not in err


def test_databaseUnsupported(keyFile, capsys):
    """A database URL of another kind is bad input."""
    status = admin.main(["--database", "mysql://user@host/db", "--secret-key-file", str(keyFile), "db", "upgrade"])
    assert status == 2
    assert Result(status, "", capsys.readouterr().err).error.startswith("unsupported database 'mysql'")


def test_environment(databaseURL, keyFile, monkeypatch, capsys):
    """Without options the database and key file come from SMTPRELAY_DATABASE and SMTPRELAY_SECRET_KEY_FILE."""
    monkeypatch.setenv("SMTPRELAY_DATABASE", databaseURL)
    monkeypatch.setenv("SMTPRELAY_SECRET_KEY_FILE", str(keyFile))
    assert admin.main(["db", "upgrade"]) == 0
    assert admin.main(["tenant", "list"]) == 0
    assert keyFile.exists()


def test_usageError(capsys):
    """A malformed command line gives status 2 and the usage."""
    assert admin.main(["tenant", "frobnicate"]) == 2
    assert "usage: smtprelay-admin" in capsys.readouterr().err


# The key file


def test_keyFileCreated(acme, keyFile):
    """The secret key file is created owner-only when absent."""
    assert stat.S_IMODE(keyFile.stat().st_mode) == 0o600


def test_keyFileShared(acme, keyFile):
    """A key file readable by others stops every store command, saying how to fix it."""
    keyFile.chmod(0o644)
    result = acme("tenant", "list")
    assert result.status == 1
    assert result.error == (
        f"secret key file {keyFile} is accessible to group or others (mode 0644): run chmod 600 {keyFile}"
    )


# tenant


def test_tenantAdd(acme):
    """tenant add stores the tenant, with its org id in the 18-character form."""
    result = acme("tenant", "add", *GLOBEX)
    assert (result.status, result.out, result.err) == (0, "tenant 'globex' added (org id 00D000000000062EAA)\n", "")


@pytest.mark.parametrize(
    "args, message",
    [
        (["Acme!", "--email", "ops@acme.example", "--company", "Acme"], "invalid tenant name 'Acme!'"),
        (["globex", "--email", "nobody", "--company", "Globex"], "invalid e-mail address 'nobody'"),
        (
            ["globex", "--email", "ops@globex.example", "--company", "Globex", "--org-id", "00D000000000062EAB"],
            "invalid org id '00D000000000062EAB': the checksum suffix should be 'EAA'",
        ),
        (
            ["globex", "--email", "ops@globex.example", "--company", "Globex", "--org-id", "001000000000062"],
            "invalid org id '001000000000062'",
        ),
        (["acme", "--email", "ops@acme.example", "--company", "Acme"], "tenant 'acme' already exists"),
    ],
)
def test_tenantAddRefused(acme, args, message):
    """Bad or duplicate tenants give status 2 and one line saying why."""
    result = acme("tenant", "add", *args)
    assert (result.status, result.out) == (2, "")
    assert result.error.startswith(message)


def test_tenantList(acme):
    """tenant list shows a table of the tenants."""
    acme("tenant", "add", *GLOBEX)
    lines = acme("tenant", "list").out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "ORG", "ID", "COMPANY", "EMAIL"]
    assert lines[1].split() == ["acme", "active", "-", "Acme", "Ltd", "ops@acme.example"]
    assert lines[2].split() == ["globex", "active", "00D000000000062EAA", "Globex", "ops@globex.example"]


def test_tenantListJSON(acme):
    """tenant list --json gives every tenant's fields."""
    [tenant] = json.loads(acme("tenant", "list", "--json").out)
    createdAt = tenant.pop("createdAt")
    assert tenant == {
        "name": "acme",
        "email": "ops@acme.example",
        "company": "Acme Ltd",
        "orgId": None,
        "status": "active",
    }
    assert createdAt.endswith("+00:00")


def test_tenantShow(acme):
    """tenant show lists the tenant's fields, settings, logins, domains and upstreams with ids, redacted."""
    acme("login", "add", "acme", "bob", stdin="pw\n")
    acme("domain", "add", "acme", "acme.example")
    acme("upstream", "add", "acme", UPSTREAM, "--priority", "20")
    out = acme("tenant", "show", "acme").out
    assert out.startswith("name:            acme\nstatus:          active\n")
    assert "max size:        -\n" in out and "allow bounces:   no\n" in out
    assert "logins:          bob\n" in out and "domains:         acme.example\n" in out
    assert out.endswith(f"upstreams:\n  #1  priority 20  {REDACTED}\n")
    assert "s3cret" not in out


def test_tenantShowJSON(acme):
    """tenant show --json gives the same, upstream passwords redacted, rates as text."""
    acme("upstream", "add", "acme", UPSTREAM)
    acme("tenant", "set", "acme", "--rate", "100/60s")
    shown = json.loads(acme("tenant", "show", "acme", "--json").out)
    assert (shown["name"], shown["logins"], shown["domains"], shown["rate"]) == ("acme", [], [], "100/1m")
    assert shown["upstreams"] == [{"id": 1, "url": REDACTED, "priority": 10, "oauth": None, "clientCertificate": None}]


def test_tenantShowUnknown(acme):
    """Showing an unknown tenant gives status 2 naming it."""
    result = acme("tenant", "show", "nope")
    assert (result.status, result.error) == (2, "unknown tenant 'nope'")


# login


def test_loginGenerated(acme, databaseURL, keyFile):
    """Without --password-stdin a strong password is generated, printed once, and verifies."""
    result = acme("login", "add", "acme", "bob")
    assert result.status == 0
    [password] = [line.removeprefix("password: ") for line in result.out.splitlines() if line.startswith("password: ")]
    assert len(password) >= 24
    assert result.out.count(password) == 1
    assert "cannot be shown again" in result.out
    assert verifyPassword(password, snapshot(databaseURL, keyFile).logins["bob"].passwordHash)


def test_loginFromStdin(acme, databaseURL, keyFile):
    """With --password-stdin the line read (without its newline) is the password, and is not printed."""
    result = acme("login", "add", "acme", "bob", "--password-stdin", stdin=" my pass phrase \n")
    assert (result.status, result.out, result.err) == (0, "login 'bob' added to tenant 'acme'\n", "")
    assert verifyPassword(" my pass phrase ", snapshot(databaseURL, keyFile).logins["bob"].passwordHash)


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["acme", "bob", "--password-stdin"], "", "no password on standard input (expected one line)"),
        (["acme", "bob", "--password-stdin"], "\n", "no password on standard input (expected one line)"),
        (["nope", "bob", "--password-stdin"], "pw\n", "unknown tenant 'nope'"),
        (["acme", "bob smith", "--password-stdin"], "pw\n", "invalid user name 'bob smith'"),
    ],
)
def test_loginRefused(acme, args, stdin, message):
    """An empty password, an unknown tenant or a bad user name gives status 2."""
    result = acme("login", "add", *args, stdin=stdin)
    assert (result.status, result.out) == (2, "")
    assert result.error.startswith(message)


def test_loginDuplicate(acme):
    """A user name already taken gives status 2 naming its tenant."""
    acme("login", "add", "acme", "bob", "--password-stdin", stdin="pw\n")
    result = acme("login", "add", "acme", "bob", "--password-stdin", stdin="other\n")
    assert (result.status, result.error) == (2, "login 'bob' already exists (tenant 'acme')")


# upstream


def test_upstreamAdd(acme, databaseURL, keyFile):
    """upstream add checks the URL with the installed smtp type, shows it redacted, stores the password."""
    result = acme("upstream", "add", "acme", UPSTREAM, "--priority", "5")
    assert (result.status, result.err) == (0, "")
    assert result.out == f"upstream #1 {REDACTED} added to tenant 'acme' (priority 5)\n"
    [upstream] = snapshot(databaseURL, keyFile).tenants["acme"].upstreams
    assert (upstream.url.unparse(), upstream.priority) == (UPSTREAM, 5)


def test_upstreamPasswordFromStdin(acme, databaseURL, keyFile):
    """With --password-stdin the URL's password is read from standard input, so it is never in `ps`."""
    result = acme(
        "upstream", "add", "acme", "smtp+starttls://relay@mail.acme.example:587", "--password-stdin", stdin="s3cret\n"
    )
    assert (result.status, result.err) == (0, "")
    assert result.out == f"upstream #1 {REDACTED} added to tenant 'acme' (priority 10)\n"
    [upstream] = snapshot(databaseURL, keyFile).tenants["acme"].upstreams
    assert upstream.url.unparse() == UPSTREAM


@pytest.mark.parametrize(
    "url, stdin, message",
    [
        ("smtp+starttls://mail.acme.example:587", "pw\n", "--password-stdin needs a URL with a user name"),
        (UPSTREAM, "pw\n", "--password-stdin needs a URL with a user name and no password"),
        ("smtp+starttls://relay@mail.acme.example:587", "", "no password on standard input"),
    ],
)
def test_upstreamPasswordFromStdinRefused(acme, url, stdin, message):
    """--password-stdin takes a URL with a user name and no password, and one line of input."""
    result = acme("upstream", "add", "acme", url, "--password-stdin", stdin=stdin)
    assert result.status == 2 and result.error.startswith(message)


def test_upstreamUnknownScheme(acme):
    """A scheme no installed upstream type handles gives status 2 listing the installed ones."""
    result = acme("upstream", "add", "acme", "foo://relay:s3cret@host")
    assert result.status == 2
    assert result.error.startswith("unknown upstream scheme 'foo' (installed: ")
    assert "smtp" in result.error and "s3cret" not in result.err


class FakeSMTPType:
    """Stands in for the smtp upstream type: refuses C{verify} other than yes or no."""

    name = "smtp"
    schemes = ("smtp",)

    @staticmethod
    def validate(url):
        if url.option("verify", "yes") not in ("yes", "no"):
            raise ValueError("verify must be yes or no")


@pytest.mark.parametrize(
    "args, message",
    [
        (["acme", "smtp://relay:s3cret@host:99999"], "bad port in 'smtp://relay:***@host:99999'"),
        (["acme", "no scheme"], "not an upstream URL"),
        (["acme", "smtp://relay:s3cret@host?verify=maybe"], "verify must be yes or no"),
        (["nope", "smtp://relay:s3cret@host"], "unknown tenant 'nope'"),
        (["acme", "smtp://relay:s3cret@host", "--priority", "-1"], "invalid priority -1"),
    ],
)
def test_upstreamRefused(acme, monkeypatch, args, message):
    """A malformed or refused upstream gives status 2, never showing its password."""
    monkeypatch.setattr(admin, "discover", lambda: Discovery(upstreamTypes=[LoadedType(FakeSMTPType, FakeSMTPType)]))
    result = acme("upstream", "add", *args)
    assert (result.status, result.out) == (2, "")
    assert result.error.startswith(message)
    assert "s3cret" not in result.err


# domain


def test_domainAdd(acme):
    """domain add stores the domain in lower case."""
    result = acme("domain", "add", "acme", "*.Acme.Example")
    assert (result.status, result.out, result.err) == (0, "domain '*.acme.example' added to tenant 'acme'\n", "")


@pytest.mark.parametrize(
    "args, message",
    [
        (["acme", "*"], "invalid sender domain '*'"),
        (["acme", "192.0.2.1"], "invalid sender domain '192.0.2.1'"),
        (["nope", "acme.example"], "unknown tenant 'nope'"),
        (["acme", "ACME.example"], "domain 'acme.example' already allowed for tenant 'acme'"),
    ],
)
def test_domainRefused(acme, args, message):
    """A bad, duplicate or unknown-tenant domain gives status 2."""
    acme("domain", "add", "acme", "acme.example")
    result = acme("domain", "add", *args)
    assert (result.status, result.out) == (2, "")
    assert result.error.startswith(message)


# The console script


@pytest.mark.parametrize("databaseURL", ["sqlite"], indirect=True)  # a process start is slow: once is enough
def test_consoleScript(databaseURL, tmp_path):
    """The installed smtprelay-admin script runs commands and reports errors as one line with status 2."""
    script = Path(sys.executable).with_name("smtprelay-admin")
    environment = {**os.environ, "SMTPRELAY_DATABASE": databaseURL, "SMTPRELAY_SECRET_KEY_FILE": str(tmp_path / "key")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([script, *args], env=environment, capture_output=True, text=True, timeout=60)

    assert run("db", "upgrade").returncode == 0
    added = run("tenant", "add", "acme", "--email", "ops@acme.example", "--company", "Acme")
    assert (added.returncode, added.stdout) == (0, "tenant 'acme' added\n")
    refused = run("tenant", "show", "nope")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == "smtprelay-admin: error: unknown tenant 'nope'\n"
