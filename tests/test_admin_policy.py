"""
Tests for the C{smtprelay-admin} commands that set a tenant's policy and
remove what was added: C{tenant set|suspend|resume}, C{network},
C{blocklist}, and C{remove} of logins, upstreams and domains.
"""

from __future__ import annotations

import ipaddress

import pytest

from relay.core.tenant import Network, Rate
from tests.adminfixtures import Result, acme, keyFile, run, snapshot  # noqa: F401
from tests.storefixtures import databaseURL, postgresqlDatabase  # noqa: F401

UPSTREAM = "smtp+starttls://relay:s3cret@mail.acme.example:587"
REDACTED = "smtp+starttls://relay:***@mail.acme.example:587"


def refused(result: Result, message: str) -> None:
    """Check that a command gave status 2, no output, and this one-line reason."""
    assert (result.status, result.out, result.error) == (2, "", message)


@pytest.fixture
def globex(acme):
    """A migrated database with the tenants acme and globex."""
    assert acme("tenant", "add", "globex", "--email", "ops@globex.example", "--company", "Globex").status == 0
    return acme


# tenant set, suspend, resume


def test_tenantSet(acme, databaseURL, keyFile):
    """tenant set changes the settings given, says their new values, and the relay loads them."""
    result = acme(
        "tenant", "set", "acme", "--max-size", "10485760", "--max-recipients", "100", "--rate", "100/60s",
        "--rate-recipients", "10000/1d", "--max-concurrency", "5", "--allow-bounces", "yes",
        "--org-id", "00D000000000062", "--email", "billing@acme.example", "--company", "Acme Group",
    )  # fmt: skip
    assert (result.status, result.err) == (0, "")
    assert result.out == (
        "tenant 'acme': email billing@acme.example, company Acme Group, org id 00D000000000062EAA, "
        "max size 10485760, max recipients 100, rate 100/1m, rate recipients 10000/1d, max concurrency 5, "
        "allow bounces yes\n"
    )
    tenant = snapshot(databaseURL, keyFile).tenants["acme"]
    assert (tenant.maxSize, tenant.maxRecipients, tenant.maxConcurrency, tenant.allowBounces) == (
        10485760,
        100,
        5,
        True,
    )
    assert (tenant.rate, tenant.rateRecipients, tenant.orgId) == (
        Rate(100, 60),
        Rate(10000, 86400),
        "00D000000000062EAA",
    )
    out = acme("tenant", "show", "acme").out
    assert "rate:            100/1m\n" in out and "max concurrency: 5\n" in out and "allow bounces:   yes\n" in out


def test_tenantSetNone(acme, databaseURL, keyFile):
    """none clears a limit, a rate or the org id."""
    acme("tenant", "set", "acme", "--max-size", "1000", "--rate", "5/1s", "--org-id", "00D000000000062")
    result = acme("tenant", "set", "acme", "--max-size", "none", "--rate", "none", "--org-id", "none")
    assert (result.status, result.out) == (0, "tenant 'acme': org id -, max size -, rate -\n")
    tenant = snapshot(databaseURL, keyFile).tenants["acme"]
    assert (tenant.maxSize, tenant.rate, tenant.orgId) == (None, None, None)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to change: give one or more of --email, --company, --org-id, --max-size, --max-recipients, "
             "--rate, --rate-recipients, --max-concurrency, --allow-bounces"),
        (["--max-size", "10MB"], "--max-size: expected a whole number or none, not '10MB'"),
        (["--max-size", "-1"], "--max-size: expected a whole number or none, not '-1'"),
        (["--max-size", "0"], "invalid maximum message size 0: expected 1 to 9223372036854775807, or none"),
        (["--max-recipients", "0"], "invalid maximum recipients 0: expected 1 to 2147483647, or none"),
        (["--max-concurrency", "99999999999"], "invalid maximum concurrency 99999999999: expected 1 to 2147483647"),
        (["--rate", "fast"], "--rate: not a rate: 'fast' (expected e.g. 100/1m, 10000/1d)"),
        (["--rate", "0/1m"], "invalid rate 0/1m: expected 1 to 2147483647 per period up to 2147483647s"),
        (["--rate-recipients", "10/0d"], "--rate-recipients: not a rate: '10/0d' (the period must be positive)"),
        (["--allow-bounces", "maybe"], "--allow-bounces: expected yes or no, not 'maybe'"),
        (["--email", "none"], "invalid e-mail address 'none': expected name@example.com"),
        (["--org-id", "12345"], "invalid org id '12345'"),
    ],
)  # fmt: skip
def test_tenantSetRefused(acme, args, message):
    """Bad settings give status 2 and one line naming the option or the limit; nothing changes."""
    before = acme("tenant", "show", "acme").out
    result = acme("tenant", "set", "acme", *args)
    assert (result.status, result.out) == (2, "")
    assert result.error.startswith(message)
    assert acme("tenant", "show", "acme").out == before


@pytest.mark.parametrize("command", ["set", "suspend", "resume"])
def test_tenantUnknown(acme, command):
    """Changing an unknown tenant gives status 2 naming it."""
    refused(
        acme("tenant", command, "nope", *(["--max-size", "5"] if command == "set" else [])), "unknown tenant 'nope'"
    )


def test_suspendResume(acme, databaseURL, keyFile):
    """tenant suspend makes the tenant inactive for the relay, tenant resume active again."""
    assert acme("tenant", "suspend", "acme").out == "tenant 'acme' suspended\n"
    assert not snapshot(databaseURL, keyFile).tenants["acme"].active
    assert "status:          suspended\n" in acme("tenant", "show", "acme").out
    assert acme("tenant", "resume", "acme").out == "tenant 'acme' resumed\n"
    assert snapshot(databaseURL, keyFile).tenants["acme"].active


# network


def test_network(acme, databaseURL, keyFile):
    """network add lists a network, no-auth or not; tenant show has them; network remove takes one away."""
    assert acme("network", "add", "acme", "2001:DB8::/48", "--no-auth").out == (
        "no-auth network 2001:db8::/48 added to tenant 'acme'\n"
    )
    assert acme("network", "add", "acme", "192.0.2.0/24").out == "network 192.0.2.0/24 added to tenant 'acme'\n"
    assert "networks:        192.0.2.0/24, 2001:db8::/48 no-auth\n" in acme("tenant", "show", "acme").out
    assert acme("network", "remove", "acme", "192.0.2.0/24").out == "network 192.0.2.0/24 removed from tenant 'acme'\n"
    assert snapshot(databaseURL, keyFile).tenants["acme"].networks == (
        Network(ipaddress.ip_network("2001:db8::/48"), noAuth=True),
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["acme", "192.0.2.1/24"], "invalid network '192.0.2.1/24': it has host bits set; did you mean 192.0.2.0/24?"),
        (["acme", "192.0.2.0/24/8"], "invalid network '192.0.2.0/24/8': expected CIDR such as 192.0.2.0/24 or "
                                     "2001:db8::/48"),
        (["acme", "10.0.0.0/15", "--no-auth"], "no-auth network 10.0.0.0/15 is wider than /16: list the senders' "
                                               "own addresses"),
        (["acme", "2001:db8::/47", "--no-auth"], "no-auth network 2001:db8::/47 is wider than /48: list the "
                                                 "senders' own addresses"),
        (["acme", "198.51.100.0/25", "--no-auth"], "no-auth network 198.51.100.0/25 overlaps network 198.51.100.0/24 "
                                                   "of tenant 'globex': a no-auth network must overlap no other "
                                                   "tenant's network"),
        (["acme", "192.0.2.0/24"], "network 192.0.2.0/24 already listed for tenant 'acme'"),
        (["nope", "203.0.113.0/24"], "unknown tenant 'nope'"),
    ],
)  # fmt: skip
def test_networkAddRefused(globex, args, message):
    """A malformed, too wide, overlapping or duplicate network gives status 2 and says why."""
    globex("network", "add", "globex", "198.51.100.0/24")
    globex("network", "add", "acme", "192.0.2.0/24")
    refused(globex("network", "add", *args), message)


@pytest.mark.parametrize(
    "args, message",
    [
        (["acme", "192.0.2.0/24"], "tenant 'acme' has no network '192.0.2.0/24'"),
        (["acme", "192.0.2.1/24"], "invalid network '192.0.2.1/24': it has host bits set; did you mean 192.0.2.0/24?"),
        (["nope", "192.0.2.0/24"], "unknown tenant 'nope'"),
    ],
)
def test_networkRemoveRefused(acme, args, message):
    """Removing a network not listed, or malformed, gives status 2."""
    refused(acme("network", "remove", *args), message)


# blocklist


def test_blocklist(acme, databaseURL, keyFile):
    """blocklist add blocks a domain and its subdomains; blocklist remove unblocks it."""
    assert acme("blocklist", "add", "acme", "Bad.Example").out == (
        "domain 'bad.example' and its subdomains blocked for tenant 'acme'\n"
    )
    assert "blocklist:       bad.example\n" in acme("tenant", "show", "acme").out
    assert snapshot(databaseURL, keyFile).tenants["acme"].blocklist == {"bad.example"}
    unblocked = acme("blocklist", "remove", "acme", "bad.example")
    assert unblocked.out == "domain 'bad.example' no longer blocked for tenant 'acme'\n"
    assert snapshot(databaseURL, keyFile).tenants["acme"].blocklist == frozenset()


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("add", ["acme", "*.bad.example"], "invalid blocked domain '*.bad.example': bad.example covers its "
                                           "subdomains already"),
        ("add", ["acme", "http://bad.example/"], "invalid blocked domain 'http://bad.example/': expected a domain "
                                                 "name such as example.com"),
        ("add", ["acme", "bad.example"], "domain 'bad.example' already blocked for tenant 'acme'"),
        ("add", ["nope", "bad.example"], "unknown tenant 'nope'"),
        ("remove", ["acme", "good.example"], "tenant 'acme' has no blocked domain 'good.example'"),
    ],
)  # fmt: skip
def test_blocklistRefused(acme, command, args, message):
    """A wildcard, a URL, a duplicate or an unknown blocked domain gives status 2."""
    acme("blocklist", "add", "acme", "bad.example")
    refused(acme("blocklist", command, *args), message)


# domain, login and upstream remove


def test_domainRemove(acme, databaseURL, keyFile):
    """domain remove takes a sender domain away; a second time it is not found."""
    acme("domain", "add", "acme", "*.acme.example")
    assert (
        acme("domain", "remove", "acme", "*.ACME.example").out == "domain '*.acme.example' removed from tenant 'acme'\n"
    )
    assert snapshot(databaseURL, keyFile).tenants["acme"].domains == frozenset()
    refused(acme("domain", "remove", "acme", "*.acme.example"), "tenant 'acme' has no sender domain '*.acme.example'")


def test_loginRemove(acme, databaseURL, keyFile):
    """login remove takes a login away; a second time it is not found."""
    acme("login", "add", "acme", "bob", "--password-stdin", stdin="pw\n")
    assert acme("login", "remove", "acme", "bob").out == "login 'bob' removed from tenant 'acme'\n"
    assert snapshot(databaseURL, keyFile).logins == {}
    refused(acme("login", "remove", "acme", "bob"), "tenant 'acme' has no login 'bob'")


@pytest.mark.parametrize("upstream", ["#2", "2", REDACTED, UPSTREAM])
def test_upstreamRemove(acme, databaseURL, keyFile, upstream):
    """upstream remove takes an upstream away by the #id tenant show gives, or by its URL, redacted or not."""
    acme("upstream", "add", "acme", "smtp://mx.acme.example")
    acme("upstream", "add", "acme", UPSTREAM)
    assert "  #2  priority 10  " + REDACTED in acme("tenant", "show", "acme").out
    result = acme("upstream", "remove", "acme", upstream)
    assert (result.status, result.out) == (0, f"upstream #2 {REDACTED} removed from tenant 'acme'\n")
    [left] = snapshot(databaseURL, keyFile).tenants["acme"].upstreams
    assert left.url.host == "mx.acme.example"


@pytest.mark.parametrize(
    "args, message",
    [
        (["acme", "#7"], "tenant 'acme' has no upstream #7"),
        (["acme", "smtp://relay:s3cret@other.example"], "tenant 'acme' has no upstream smtp://relay:***@other.example"),
        (["acme", UPSTREAM], f"upstreams 1, 2 of tenant 'acme' are {REDACTED}: give the id to remove one"),
        (["nope", "#1"], "unknown tenant 'nope'"),
    ],
)
def test_upstreamRemoveRefused(acme, args, message):
    """An unknown or ambiguous upstream gives status 2, never showing a password."""
    acme("upstream", "add", "acme", UPSTREAM)
    acme("upstream", "add", "acme", UPSTREAM, "--priority", "20")
    result = acme("upstream", "remove", *args)
    refused(result, message)
    assert "s3cret" not in result.err
