"""
The plugin guide tried as a new plugin author would: an upstream type and a
policy written from docs/plugins.md alone (tests/guidetrial/) work the
first time, and a session that clears its state only in reset(), as the
guide says, relays two messages on one connection with separate envelopes.
"""

import pytest
from twisted.internet.testing import MemoryReactorClock

from relay.plugin import PolicyContext, UpstreamURL
from relay.testing import FakeUpstreamType, MemoryClient, checkSession, fakeServerContext, tenantWith
from tests.guidetrial.memq import QUEUES, MemqUpstreamType
from tests.guidetrial.nofriday import NoFridayPolicy


@pytest.fixture(autouse=True)
def emptyQueues():
    QUEUES.clear()
    yield
    QUEUES.clear()


def message(subject: str, body: str = "hello") -> bytes:
    return f"From: a@example.com\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode()


def memqClient() -> MemoryClient:
    return MemoryClient(MemqUpstreamType(), tenant=tenantWith("memq://orders"))


def test_conformance_first_open():
    """c. A non-conforming session would be answered '451 4.4.1 No upstream available'."""
    client = memqClient()
    client.login()
    assert client.relay("a@example.com", ["b@example.net"], message("hi"))[-1].startswith("250 ")
    assert len(client.upstream.sessions) == 1 and len(QUEUES["orders"]) == 1
    checkSession(client.upstream.sessions[0])  # what the relay checked when it opened it


def test_two_messages_one_session_separate_envelopes():
    """a. Two messages on one connection reuse one session yet keep separate envelopes."""
    client = memqClient()
    client.login()
    first, second = message("first", "body one"), message("second", "body two")
    assert client.relay("a@example.com", ["b@example.net", "c@example.net"], first)[-1].startswith("250 ")
    assert client.relay("d@example.com", ["e@example.net"], second)[-1].startswith("250 ")
    assert len(client.upstream.sessions) == 1, "the second message should reuse the session"
    one, two = QUEUES["orders"]
    assert (one.sender, one.recipients) == ("a@example.com", ["b@example.net", "c@example.net"])
    assert (two.sender, two.recipients) == ("d@example.com", ["e@example.net"])
    assert first in one.data and b"second" not in one.data
    assert second in two.data and b"first" not in two.data and two.data.count(b"Received:") == 1


def relayWithNoFriday() -> MemoryClient:
    reactor, upstream = MemoryReactorClock(), FakeUpstreamType()
    policy = NoFridayPolicy(PolicyContext(reactor=reactor, options={}))
    return MemoryClient(upstream, context=fakeServerContext(reactor, upstream, policies={"no-friday": policy}))


def test_no_friday_refuses_friday_and_counts_it():
    """b. A Friday subject is refused (550 5.7.1) and counted under 'no-friday'; another passes."""
    client = relayWithNoFriday()
    client.login()
    assert client.relay("a@example.com", ["b@example.net"], message("See you Friday"))[-1].startswith("550 5.7.1 ")
    assert client.upstream.delivered == [] and client.refusals()["no-friday"] == 1
    assert client.relay("a@example.com", ["b@example.net"], message("See you Monday"))[-1].startswith("250 ")
    assert len(client.upstream.delivered) == 1 and client.refusals()["no-friday"] == 1


def test_memq_urls_validated():
    MemqUpstreamType().validate(UpstreamURL.parse("memq://orders"))
    with pytest.raises(ValueError, match="names its queue"):
        MemqUpstreamType().validate(UpstreamURL.parse("memq:///x"))
