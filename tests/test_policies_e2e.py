"""
Policies through a running relay, with real clients: each rule accepts what
it must and refuses what it must with the exact reply, and the upstream
never completes a refused message; the relay is never open; two relays share
one Redis budget.
"""

from __future__ import annotations

import secrets
import smtplib
import time
from base64 import b64encode

import pytest

from relay.core.tenant import Rate
from tests.support.raw import RawClient
from tests.support.redisserver import REDIS, requireRedis
from tests.support.relay import RelayProcess, upstreamURL
from tests.support.upstream import UpstreamServer

MESSAGE = b"From: Alice <alice@example.com>\r\nSubject: policy\r\n\r\nhello\r\n"


@pytest.fixture
def tenant(relay, upstream, tenantName):
    """A tenant of the session relay, with its upstream; settings are changed per test."""
    return relay.addTenant(tenantName, upstreamURL(upstream, ca=str(relay.ca.cert)))


def configure(relay, account, **settings) -> None:
    """Change a tenant's settings, as `smtprelay-admin tenant set` does, and wait for the relay to load them."""
    relay.store.setTenant(account.tenant, **settings)
    relay.waitForGeneration(relay.store.generation())


def session(relay, account) -> smtplib.SMTP:
    return relay.connect(account)


def expectRefused(client: smtplib.SMTP, message: bytes, code: int, text: bytes) -> None:
    assert client.mail("a@example.com")[0] == 250
    assert client.rcpt("b@example.net")[0] == 250
    reply = client.data(message)
    assert reply[0] == code and reply[1].startswith(text), reply


def test_sender_domains(relay, upstream, tenant):
    """MAIL FROM and header From must be the tenant's; subdomains only via *.domain; <> only with bounces."""
    relay.store.addDomain(tenant.tenant, "*.corp.example")
    relay.waitForGeneration(relay.store.generation())
    with session(relay, tenant) as client:
        assert client.mail("a@EXAMPLE.com")[0] == 250
        client.rset()
        assert client.mail("a@sales.corp.example")[0] == 250
        client.rset()
        for refused in ("a@corp.example", "a@evilexample.com", "a@example.com.evil.net", "<>"):
            assert client.mail(refused)[0] == 550, refused
        expectRefused(client, b"From: mallory@evil.net\r\n\r\nx\r\n", 550, b"5.7.1 From header")
    configure(relay, tenant, allowBounces=True)
    with session(relay, tenant) as client:
        assert client.mail("<>")[0] == 250
    assert upstream.messages == []


def test_salesforce_org(relay, upstream, tenant):
    """With an org id, X-SFDC-LK must match it (first 15 characters, case-sensitive)."""
    configure(relay, tenant, orgId="00D000000000062")
    with session(relay, tenant) as client:
        expectRefused(client, MESSAGE, 550, b"5.7.1 Message must carry exactly one X-SFDC-LK")
        expectRefused(client, b"X-SFDC-LK: 00d000000000062EAA\r\n" + MESSAGE, 550, b"5.7.1 X-SFDC-LK does not match")
        assert client.sendmail("a@example.com", ["b@example.net"], b"X-SFDC-LK: 00D000000000062EAA\r\n" + MESSAGE) == {}
    assert len(upstream.waitForMessages(1)) == 1
    assert not any(t.completed for t in upstream.transactions[:-1])


def test_recipients(relay, upstream, tenant):
    """A cap per message (452 4.5.3 beyond it) and no rerouting forms (553 5.1.3)."""
    configure(relay, tenant, maxRecipients=2)
    with session(relay, tenant) as client:
        client.mail("a@example.com")
        assert client.rcpt("b@example.net")[0] == 250
        assert client.rcpt("c@example.net")[0] == 250
        assert client.rcpt("d@example.net") == (452, b"4.5.3 Too many recipients (at most 2 per message)")
        client.rset()
        client.mail("a@example.com")
        for form in ("r%dom@example.net", "dom!r@example.net", '"r@dom"@example.net', "@relay.example:r@dom.example"):
            assert client.docmd("RCPT", f"TO:<{form}>")[0] == 553, form
    assert all(not cmd.startswith("RCPT TO:<r%") for cmd in upstream.commands[-1])


def test_size(relay, upstream, tenant):
    """The tenant's SIZE is advertised after AUTH, refused at MAIL, and enforced while streaming."""
    configure(relay, tenant, maxSize=2000)
    with session(relay, tenant) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "2000"
        assert client.mail("a@example.com", ["SIZE=5000"]) == (552, b"5.3.4 Message size exceeds fixed limit")
        expectRefused(client, MESSAGE + (b"x" * 70 + b"\r\n") * 40, 552, b"5.3.4 Message size exceeds fixed limit")
    assert upstream.messages == []


def test_message_rate(relay, upstream, tenant):
    """Beyond the message rate: 450 4.7.1 at MAIL (nothing lost: the client keeps it)."""
    configure(relay, tenant, rate=Rate.parse("2/1h"))
    with session(relay, tenant) as client:
        for _ in range(2):
            assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
        assert client.mail("a@example.com") == (450, b"4.7.1 Rate limit exceeded for this tenant, try again later")
    assert len(upstream.waitForMessages(2)) == 2


def test_client_networks(relay, tenant):
    """AUTH from outside the tenant's listed networks fails like a wrong password, and is logged as such."""
    relay.store.addNetwork(tenant.tenant, "10.0.0.0/8")
    relay.waitForGeneration(relay.store.generation())
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        session(relay, tenant)
    assert refused.value.smtp_code == 535
    assert f"correct password for {tenant.username} from 127.0.0.1, outside the networks" in relay.log()


def test_url_blocklist(relay, upstream, tenant):
    """A link to a blocklisted domain, even split across reads, refuses the message after the dot."""
    relay.store.addBlockedDomain(tenant.tenant, "evil.example")
    relay.waitForGeneration(relay.store.generation())
    client = RawClient(relay.port, relay.clientContext())
    client.login(tenant.username, tenant.password)
    for command in (b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>", b"DATA"):
        assert client.command(command)[0] in "23"
    client.send(MESSAGE + b"x" * 700 + b"\r\nsee https://www.ev")
    upstream.waitUntil(lambda up: b"x" * 700 in up.receiving, what="the first half relayed")
    client.send(b"il.example/offer\r\n.\r\n")
    assert client.reply().startswith("550 5.7.1 Message content refused")
    client.close()
    assert upstream.messages == []


def test_refusals_counted(relay, tenant):
    """Every refusal increments smtprelay_policy_rejections_total for its policy."""
    import urllib.request

    with session(relay, tenant) as client:
        client.mail("a@evil.example")
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.metricsPort}/metrics", timeout=10) as response:
        assert 'smtprelay_policy_rejections_total{policy="sender-domain"}' in response.read().decode()


NMAP_FORMS = [
    "relaytest@nmap.scanme.org",
    "relaytest%nmap.scanme.org@[127.0.0.1]",
    "relaytest%nmap.scanme.org@example.com",
    '"relaytest@nmap.scanme.org"',
    '"relaytest%nmap.scanme.org"',
    "relaytest@nmap.scanme.org@[127.0.0.1]",
    '"relaytest@nmap.scanme.org"@[127.0.0.1]',
    "relaytest@nmap.scanme.org@example.com",
    "@[127.0.0.1]:relaytest@nmap.scanme.org",
    "@example.com:relaytest@nmap.scanme.org",
    "nmap.scanme.org!relaytest",
    "nmap.scanme.org!relaytest@[127.0.0.1]",
    "nmap.scanme.org!relaytest@example.com",
]
NMAP_SENDERS = ["", "antispam@[127.0.0.1]", "antispam@example.com", "antispam@nmap.scanme.org"]


@pytest.mark.parametrize("tls", [False, True])
def test_never_an_open_relay(relay, upstream, tenant, tls):
    """Unauthenticated, every classic open-relay form (nmap's smtp-open-relay list) is refused."""
    client = RawClient(relay.port, relay.clientContext())
    if tls:
        client.startTLS()
    else:
        client.command(b"EHLO scanner.example")
    commands = [
        line
        for sender in NMAP_SENDERS
        for line in [f"MAIL FROM:<{sender}>"] + [f"RCPT TO:<{form}>" for form in NMAP_FORMS]
    ]
    replies = []
    for line in commands:
        try:
            replies.append(client.command(line.encode()))
        except OSError:  # after too many errors the relay says 421 and closes, on purpose
            break
        if replies[-1].startswith("421") or client.buffer.startswith(b"421"):
            break
    assert replies and all(reply[:3] in ("530", "503", "421") for reply in replies), replies
    assert [reply for reply in replies if reply.startswith("530")][0] == "530 5.7.0 Authentication required"
    assert upstream.commands == [] and upstream.messages == []


def test_authenticated_forms(relay, upstream, tenant):
    """Authenticated, the rerouting forms are still refused (553/501); none reaches the upstream."""
    client = RawClient(relay.port, relay.clientContext())
    client.login(tenant.username, tenant.password)
    assert client.command(b"MAIL FROM:<a@example.com>").startswith("250")
    for form in NMAP_FORMS[1:]:
        assert client.command(f"RCPT TO:<{form}>".encode())[:3] in ("553", "501"), form
    assert not any(cmd.startswith("RCPT") for cmd in upstream.commands[-1])


def test_no_sending_as_another_tenant(relay, upstreamCert, tenantName):
    """A tenant cannot use another tenant's domain, and its mail only ever reaches its own upstream."""
    with UpstreamServer(tls=upstreamCert) as mine, UpstreamServer(tls=upstreamCert) as theirs:
        me = relay.addTenant(tenantName + "a", upstreamURL(mine, ca=str(relay.ca.cert)), domains=("mine.example",))
        relay.addTenant(tenantName + "b", upstreamURL(theirs, ca=str(relay.ca.cert)), domains=("theirs.example",))
        with relay.connect(me) as client:
            assert client.mail("ceo@theirs.example")[0] == 550
            client.rset()
            message = b"From: ceo@theirs.example\r\n\r\nwire the money\r\n"
            client.mail("a@mine.example")
            client.rcpt("b@example.net")
            assert client.data(message)[0] == 550
            assert client.sendmail("a@mine.example", ["b@example.net"], b"From: a@mine.example\r\n\r\nok\r\n") == {}
        assert len(mine.waitForMessages(1)) == 1
        assert theirs.connections == 0 and theirs.messages == []


def test_redis_budget_shared_by_two_relays(ca, upstreamCert, tmp_path):
    """Two relays sharing Redis: a budget of 5 per hour is 5 in total, not 5 each."""
    server = requireRedis()
    seconds, _ = server.time()
    if seconds % 3600 > 3590:  # not across the turn of an hour
        time.sleep(3600 - seconds % 3600 + 1)
    name = "shared" + secrets.token_hex(3)
    relays = [RelayProcess(tmp_path / f"relay{i}", ca, f"--rate-limit-store={REDIS}") for i in range(2)]
    try:
        with UpstreamServer(tls=upstreamCert) as up:
            accounts = []
            for relay in relays:
                accounts.append(relay.addTenant(name, upstreamURL(up, ca=str(ca.cert))))
                relay.store.setTenant(name, rate=Rate.parse("5/1h"))
                relay.waitForGeneration(relay.store.generation())
            replies = []
            for _ in range(4):
                for relay, account in zip(relays, accounts, strict=True):
                    with relay.connect(account) as client:
                        replies.append(client.mail("a@example.com")[0])
            assert sorted(replies) == [250] * 5 + [450] * 3
    finally:
        for relay in relays:
            relay.stop()
        for key in server.scan_iter(f"smtprelay:*{name}*"):
            server.delete(key)


def test_concurrency_cap(relay, upstream, tenant):
    """One message in flight at once: a second session's MAIL is tempfailed until the first ends."""
    configure(relay, tenant, maxConcurrency=1)
    with session(relay, tenant) as first, session(relay, tenant) as second:
        assert first.mail("a@example.com")[0] == 250
        assert second.mail("a@example.com") == (
            450,
            b"4.7.1 Too many messages in flight for this tenant, try again later",
        )
        first.rset()
        assert second.mail("a@example.com")[0] == 250


def admitted(relay: RelayProcess, timeout: float = 10.0) -> RawClient:
    """A connection the relay admits, once it has noticed earlier ones closing (421 until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return RawClient(relay.port, relay.clientContext())
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def test_connection_caps_and_auth_lockout(ca, upstreamCert, tmp_path):
    """Per-address connection cap (421 4.7.0); AUTH failures slow down, then lock the address out."""
    relay = RelayProcess(tmp_path / "relay", ca, "--max-connections-per-ip=2", "--max-auth-failures=3")
    try:
        with UpstreamServer(tls=upstreamCert) as up:
            account = relay.addTenant("caps", upstreamURL(up, ca=str(ca.cert)))
            held = [RawClient(relay.port, relay.clientContext()) for _ in range(2)]
            with pytest.raises(AssertionError, match="421 4.7.0 Too many connections from your address"):
                RawClient(relay.port, relay.clientContext())
            for client in held:
                client.close()
            client = admitted(relay)
            client.startTLS()
            wrong = b"AUTH PLAIN " + b64encode(f"\0{account.username}\0wrong".encode())
            started = time.monotonic()
            assert client.command(wrong).startswith("535 5.7.8")
            assert client.command(wrong).startswith("535 5.7.8")
            assert time.monotonic() - started >= 3  # answered after 1 s, then 2 s
            assert client.command(wrong).startswith("421 4.7.0 Too many authentication")
            with pytest.raises(AssertionError, match="421 4.7.0 Too many authentication failures"):
                RawClient(relay.port, relay.clientContext())
            assert relay.log().count(f"smtprelay auth failed: client=127.0.0.1 user={account.username}") == 3
    finally:
        relay.stop()
