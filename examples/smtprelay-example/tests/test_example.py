"""
How to test a plugin: drive the relay protocol in memory with
relay.testing.MemoryClient (no sockets, no threads, time under your
control), and check what the fake upstream received.
"""

from __future__ import annotations

import os

import pytest
from smtprelay_example.pipe import PipeUpstreamType
from smtprelay_example.subjects import SubjectFilterPolicy
from twisted.internet.testing import MemoryReactorClock

from relay.plugin import PolicyContext, UpstreamURL
from relay.testing import FakeUpstreamType, MemoryClient, fakeServerContext


def relayWithPolicy() -> MemoryClient:
    reactor = MemoryReactorClock()
    upstream = FakeUpstreamType()
    policy = SubjectFilterPolicy(PolicyContext(reactor=reactor, options={}))
    return MemoryClient(upstream, context=fakeServerContext(reactor, upstream, policies={"subject-filter": policy}))


def message(subject: str) -> bytes:
    return f"From: a@example.com\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()


def test_ordinary_subject_relayed():
    """A message with an ordinary subject reaches the upstream."""
    client = relayWithPolicy()
    client.login()
    assert client.relay("a@example.com", ["b@example.net"], message("hello"))[-1].startswith("250 ")
    assert len(client.upstream.delivered) == 1


def test_blocked_subject_refused():
    """[BLOCK] subjects are refused with 550 and never completed upstream."""
    client = relayWithPolicy()
    client.login()
    assert client.relay("a@example.com", ["b@example.net"], message("[BLOCK] x"))[-1].startswith("550 5.7.1 ")
    assert client.upstream.delivered == []


def test_later_subject_tempfailed_asynchronously():
    """[LATER] is decided by a Deferred: the reply waits for it, then tempfails."""
    client = relayWithPolicy()
    client.login()
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    assert client.send(message("[LATER] x") + b".\r\n") == []
    client.reactor.advance(0.01)
    assert client.read()[-1].startswith("451 4.7.1 Subject held")


@pytest.mark.parametrize(
    "url, problem",
    [("pipe://host/bin/cat", "absolute program path"), ("pipe:///bin/cat?x=1", "only pipe option"),
     ("pipe:///nonexistent/program", "not an executable")],
)  # fmt: skip
def test_pipe_urls_validated(url, problem):
    """Bad pipe URLs are refused with a reason the operator can act on."""
    with pytest.raises(ValueError, match=problem):
        PipeUpstreamType().validate(UpstreamURL.parse(url))


def test_pipe_url_accepted():
    """An executable program is a valid pipe upstream."""
    assert PipeUpstreamType().validate(UpstreamURL.parse(f"pipe://{os.path.realpath('/bin/cat')}")) is None
