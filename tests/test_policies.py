"""
The built-in policies and connection limits, through the relay protocol in
memory (relay.testing.MemoryClient): exact replies, and a refused message
never completed upstream.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from twisted.internet.testing import MemoryReactorClock

from relay.core.tenant import Network, Rate
from relay.policy.clientnetworks import ClientNetworkPolicy
from relay.policy.ratelimit import RateLimitPolicy
from relay.policy.recipients import RecipientPolicy
from relay.policy.salesforce import SalesforceOrgPolicy
from relay.policy.senders import SenderDomainPolicy
from relay.policy.urlblocklist import URLBlocklistPolicy
from relay.seams.policy import PolicyContext
from relay.testing import ACME, FakeUpstreamType, MemoryClient, fakeServerContext

NAMES = {
    ClientNetworkPolicy: "client-networks",
    RateLimitPolicy: "rate-limit",
    RecipientPolicy: "recipients",
    SalesforceOrgPolicy: "salesforce-org",
    SenderDomainPolicy: "sender-domain",
    URLBlocklistPolicy: "url-blocklist",
}
MESSAGE = b"From: Alice <alice@example.com>\r\nSubject: hi\r\n\r\nhello\r\n"


def client(policy, address="192.0.2.7", **tenant) -> MemoryClient:
    """A client of a relay running one policy for a tenant with these settings."""
    reactor = MemoryReactorClock()
    upstream = FakeUpstreamType()
    made = policy(PolicyContext(reactor=reactor, options={}))
    context = fakeServerContext(reactor, upstream, policies={NAMES[policy]: made}, tenant=replace(ACME, **tenant))
    return MemoryClient(upstream, address=address, context=context)


def refusals(c: MemoryClient) -> dict:
    """policy_rejections_total by policy."""
    samples = c.context.reporter.metrics.policyRejections.collect()[0].samples
    return {s.labels["policy"]: s.value for s in samples if s.name.endswith("_total")}


# -- sender domains -----------------------------------------------------------


@pytest.mark.parametrize(
    "sender, allowed",
    [
        ("a@example.com", True),
        ("a@EXAMPLE.COM", True),
        ("a@sub.example.com", False),
        ("a@evilexample.com", False),
        ("a@example.com.evil.net", False),
        ("a@x.corp.example", True),
        ("a@y.x.corp.example", True),
        ("a@corp.example", False),
        ("<@relay.example:a@example.com", False),
        ('"a@evil.net"@example.com', False),
        ("a@[192.0.2.1]", False),
    ],
)
def test_sender_domain(sender, allowed):
    """MAIL FROM must be in the tenant's domains: exact, or *.domain for subdomains only."""
    c = client(SenderDomainPolicy, domains=frozenset({"example.com", "*.corp.example"}))
    c.login()
    path = sender if sender.startswith("<") else f"<{sender}"
    reply = c.send(f"MAIL FROM:{path}>\r\n".encode())
    if allowed:
        assert reply == ["250 2.1.0 Ok"]
    else:
        assert reply[0].startswith("550 5.7.1 "), reply
        assert refusals(c) == {"sender-domain": 1}


def test_null_sender_only_when_bounces_allowed():
    """The null sender <> is refused unless the tenant allows bounces."""
    c = client(SenderDomainPolicy)
    c.login()
    assert c.send(b"MAIL FROM:<>\r\n") == ["550 5.7.1 Null sender (<>) not allowed for this tenant"]
    c = client(SenderDomainPolicy, allowBounces=True)
    c.login()
    assert c.send(b"MAIL FROM:<>\r\n") == ["250 2.1.0 Ok"]


@pytest.mark.parametrize(
    "header",
    [
        b"From: mallory@evil.net\r\n",
        b"From: alice@example.com, mallory@evil.net\r\n",
        b"From: alice@example.com <mallory@evil.net>\r\n",
        b"From: alice@example.com\r\nFrom: alice@example.com\r\n",
        b"Subject: no from\r\n",
        b'From: "x@y" <mallory@evil.net>\r\n',
    ],
)
def test_header_from_refused(header):
    """A header From outside the tenant's domains (or missing, doubled, ambiguous) is refused; nothing delivered."""
    c = client(SenderDomainPolicy)
    c.login()
    lines = c.relay("a@example.com", ["b@example.net"], header + b"\r\nbody\r\n")
    assert lines[-1].startswith("550 5.7.1 "), lines
    assert c.upstream.delivered == []
    assert c.upstream.sessions[0].calls[-1] == "ABORT"


def test_header_from_allowed():
    """Authors in the tenant's domains pass, display names and comments included."""
    c = client(SenderDomainPolicy)
    c.login()
    header = b'From: "Smith, Alice" <alice@example.com>, bob@example.com (Bob)\r\n'
    assert c.relay("a@example.com", ["b@example.net"], header + b"\r\nbody\r\n")[-1].startswith("250 ")
    assert len(c.upstream.delivered) == 1


# -- Salesforce org -------------------------------------------------------------

ORG = "00D000000000062EAA"


@pytest.mark.parametrize(
    "header, ok",
    [
        (b"X-SFDC-LK: 00D000000000062EAA\r\n", True),
        (b"X-SFDC-LK: 00D000000000062\r\n", True),
        (b"X-SFDC-LK: 00d000000000062EAA\r\n", False),
        (b"X-SFDC-LK: 00D000000000063\r\n", False),
        (b"", False),
        (b"X-SFDC-LK: 00D000000000062\r\nX-SFDC-LK: 00D000000000062\r\n", False),
    ],
)
def test_salesforce_org(header, ok):
    """X-SFDC-LK must carry the tenant's org id (first 15 characters, case-sensitive)."""
    c = client(SalesforceOrgPolicy, orgId=ORG)
    c.login()
    lines = c.relay("a@example.com", ["b@example.net"], header + MESSAGE)
    if ok:
        assert lines[-1].startswith("250 "), lines
    else:
        assert lines[-1].startswith("550 5.7.1 "), lines
        assert c.upstream.delivered == [] and "END" not in c.upstream.sessions[0].calls


def test_no_org_no_check():
    """A tenant without an org id is not checked."""
    c = client(SalesforceOrgPolicy)
    c.login()
    assert c.relay("a@example.com", ["b@example.net"], MESSAGE)[-1].startswith("250 ")


# -- recipients --------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipient",
    ["r%dom@example.net", "dom!r@example.net", '"r@dom"@example.net', "@example.org:r@dom.example", "r@[127.0.0.1]"],
)
def test_reinterpretable_recipients(recipient):
    """Forms an upstream could reroute are refused with 553 5.1.3 and never reach the upstream."""
    c = client(RecipientPolicy)
    c.login()
    c.send(b"MAIL FROM:<a@example.com>\r\n")
    assert c.send(f"RCPT TO:<{recipient}>\r\n".encode())[0].startswith("553 5.1.3 ")
    assert "RCPT" not in c.upstream.sessions[0].calls


def test_recipient_cap():
    """Beyond the per-message cap: 452 4.5.3, the others relayed."""
    c = client(RecipientPolicy, maxRecipients=2)
    c.login()
    lines = c.relay("a@example.com", ["b@example.net", "c@example.net", "d@example.net"], MESSAGE)
    assert lines[1:4] == ["250 2.1.5 Ok", "250 2.1.5 Ok", "452 4.5.3 Too many recipients (at most 2 per message)"]
    assert c.upstream.delivered[0].recipients == ["b@example.net", "c@example.net"]


# -- size --------------------------------------------------------------------------


def test_tenant_size_limit():
    """The tenant's SIZE is advertised after AUTH, enforced at MAIL and while streaming."""
    c = MemoryClient(tenant=replace(ACME, maxSize=1000))
    c.login()
    assert "250-SIZE 1000" in c.send(b"EHLO again\r\n")
    assert c.send(b"MAIL FROM:<a@example.com> SIZE=1001\r\n") == ["552 5.3.4 Message size exceeds fixed limit"]
    lines = c.relay("a@example.com", ["b@example.net"], b"Subject: big\r\n\r\n" + b"x" * 990 + b"\r\n")
    assert lines[-1].startswith("552 5.3.4 Message size exceeds fixed limit")
    assert c.upstream.delivered == []


# -- rate limits ----------------------------------------------------------------------


def test_message_rate():
    """A budget of 2 messages a minute: the third is tempfailed (450 4.7.1) until the next minute."""
    c = client(RateLimitPolicy, rate=Rate.parse("2/1m"))
    c.reactor.advance(60 - c.reactor.seconds() % 60)
    c.login()
    for _ in range(2):
        assert c.relay("a@example.com", ["b@example.net"], MESSAGE)[-1].startswith("250 ")
    assert c.send(b"MAIL FROM:<a@example.com>\r\n") == [
        "450 4.7.1 Rate limit exceeded for this tenant, try again later"
    ]
    c.reactor.advance(60)
    assert c.relay("a@example.com", ["b@example.net"], MESSAGE)[-1].startswith("250 ")


def test_recipient_rate():
    """A budget of 3 recipients an hour, counted across messages."""
    c = client(RateLimitPolicy, rateRecipients=Rate.parse("3/1h"))
    c.login()
    lines = c.relay("a@example.com", ["b@example.net", "c@example.net"], MESSAGE)
    assert lines[-1].startswith("250 ")
    lines = c.relay("a@example.com", ["d@example.net", "e@example.net"], MESSAGE)
    assert lines[1:3] == ["250 2.1.5 Ok", "450 4.7.1 Recipient rate limit exceeded for this tenant, try again later"]


def test_concurrency_cap():
    """One message in flight at once: a second client's MAIL is tempfailed until the first ends."""
    first = client(RateLimitPolicy, maxConcurrency=1)
    second = MemoryClient(context=first.context, upstream=first.upstream)
    first.login()
    second.login()
    assert first.send(b"MAIL FROM:<a@example.com>\r\n") == ["250 2.1.0 Ok"]
    assert second.send(b"MAIL FROM:<a@example.com>\r\n")[0].startswith("450 4.7.1 Too many messages in flight")
    first.send(b"RSET\r\n")
    assert second.send(b"MAIL FROM:<a@example.com>\r\n") == ["250 2.1.0 Ok"]


# -- client networks ----------------------------------------------------------------


def test_auth_only_from_listed_networks():
    """With networks listed, a correct password from elsewhere fails like a wrong one."""
    networks = (Network(ipaddress.ip_network("10.0.0.0/8")),)
    inside = client(ClientNetworkPolicy, address="10.1.2.3", networks=networks)
    inside.login()
    outside = client(ClientNetworkPolicy, address="192.0.2.7", networks=networks)
    outside.send(b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
    outside.reactor.advance(1)
    assert outside.read()[-1] == "535 5.7.8 Authentication credentials invalid"


def test_no_auth_network():
    """A client in the tenant's --no-auth network sends without AUTH; others still need it."""
    networks = (Network(ipaddress.ip_network("192.0.2.0/24"), noAuth=True),)
    tenant = replace(ACME, networks=networks)
    inside = MemoryClient(address="192.0.2.9", tenant=tenant)
    inside.send(b"EHLO c\r\n")
    assert inside.relay("a@example.com", ["b@example.net"], MESSAGE)[-1].startswith("250 ")
    outside = MemoryClient(address="198.51.100.1", context=inside.context, upstream=inside.upstream)
    assert outside.send(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\n")[-1] == "530 5.7.0 Authentication required"


# -- connection level -------------------------------------------------------------------


def test_connections_per_address():
    """Beyond the per-address cap a connection gets 421 4.7.0 and is closed."""
    first = MemoryClient()
    clients = [first] + [MemoryClient(context=first.context) for _ in range(9)]
    assert all(c.greeting[0].startswith("220 ") for c in clients)
    extra = MemoryClient(context=first.context)
    assert extra.greeting == ["421 4.7.0 Too many connections from your address, try again later"]
    assert extra.transport.disconnecting
    clients[0].protocol.connectionLost(None)
    assert MemoryClient(context=first.context).greeting[0].startswith("220 ")


def test_auth_failures_slow_down_then_lock_out():
    """AUTH failures are answered after 1, 2, 4, 8 s; the fifth gets 421 and the address is locked out."""
    c = MemoryClient()
    c.send(b"EHLO c\r\n")
    for delay in (1, 2, 4, 8):
        assert c.send(b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n") == []
        c.reactor.advance(delay - 0.01)
        assert c.read() == []
        c.reactor.advance(0.01)
        assert c.read() == ["535 5.7.8 Authentication credentials invalid"]
    assert c.send(b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n") == [
        "421 4.7.0 Too many authentication failures from your address, try again later"
    ]
    assert MemoryClient(context=c.context).greeting[0].startswith("421 4.7.0 Too many authentication failures")


def test_too_many_errors():
    """After 20 refused or unknown commands the session is closed with 421."""
    c = MemoryClient()
    lines = c.send(b"EHLO c\r\n" + b"BOGUS\r\n" * 25)
    assert lines[-2:] == [
        "500 5.5.2 Error: command not recognized",
        "421 4.7.0 Error: too many errors, closing connection",
    ]
    assert c.transport.disconnecting


# -- URL blocklist (streaming) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body, refused",
    [
        (b"see https://evil.example/x\r\n", True),
        (b"see http://www.Evil.Example:8080/\r\n", True),
        (b"see www.evil.example\r\n", True),
        (b"see https://user@sub.evil.example/\r\n", True),
        (b"see https://notevil.example/\r\n", False),
        (b"see https://evil.example.org/\r\n", False),
        (b"soft break: https://ev=\r\nil.example/\r\n", True),
    ],
)
def test_url_blocklist(body, refused):
    """Links to a blocklisted domain (or its subdomains) are refused after the dot; nothing delivered."""
    c = client(URLBlocklistPolicy, blocklist=frozenset({"evil.example"}))
    c.login()
    lines = c.relay("a@example.com", ["b@example.net"], MESSAGE + body)
    assert lines[-1].startswith("550 5.7.1 ") == refused, lines
    assert bool(c.upstream.delivered) != refused


def test_url_split_across_chunks():
    """A URL split between two reads is still found, and the body is never held whole."""
    c = client(URLBlocklistPolicy, blocklist=frozenset({"evil.example"}))
    c.login()
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    c.send(MESSAGE + b"x" * 500 + b"\r\nvisit https://ev")
    c.send(b"il.example/now\r\n" + b"y" * 500 + b"\r\n")
    assert c.send(b".\r\n")[-1].startswith("550 5.7.1 ")
    assert c.upstream.delivered == []
