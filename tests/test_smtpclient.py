"""
Our SMTP client, in memory: dot-stuffing however the message is cut,
replies matched to commands in order, STARTTLS injection discarded,
timeouts.
"""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from relay.core.reply import Reply
from relay.seams.upstream import UpstreamError
from relay.upstreams.smtpclient import SMTPClientProtocol, SMTPSession


def connected(timeout: float = 30.0):
    clock = MemoryReactorClock()
    protocol = SMTPClientProtocol(clock, timeout)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return clock, protocol, transport


def result(d):
    """What the Deferred fired with so far (None if not yet), leaving it as it was."""
    results = []
    d.addBoth(lambda r: results.append(r) or r)
    if results and hasattr(results[0], "check"):
        d.addErrback(lambda f: None)  # looked at: not an unhandled error
    return results[0] if results else None


MESSAGE = b"Subject: x\r\n\r\n.leading\r\n..two\r\nmid.dle\r\n.\r\nend\r\n"
STUFFED = b"Subject: x\r\n\r\n..leading\r\n...two\r\nmid.dle\r\n..\r\nend\r\n"


@pytest.mark.parametrize("cut", range(len(MESSAGE) + 1))
def test_dot_stuffing_at_every_boundary(cut):
    """However the message is split into writes, the wire carries it correctly stuffed, then the dot."""
    clock, protocol, transport = connected()
    session = SMTPSession(protocol, {})
    session.data()
    transport.clear()
    session.write(MESSAGE[:cut])
    session.write(MESSAGE[cut:])
    session.end()
    assert transport.value() == STUFFED + b".\r\n"


def test_message_starting_with_a_dot():
    """The very first line of a message is at a line start too."""
    clock, protocol, transport = connected()
    session = SMTPSession(protocol, {})
    session.data()
    transport.clear()
    session.write(b".x\r\n")
    session.end()
    assert transport.value() == b"..x\r\n.\r\n"


def test_pipelined_replies_in_order():
    """Several commands in flight get their replies in order, even split across reads."""
    clock, protocol, transport = connected()
    protocol.dataReceived(b"220 hi\r\n")
    assert result(protocol.greeting).code == 220
    first, second = protocol.send(b"MAIL FROM:<a@b>"), protocol.send(b"RCPT TO:<c@d>")
    protocol.dataReceived(b"250 2.1.0 Ok\r\n55")
    assert result(first) == Reply(250, "2.1.0", ("Ok",)) and result(second) is None
    protocol.dataReceived(b"0 5.1.1 No\r\n")
    assert result(second).code == 550


def test_starttls_injection_discarded():
    """Bytes after the 220 to STARTTLS are dropped, never taken as the next reply."""
    clock, protocol, transport = connected()
    protocol.dataReceived(b"220 hi\r\n")
    d = protocol.send(b"STARTTLS", discardAfter=True)
    later = []
    d.addCallback(lambda reply: later.append(protocol.send(b"EHLO x")) or reply)
    protocol.dataReceived(b"220 go\r\n250 injected\r\n")
    assert result(d).code == 220
    assert result(later[0]) is None
    protocol.dataReceived(b"250 real\r\n")
    assert result(later[0]).lines == ("real",)


def test_unsolicited_reply_and_garbage():
    """A reply nobody asked for, or garbage, breaks the connection: commands fail with UpstreamError."""
    clock, protocol, transport = connected()
    protocol.dataReceived(b"220 hi\r\n")
    d = protocol.send(b"NOOP")
    protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n")
    failure = result(d)
    assert failure.check(UpstreamError) and failure.value.kind == "protocol"
    assert transport.disconnected


def test_reply_timeout():
    """No reply within the timeout: the command fails with kind timeout and the connection is dropped."""
    clock, protocol, transport = connected(timeout=5)
    protocol.dataReceived(b"220 hi\r\n")
    d = protocol.send(b"MAIL FROM:<a@b>")
    clock.advance(4.9)
    assert result(d) is None
    clock.advance(0.1)
    assert result(d).value.kind == "timeout" and transport.disconnected


def test_reply_timeout_counts_from_the_command_or_the_reply_before():
    """
    One timer serves the connection: a command sent after an idle spell
    still has the whole timeout, and of two pipelined commands the second
    has the whole timeout from the first one's reply.
    """
    clock, protocol, transport = connected(timeout=5)
    protocol.dataReceived(b"220 hi\r\n")
    clock.advance(4)  # idle, as in the pool
    first = protocol.send(b"MAIL FROM:<a@b>")
    second = protocol.send(b"RCPT TO:<c@d>")
    clock.advance(4.5)  # the original timer's time has passed
    protocol.dataReceived(b"250 ok\r\n")
    assert result(first).code == 250
    clock.advance(4.9)
    assert result(second) is None and not transport.disconnected
    clock.advance(0.1)
    assert result(second).value.kind == "timeout" and transport.disconnected
