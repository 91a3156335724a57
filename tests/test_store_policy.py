"""
Tests for the policy settings of L{relay.store.repository.Store}: limits,
rates, status, client networks, the blocklist, and removing what was added.
"""

from __future__ import annotations

import ipaddress
import re
import threading

import pytest
from sqlalchemy import text

from relay.core.tenant import Network, Rate
from relay.store.errors import Conflict, Invalid, NotFound
from relay.store.repository import Store
from relay.store.values import NetworkInfo, UpstreamInfo
from tests.storefixtures import acceptAll, acme, databaseURL, engine, freshEngine, keyRing, postgresqlDatabase, store  # noqa: F401  # noqa: F401

SECRET = "s3cret"


@pytest.fixture
def globex(acme):
    """The store with the tenants acme and globex."""
    acme.addTenant("globex", "ops@globex.example", "Globex")
    return acme


# setTenant


def test_setTenant(acme):
    """Settings given change, the others stay; the relay's snapshot has them."""
    changed = acme.setTenant(
        "acme",
        maxSize=10_000_000,
        maxRecipients=50,
        rate=Rate.parse("100/1m"),
        rateRecipients=Rate.parse("10000/1d"),
        maxConcurrency=4,
        allowBounces=True,
        orgId="00D000000000062",
        email="Billing@Acme.Example",
        company="Acme Group",
    )
    assert (changed.maxSize, changed.maxRecipients, changed.maxConcurrency, changed.allowBounces) == (
        10_000_000, 50, 4, True
    )  # fmt: skip
    assert (str(changed.rate), str(changed.rateRecipients)) == ("100/1m", "10000/1d")
    assert (changed.orgId, changed.email, changed.company) == (
        "00D000000000062EAA",
        "Billing@acme.example",
        "Acme Group",
    )
    assert acme.showTenant("acme") == changed
    tenant = acme.loadSnapshot().tenants["acme"]
    assert (tenant.maxSize, tenant.maxRecipients, tenant.maxConcurrency, tenant.allowBounces) == (
        10_000_000,
        50,
        4,
        True,
    )
    assert (tenant.rate, tenant.rateRecipients) == (Rate(100, 60), Rate(10000, 86400))
    assert acme.setTenant("acme", maxRecipients=7).maxSize == 10_000_000


def test_setTenantClears(acme):
    """None clears a limit, a rate and the org id."""
    acme.setTenant("acme", maxSize=1000, rate=Rate(5, 1), orgId="00D000000000062", maxConcurrency=2)
    cleared = acme.setTenant("acme", maxSize=None, rate=None, orgId=None, maxConcurrency=None)
    assert (cleared.maxSize, cleared.rate, cleared.orgId, cleared.maxConcurrency) == (None, None, None, None)
    assert acme.loadSnapshot().tenants["acme"].rate is None


def test_setTenantCountsOnce(acme):
    """One setTenant is one change: the generation goes up by one; a refused one changes nothing."""
    before = acme.generation()
    acme.setTenant("acme", maxSize=1000, rate=Rate(5, 1))
    with pytest.raises(Invalid):
        acme.setTenant("acme", maxSize=2000, maxRecipients=0)
    assert (acme.generation(), acme.showTenant("acme").maxSize) == (before + 1, 1000)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({}, "^nothing to change$"),
        ({"maxSize": 0}, "^invalid maximum message size 0: expected 1 to 9223372036854775807, or none$"),
        ({"maxRecipients": -3}, "^invalid maximum recipients -3: expected 1 to 2147483647, or none$"),
        ({"maxConcurrency": 2**31}, "^invalid maximum concurrency 2147483648"),
        ({"rate": Rate(0, 60)}, "^invalid rate 0/1m: expected 1 to 2147483647 per period"),
        ({"rateRecipients": Rate(5, 2**31)}, "^invalid recipient rate 5/"),
        ({"allowBounces": "yes"}, "^invalid bounce setting 'yes': expected yes or no$"),
        ({"status": "paused"}, "^invalid status 'paused': expected active or suspended$"),
        ({"email": "nobody"}, "^invalid e-mail address 'nobody'"),
        ({"company": " "}, "^invalid company name"),
        ({"orgId": "123"}, "^invalid org id '123'"),
    ],
)
def test_setTenantInvalid(acme, changes, message):
    """Bad settings are invalid input, and nothing changes."""
    before = acme.showTenant("acme")
    with pytest.raises(Invalid, match=message):
        acme.setTenant("acme", **changes)
    assert acme.showTenant("acme") == before


def test_setTenantUnknownSetting(acme):
    """An unknown keyword is a programming error."""
    with pytest.raises(TypeError, match="unknown tenant settings: colour"):
        acme.setTenant("acme", colour="red")


def test_setTenantUnknownTenant(store):
    """Setting an unknown tenant names it."""
    with pytest.raises(NotFound, match="^unknown tenant 'nope'$"):
        store.setTenant("nope", maxSize=5)


def test_suspendResume(acme):
    """A suspended tenant is inactive in the snapshot until it is active again."""
    assert acme.setTenant("acme", status="suspended").status == "suspended"
    assert not acme.loadSnapshot().tenants["acme"].active
    acme.setTenant("acme", status="active")
    assert acme.loadSnapshot().tenants["acme"].active


# Client networks


def test_addNetwork(acme):
    """Networks are kept normalised; an address alone is its /32 or /128; the snapshot has them."""
    assert acme.addNetwork("acme", " 2001:DB8:0::/48 ", noAuth=True) == NetworkInfo(
        network="2001:db8::/48", noAuth=True
    )
    acme.addNetwork("acme", "192.0.2.7")
    assert acme.showTenant("acme").networks == (
        NetworkInfo(network="192.0.2.7/32", noAuth=False),
        NetworkInfo(network="2001:db8::/48", noAuth=True),
    )
    assert set(acme.loadSnapshot().tenants["acme"].networks) == {
        Network(ipaddress.ip_network("192.0.2.7/32"), noAuth=False),
        Network(ipaddress.ip_network("2001:db8::/48"), noAuth=True),
    }


@pytest.mark.parametrize(
    "network, message",
    [
        ("192.0.2.1/24", r"^invalid network '192.0.2.1/24': it has host bits set; did you mean 192.0.2.0/24\?$"),
        ("2001:db8::1/48", r"did you mean 2001:db8::/48\?$"),
        ("192.0.2.0/33", "^invalid network '192.0.2.0/33': expected CIDR such as 192.0.2.0/24 or 2001:db8::/48$"),
        ("example.com", "^invalid network 'example.com'"),
        ("", "^invalid network ''"),
        ("::ffff:10.0.0.0/112", r"IPv4 clients are listed as IPv4 networks; did you mean 10.0.0.0/16\?$"),
        ("::ffff:192.0.2.1", r"did you mean 192.0.2.1/32\?$"),
    ],
)
def test_addNetworkInvalid(acme, network, message):
    """A malformed network, or one with host bits set, is refused saying what was meant."""
    with pytest.raises(Invalid, match=message):
        acme.addNetwork("acme", network)


@pytest.mark.parametrize("network", ["10.1.0.0/16", "0.0.0.0/0", "2001:db8::/48", "2001:db8:1:2::/64"])
def test_noAuthWidthAllowed(acme, network):
    """A no-auth network up to /16 (IPv4) or /48 (IPv6) is accepted; a plain one of any width."""
    acme.addNetwork("acme", network, noAuth=ipaddress.ip_network(network).prefixlen > 0)


@pytest.mark.parametrize(
    "network, widest", [("10.0.0.0/15", 16), ("0.0.0.0/0", 16), ("2001:db8::/47", 48), ("::/0", 48)]
)
def test_noAuthTooWide(acme, network, widest):
    """A no-auth network wider than /16 (IPv4) or /48 (IPv6) is refused."""
    with pytest.raises(Invalid, match=f"^no-auth network {network} is wider than /{widest}: "):
        acme.addNetwork("acme", network, noAuth=True)


@pytest.mark.parametrize(
    "first, firstNoAuth, second, secondNoAuth, message",
    [
        (
            "192.0.2.0/24",
            False,
            "192.0.2.128/25",
            True,
            "no-auth network 192.0.2.128/25 overlaps network 192.0.2.0/24 ",
        ),
        (
            "192.0.2.128/25",
            True,
            "192.0.2.0/24",
            False,
            "network 192.0.2.0/24 overlaps no-auth network 192.0.2.128/25 ",
        ),
        ("192.0.2.0/24", True, "192.0.2.0/24", True, "no-auth network 192.0.2.0/24 overlaps no-auth network "),
        ("2001:db8::/48", False, "2001:db8:0:1::/64", True, "overlaps network 2001:db8::/48 of tenant 'acme'"),
        ("2001:db8:0:1::/64", True, "2001:db8::/48", False, "overlaps no-auth network 2001:db8:0:1::/64 "),
    ],
)
def test_noAuthOverlapRefused(globex, first, firstNoAuth, second, secondNoAuth, message):
    """A no-auth network overlapping another tenant's network, or any overlapping another's no-auth one, is refused."""
    globex.addNetwork("acme", first, noAuth=firstNoAuth)
    with pytest.raises(Conflict, match=message):
        globex.addNetwork("globex", second, noAuth=secondNoAuth)
    assert globex.showTenant("globex").networks == ()


def test_overlapAllowed(globex):
    """Plain networks of two tenants may overlap; a tenant's own networks may overlap whatever their kind."""
    globex.addNetwork("acme", "198.51.100.0/24")
    globex.addNetwork("globex", "198.51.100.0/24")
    globex.addNetwork("acme", "192.0.2.0/24", noAuth=True)
    globex.addNetwork("acme", "192.0.2.0/25")
    globex.addNetwork("acme", "192.0.2.0/26", noAuth=True)
    globex.addNetwork("globex", "10.0.0.0/16", noAuth=True)
    globex.addNetwork("acme", "10.1.0.0/16", noAuth=True)
    assert len(globex.showTenant("acme").networks) == 5


def test_noAuthIPv4Mapped(acme):
    """A no-auth IPv6 network covering the IPv4-mapped range would cover every IPv4 client: refused."""
    with pytest.raises(Invalid, match="^no-auth network ::/48 covers the IPv4-mapped addresses ::ffff:0:0/96"):
        acme.addNetwork("acme", "::/48", noAuth=True)
    acme.addNetwork("acme", "::/48")


def test_addNetworkDuplicate(acme):
    """A network the tenant has, no-auth or not, is a conflict."""
    acme.addNetwork("acme", "192.0.2.0/24")
    with pytest.raises(Conflict, match="^network 192.0.2.0/24 already listed for tenant 'acme'$"):
        acme.addNetwork("acme", "192.0.2.0/24", noAuth=True)


def test_noAuthOverlapRace(globex, engine, keyRing):
    """Two tenants adding overlapping no-auth networks at once: exactly one succeeds, every time."""
    stores = [Store(engine, keyRing) for _ in range(2)]
    for attempt in range(5):
        network = f"10.{attempt}.0.0/16"
        barrier = threading.Barrier(2)
        outcomes: list[object] = []

        def add(store: Store, tenant: str, network=network, barrier=barrier, outcomes=outcomes) -> None:
            barrier.wait()
            try:
                outcomes.append(store.addNetwork(tenant, network, noAuth=True))
            except Conflict as e:
                outcomes.append(e)

        threads = [threading.Thread(target=add, args=pair) for pair in zip(stores, ["acme", "globex"], strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(type(outcome).__name__ for outcome in outcomes) == ["Conflict", "NetworkInfo"]


def test_removeNetwork(acme):
    """A network is removed by its CIDR in any spelling; one not listed is not found."""
    acme.addNetwork("acme", "2001:db8::/48")
    assert acme.removeNetwork("acme", "2001:DB8:0::/48") == "2001:db8::/48"
    assert acme.showTenant("acme").networks == ()
    with pytest.raises(NotFound, match="^tenant 'acme' has no network '2001:db8::/48'$"):
        acme.removeNetwork("acme", "2001:db8::/48")


def test_damagedNetworkSuspends(acme, engine):
    """A tenant whose network cannot be read is loaded suspended (not open to all), and it is reported."""
    acme.addNetwork("acme", "192.0.2.0/24")
    with engine.begin() as connection:
        connection.execute(text("UPDATE client_networks SET network = 'garbage'"))
    snapshot = acme.loadSnapshot()
    assert (snapshot.tenants["acme"].active, snapshot.tenants["acme"].networks) == (False, ())
    [problem] = snapshot.problems
    assert problem.startswith("tenant 'acme': suspended: network 1 cannot be read: ")


# The blocklist


def test_blocklist(acme):
    """Blocked domains are kept lower case and reach the snapshot; they can be removed."""
    assert acme.addBlockedDomain("acme", " Bad.Example ") == "bad.example"
    acme.addBlockedDomain("acme", "worse.example")
    assert acme.showTenant("acme").blocklist == ("bad.example", "worse.example")
    assert acme.loadSnapshot().tenants["acme"].blocklist == {"bad.example", "worse.example"}
    assert acme.removeBlockedDomain("acme", "BAD.example") == "bad.example"
    assert acme.showTenant("acme").blocklist == ("worse.example",)


@pytest.mark.parametrize(
    "domain, message",
    [
        ("*.bad.example", "^invalid blocked domain '\\*.bad.example': bad.example covers its subdomains already$"),
        ("*", "^invalid blocked domain '\\*': expected a domain name such as example.com$"),
        ("192.0.2.1", "^invalid blocked domain '192.0.2.1'"),
        ("localhost", "^invalid blocked domain 'localhost'"),
    ],
)
def test_blocklistInvalid(acme, domain, message):
    """A blocked domain is a host name: no wildcard (subdomains are covered), no address."""
    with pytest.raises(Invalid, match=message):
        acme.addBlockedDomain("acme", domain)


def test_blocklistDuplicate(acme):
    """A domain blocked already is a conflict; one not blocked cannot be removed."""
    acme.addBlockedDomain("acme", "bad.example")
    with pytest.raises(Conflict, match="^domain 'bad.example' already blocked for tenant 'acme'$"):
        acme.addBlockedDomain("acme", "BAD.example")
    with pytest.raises(NotFound, match="^tenant 'acme' has no blocked domain 'good.example'$"):
        acme.removeBlockedDomain("acme", "good.example")


def test_blocklistApartFromDomains(acme):
    """A tenant may block a domain it may also send from: the two lists are apart."""
    acme.addDomain("acme", "acme.example")
    acme.addBlockedDomain("acme", "acme.example")
    acme.removeDomain("acme", "acme.example")
    assert (acme.showTenant("acme").domains, acme.showTenant("acme").blocklist) == ((), ("acme.example",))


# Removing


def test_removeDomain(acme):
    """A sender domain is removed in any case; one not allowed is not found."""
    acme.addDomain("acme", "*.acme.example")
    assert acme.removeDomain("acme", "*.ACME.example") == "*.acme.example"
    with pytest.raises(NotFound, match=r"^tenant 'acme' has no sender domain '\*.acme.example'$"):
        acme.removeDomain("acme", "*.acme.example")
    with pytest.raises(Invalid, match="invalid sender domain"):
        acme.removeDomain("acme", "*")


def test_removeLogin(globex):
    """A login is removed from its tenant only; the snapshot no longer has it."""
    globex.addLogin("acme", "bob", "pw")
    with pytest.raises(NotFound, match="^tenant 'globex' has no login 'bob'$"):
        globex.removeLogin("globex", "bob")
    before = globex.generation()
    globex.removeLogin("acme", "bob")
    assert (globex.loadSnapshot().logins, globex.generation()) == ({}, before + 1)


UPSTREAM = f"smtp+starttls://relay:{SECRET}@mail.acme.example:587"
REDACTED = "smtp+starttls://relay:***@mail.acme.example:587"
QUOTED = re.escape(REDACTED)


@pytest.mark.parametrize("name", ["2", "#2", UPSTREAM, REDACTED, "smtp+starttls://relay@mail.acme.example:587"])
def test_removeUpstream(acme, name):
    """An upstream is removed by its id (#2 or 2) or its URL with its password, *** or none."""
    acme.addUpstream("acme", "smtp://mx.acme.example", validate=acceptAll)
    acme.addUpstream("acme", UPSTREAM, priority=20, validate=acceptAll)
    assert acme.removeUpstream("acme", name) == UpstreamInfo(id=2, url=REDACTED, priority=20)
    assert [upstream.url for upstream in acme.showTenant("acme").upstreams] == ["smtp://mx.acme.example"]


def test_removeUpstreamRefused(globex):
    """Unknown, ambiguous, another tenant's or malformed upstreams are refused without showing a password."""
    globex.addUpstream("acme", UPSTREAM, validate=acceptAll)
    globex.addUpstream("acme", UPSTREAM, priority=20, validate=acceptAll)
    with pytest.raises(Invalid, match=f"^upstreams 1, 2 of tenant 'acme' are {QUOTED}: give the id") as ambiguous:
        globex.removeUpstream("acme", UPSTREAM)
    with pytest.raises(NotFound, match=f"^tenant 'globex' has no upstream {QUOTED}$") as other:
        globex.removeUpstream("globex", UPSTREAM)
    with pytest.raises(NotFound, match="^tenant 'globex' has no upstream #1$"):
        globex.removeUpstream("globex", "1")
    with pytest.raises(Invalid, match="^not an upstream URL"):
        globex.removeUpstream("acme", "mail.acme.example")
    assert SECRET not in str(ambiguous.value) + str(other.value)
    assert len(globex.showTenant("acme").upstreams) == 2


def test_removeUnknownTenant(store):
    """Removing from an unknown tenant names it."""
    with pytest.raises(NotFound, match="^unknown tenant 'nope'$"):
        store.removeLogin("nope", "bob")
