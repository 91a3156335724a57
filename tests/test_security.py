"""
The security rules of the inbound side, in memory: PROXY headers only from
trusted proxies and parsed strictly, bounded output, an AUTH lock-out that
holds for sessions already open, one AUTH attempt at a time per address,
command-line deadlines, nothing a client chooses injected into our header
or our log lines, and the relay-wide recipient cap.
"""

from __future__ import annotations

import ipaddress
import struct
from base64 import b64encode

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage

from relay.core.envelope import ClientInfo, Transaction
from relay.core.logtext import logText
from relay.runtime.proxy import ProxyHeaderError, _HeaderFirstFactory, isTrusted, parseV1, parseV2
from relay.runtime.tap import Options
from relay.server.guard import ConnectionGuard, MemoryAuthFailures
from relay.server.protocol import SMTPServerFactory
from relay.server.received import traceHeader
from relay.testing import MemoryClient, fakeServerContext
from tests.support.logevents import Events

TRUSTED = (ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("2001:db8::/32"))
REFUSAL = b"421 4.7.0 relay.test PROXY protocol accepted only from trusted proxies\r\n"


def v2(family: int, addresses: bytes, command: int = 0x21) -> bytes:
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([command, family]) + struct.pack("!H", len(addresses)) + addresses


V2_TCP4 = v2(0x11, bytes([198, 51, 100, 4, 10, 0, 0, 1]) + struct.pack("!HH", 40000, 25))


def proxied(peer=IPv4Address("TCP", "10.0.0.2", 50000), timeout: float = 10.0):
    reactor = MemoryReactorClock()
    context = fakeServerContext(reactor)
    smtp = SMTPServerFactory(context, implicitTLS=False)
    factory = _HeaderFirstFactory(smtp, reactor, timeout, TRUSTED, REFUSAL)
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport, smtp


# -- PROXY headers -----------------------------------------------------------


def test_v1_parsed_strictly():
    """A v1 header gives the client's address; UNKNOWN leaves the real peer."""
    assert parseV1(b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 25") == IPv4Address("TCP", "203.0.113.9", 40000)
    assert parseV1(b"PROXY TCP6 2001:db8::9 2001:db8::1 40000 25") == IPv6Address("TCP", "2001:db8::9", 40000)
    assert parseV1(b"PROXY UNKNOWN whatever follows") is None


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 203.0.113.9\r.\rMAIL 10.0.0.1 40000 25",  # a bare CR: smuggling through our Received:
        b"PROXY TCP4 203.0.113.\xe9 10.0.0.1 40000 25",  # not ASCII
        b"PROXY TCP4 2001:db8::9 10.0.0.1 40000 25",  # an IPv6 address in a TCP4 header
        b"PROXY TCP6 203.0.113.9 2001:db8::1 40000 25",
        b"PROXY TCP6 fe80::1%\r.\r 2001:db8::1 40000 25",  # a zone is free text
        b"PROXY TCP4 203.0.113.9 10.0.0.1 70000 25",
        b"PROXY TCP4 203.0.113.9 10.0.0.1 +4000 25",
        b"PROXY TCP4 203.0.113.9 10.0.0.1 04000 25",
        b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 25 extra",
        b"PROXY TCP4 203.0.113.9 10.0.0.1 40000",
        b"PROXY UDP4 203.0.113.9 10.0.0.1 40000 25",
        b"PROXY TCP4 localhost 10.0.0.1 40000 25",
    ],
)
def test_v1_refused(line):
    """Anything but an IP address of the header's family and real ports is refused."""
    with pytest.raises(ProxyHeaderError):
        parseV1(line)


def test_v2_parsed():
    """v2 PROXY headers give the client; LOCAL (a health check) leaves the real peer."""
    assert parseV2(V2_TCP4) == IPv4Address("TCP", "198.51.100.4", 40000)
    six = v2(0x21, ipaddress.IPv6Address("2001:db8::9").packed + bytes(16) + struct.pack("!HH", 1234, 25))
    assert parseV2(six) == IPv6Address("TCP", "2001:db8::9", 1234)
    assert parseV2(v2(0x11, bytes(12), command=0x20)) is None
    with pytest.raises(ProxyHeaderError):
        parseV2(v2(0x11, bytes(8)))  # truncated addresses
    with pytest.raises(ProxyHeaderError):
        parseV2(v2(0x11, bytes(12), command=0x31))  # version 3


def test_trusted_sources():
    """Only peers in a trusted network may send a header; IPv4-mapped counts as IPv4; a local socket is trusted."""
    assert isTrusted(IPv4Address("TCP", "10.0.0.9", 1), TRUSTED)
    assert not isTrusted(IPv4Address("TCP", "10.0.1.9", 1), TRUSTED)
    assert isTrusted(IPv6Address("TCP", "::ffff:10.0.0.9", 1), TRUSTED)
    assert not isTrusted(IPv6Address("TCP", "2001:db9::1", 1), TRUSTED)
    assert isTrusted(UNIXAddress(b"/run/smtprelay.sock"), TRUSTED)


def test_untrusted_peer_refused():
    """A PROXY listener refuses a connection from outside --trusted-proxy before reading it, and logs it."""
    with Events() as events:
        protocol, transport, smtp = proxied(IPv4Address("TCP", "192.0.2.66", 50000))
    assert transport.value() == REFUSAL
    assert transport.disconnecting
    protocol.dataReceived(b"PROXY TCP4 10.0.0.5 10.0.0.1 40000 25\r\nEHLO c\r\n")
    assert transport.value() == REFUSAL  # nothing of it was read
    assert not smtp.connections
    assert any("refused a connection from 192.0.2.66" in str(e.get("log_format", "")).format(**e) for e in events)


def test_trusted_peer_header_used():
    """From a trusted proxy, the header's address is the client's, split across reads."""
    protocol, transport, smtp = proxied()
    protocol.dataReceived(V2_TCP4[:7])
    assert transport.value() == b""
    protocol.dataReceived(V2_TCP4[7:] + b"EHLO c\r\n")
    assert "Hello [198.51.100.4]" in transport.value().decode()


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 203.0.113.9\r.\rMAIL 10.0.0.1 40000 25\r\n",
        b"PROXY TCP4 203.0.113.\xe9 10.0.0.1 40000 25\r\n",
        b"PROXY TCP4 " + b"1" * 120,
        V2_TCP4[:12] + b"\x21\x11\xff\xff",
    ],
)
def test_malformed_header_one_line(header):
    """A malformed header closes the connection, greets nobody, and is one warning line, not a traceback."""
    with Events() as events:
        protocol, transport, smtp = proxied()
        protocol.dataReceived(header)
    assert transport.disconnected and transport.value() == b""
    assert not smtp.connections
    warnings = [e for e in events if e.get("log_level") is not None and e["log_level"].name == "warn"]
    assert len(warnings) == 1 and "malformed PROXY header" in warnings[0]["log_format"]
    assert not any("log_failure" in e for e in events)
    rendered = warnings[0]["log_format"].format(**warnings[0])
    assert "\r" not in rendered and "\n" not in rendered


def test_trace_header_sanitised():
    """Whatever the client address holds, our Received: field stays one folded field (defence in depth)."""
    client = ClientInfo("s", "1.2.3.4\r.\rMAIL FROM:<x@y>", 1, helo="evil\r\n.\r\n")
    header = traceHeader(client, Transaction("Q1", None, {}), "relay.test", 0)
    assert header.count(b"\r") == header.count(b"\r\n") == 3
    assert b"\r\n." not in header


def test_options_need_trusted_proxy():
    """A haproxy: TCP listener without --trusted-proxy does not start; a malformed CIDR is a usage error."""
    options = Options()
    with pytest.raises(usage.UsageError, match="needs --trusted-proxy"):
        options.parseOptions(["--smtp", "haproxy:tcp:2525"])
    with pytest.raises(usage.UsageError, match="--trusted-proxy 10.0.0.1/24"):
        Options().parseOptions(["--smtp", "haproxy:tcp:2525", "--trusted-proxy", "10.0.0.1/24"])
    parsed = Options()
    parsed.parseOptions(["--smtp", "haproxy:tcp:2525", "--trusted-proxy", "10.0.0.0/24"])
    assert parsed["trusted-proxy"] == [ipaddress.ip_network("10.0.0.0/24")]
    local = Options()
    local.parseOptions(["--smtp", "haproxy:unix:/run/smtprelay.sock"])


# -- bounded output ----------------------------------------------------------


def test_output_held_stops_answering():
    """
    When the transport says the client is not reading its replies, no more
    commands are answered, and the client is no longer read once 64 KiB of
    its commands wait; when it catches up, they are answered in order.
    """
    client = MemoryClient()
    client.protocol.holdOutput(True)
    assert client.send(b"NOOP\r\n" * 20_000) == []
    assert client.transport.producerState == "paused"
    client.protocol.holdOutput(False)
    client.reactor.advance(0)
    assert client.read() == ["250 2.0.0 Ok"] * 20_000
    assert client.transport.producerState == "producing"


def test_output_held_keeps_reading_below_the_bound():
    """Below the bound the client is still read: a TLS handshake holds our greeting this way and needs to read."""
    client = MemoryClient()
    client.protocol.holdOutput(True)
    client.send(b"EHLO c\r\n")
    assert client.transport.producerState == "producing"
    client.protocol.holdOutput(False)
    client.reactor.advance(0)
    assert client.read()[0].startswith("250-relay.test")


def test_output_flushed_in_bounded_pieces():
    """A read full of commands is answered in pieces, so the transport can stop us before our replies pile up."""
    client = MemoryClient()
    writes = []
    write = client.transport.write
    client.transport.write = lambda data: (writes.append(len(data)), write(data))
    client.send(b"EHLO x\r\n" * 4000)
    assert len(writes) > 1 and max(writes) < 80 * 1024
    assert client.transport.value() == b""  # read() consumed the replies


# -- AUTH --------------------------------------------------------------------


def auth(username: str = "alice", password: str = "secret") -> bytes:
    return b"AUTH PLAIN " + b64encode(f"\0{username}\0{password}".encode()) + b"\r\n"


def test_lockout_holds_for_open_sessions():
    """A session opened before its address was locked out cannot log in, even with the right password."""
    first = MemoryClient()
    first.send(b"EHLO c\r\n")
    attacker = MemoryClient(context=first.context)
    attacker.send(b"EHLO c\r\n")
    for delay in (1, 2, 4, 8):
        attacker.send(auth(password="wrong"))
        first.reactor.advance(delay)
    assert attacker.read()[-1].startswith("535 5.7.8")
    assert attacker.send(auth(password="wrong")) == [
        "421 4.7.0 Too many authentication failures from your address, try again later"
    ]
    assert first.send(auth()) == ["421 4.7.0 Too many authentication failures from your address, try again later"]
    assert first.transport.disconnecting


class HeldChecker:
    """A checker whose every check waits for the test to answer it."""

    credentialInterfaces = ()

    def __init__(self) -> None:
        self.pending: list[tuple[bytes, Deferred]] = []

    def requestAvatarId(self, credentials):
        d: Deferred = Deferred()
        self.pending.append((credentials.username, d))
        return d


def test_auth_attempts_take_turns_per_address():
    """
    Parallel guesses from one address are checked one at a time (they hold
    one hashing thread, not all of them); another address is checked at
    once.
    """
    checker = HeldChecker()
    first = MemoryClient(checker=checker)
    same = [MemoryClient(context=first.context) for _ in range(3)]
    other = MemoryClient(context=first.context, address="198.51.100.2")
    for client in [first, *same, other]:
        client.send(b"EHLO c\r\n" + auth(password="wrong"))
    assert len(checker.pending) == 2  # one for 192.0.2.7, one for 198.51.100.2
    checker.pending.pop(0)[1].errback(UnauthorizedLogin())
    assert len(checker.pending) == 1  # the next guess waits out the failure's delay first
    first.reactor.advance(1)
    assert len(checker.pending) == 2
    assert first.read()[-1].startswith("535 5.7.8")


def test_shared_failures_counted_before_auth():
    """The lock-out check asks the failure store at every AUTH (shared stores answer with a Deferred)."""

    class Shared(MemoryAuthFailures):
        asked = 0

        def count(self, address):
            self.asked += 1
            return succeed(super().count(address))

    reactor = MemoryReactorClock()
    failures = Shared(reactor, 900.0)
    client = MemoryClient(context=fakeServerContext(reactor, guard=ConnectionGuard(reactor, 10, 10, 5, failures)))
    assert failures.asked == 1  # at connect
    lines = client.send(b"EHLO c\r\n" + auth())
    assert failures.asked == 2
    assert lines[-1].startswith("235")


# -- deadlines ---------------------------------------------------------------


def test_slow_command_line_closed():
    """A command line trickled a byte at a time is closed at its deadline; the bytes do not reset it."""
    client = MemoryClient(lineTimeout=30.0, idleTimeout=300.0)
    for _ in range(14):
        client.send(b"N")
        client.reactor.advance(2)
    assert client.read() == []
    client.reactor.advance(2)
    assert client.read() == ["421 4.4.2 Error: command line not completed in time, closing connection"]
    assert client.transport.disconnecting


def test_each_line_gets_its_deadline():
    """A client that finishes its lines keeps its connection: the deadline is per line."""
    client = MemoryClient(lineTimeout=30.0)
    for _ in range(5):
        client.send(b"NO")
        client.reactor.advance(20)
        assert client.send(b"OP\r\n") == ["250 2.0.0 Ok"]
    assert not client.transport.disconnecting


def test_idle_counts_whole_commands():
    """Bytes of an unfinished line do not keep a client from being idle: the idle time counts commands."""
    client = MemoryClient(lineTimeout=1000.0, idleTimeout=300.0)
    client.reactor.advance(200)
    client.send(b"N")
    client.reactor.advance(100)
    assert client.read() == ["421 4.4.2 Error: timeout exceeded, closing connection"]


# -- injection -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, shown",
    [
        ("alice", "alice"),
        ("SRS0=ab=cd@example.com", "SRS0=ab=cd@example.com"),
        ("x reason=ok", '"x reason=ok"'),
        ("evil\r\nsmtprelay auth failed: client=6.6.6.6", '"evil\\r\\nsmtprelay auth failed: client=6.6.6.6"'),
        ('"a b"@example.com', '"\\"a b\\"@example.com"'),
        ("caf\u00e9", '"caf\\u00e9"'),
        ("", '""'),
        (None, "-"),
    ],
)
def test_log_text(value, shown):
    """Client values in text log lines are one token: as is when safe, else a JSON string."""
    assert logText(value) == shown


def test_username_escaped_in_log():
    """A user name with CR LF and a forged field stays inside its one log line."""
    client = MemoryClient()
    with Events() as events:
        client.send(b"EHLO c\r\n" + auth(username="x\r\nsmtprelay auth failed: client=6.6.6.6 user=y", password="no"))
        client.reactor.advance(1)
    [line] = [e["log_format"].format(**e) for e in events if "auth failed" in e.get("log_format", "")]
    assert "\r" not in line and "\n" not in line
    assert line.startswith('smtprelay auth failed: client=192.0.2.7 user="x\\r\\n')


def test_message_starting_with_continuation_refused():
    """A first line beginning with white space (it would fold into our Received:) is refused; nothing is delivered."""
    client = MemoryClient()
    client.login()
    lines = client.relay("a@example.com", ["b@example.net"], b" X-Injected: yes\r\nFrom: a@example.com\r\n\r\nbody\r\n")
    assert lines[-1].startswith("550 5.6.0 Message refused: the header section starts with a continuation line")
    assert client.upstream.delivered == []
    assert client.upstream.sessions[0].calls[-1] == "ABORT"


# -- smaller findings ----------------------------------------------------------


def test_recipient_cap():
    """The relay-wide recipient cap answers 452 4.5.3 past it (RFC 5321 §4.5.3.1.10: send the rest later)."""
    client = MemoryClient(maxRecipients=2)
    client.login()
    lines = client.send(
        b"MAIL FROM:<a@example.com>\r\n" + b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(3))
    )
    assert lines[1:3] == ["250 2.1.5 Ok", "250 2.1.5 Ok"]
    assert lines[3].startswith("452 4.5.3")


def test_internal_error_after_354_aborts_upstream(monkeypatch):
    """An error while starting the message (after the upstream's 354) aborts the upstream; it never gets RSET."""

    def broken(*args):
        raise UnicodeEncodeError("ascii", "\u00e9", 0, 1, "what a lax PROXY parser let through")

    monkeypatch.setattr("relay.server.session.traceHeader", broken)
    client = MemoryClient()
    client.login()
    lines = client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    assert lines[-1].startswith("421 4.3.0")
    calls = client.upstream.sessions[0].calls
    assert calls[-1] == "ABORT" and "RSET" not in calls
