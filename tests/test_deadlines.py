"""
Deadlines and the PROXY listener, in memory: TLS handshake, whole DATA
phase, an upstream that stops reading, a missing PROXY header.
"""

from __future__ import annotations

import ipaddress
import struct

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from relay.runtime.proxy import _HeaderFirstFactory
from relay.server.protocol import SMTPServerFactory
from relay.testing import MemoryClient, fakeServerContext


def inData(client: MemoryClient) -> None:
    client.login()
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    client.send(b"From: a@example.com\r\n\r\nsome of the body\r\n")


def test_starttls_handshake_deadline():
    """A client that never completes the TLS handshake after STARTTLS is dropped."""
    client = MemoryClient(tls=object(), handshakeTimeout=10.0)
    client.send(b"EHLO c\r\nSTARTTLS\r\n")
    client.reactor.advance(9.9)
    assert not client.transport.disconnecting
    client.reactor.advance(0.1)
    assert client.transport.disconnected


def test_handshake_completed_in_time():
    """A completed handshake cancels the deadline and records the TLS version."""
    client = MemoryClient(tls=object(), handshakeTimeout=10.0)
    client.send(b"EHLO c\r\nSTARTTLS\r\n")
    client.transport.getHandle = lambda: type("Handle", (), {"get_protocol_version_name": lambda self: "TLSv1.3"})()
    client.protocol.handshakeCompleted()
    client.reactor.advance(30)
    assert not client.transport.disconnecting
    assert client.protocol.client.tls == "TLSv1.3"


def test_data_deadline():
    """A message transfer taking longer than the DATA deadline gets 421 and the upstream is aborted."""
    client = MemoryClient(dataTimeout=600.0, idleTimeout=3600.0)
    inData(client)
    for _ in range(20):  # trickling keeps the connection from being idle
        client.reactor.advance(29)
        client.send(b"x\r\n")
    assert client.read() == []
    client.reactor.advance(20)
    assert client.read() == ["421 4.4.2 Error: message transfer took too long, closing connection"]
    assert client.transport.disconnecting
    client.protocol.connectionLost(None)
    assert client.upstream.sessions[0].calls[-1] == "ABORT"
    assert client.upstream.delivered == []


def test_upstream_stall():
    """An upstream that stops reading is given up: the client is read again and gets 451 after its dot."""
    client = MemoryClient(upstreamTimeout=60.0)
    inData(client)
    session = client.upstream.sessions[0]
    session.producer.pauseProducing()
    assert client.transport.producerState == "paused"
    client.reactor.advance(60)
    assert client.transport.producerState == "producing"
    assert session.calls[-1] == "ABORT"
    reply = client.send(b"more body\r\n.\r\n")
    assert reply[0].startswith("451 4.4.2 Upstream stopped reading; message not delivered")
    assert client.upstream.delivered == []


TRUSTED = (ipaddress.ip_network("10.0.0.0/24"),)


def proxied(timeout: float = 10.0, peer: str = "10.0.0.2"):
    reactor = MemoryReactorClock()
    factory = _HeaderFirstFactory(
        SMTPServerFactory(fakeServerContext(reactor), implicitTLS=False), reactor, timeout, TRUSTED, b"421 4.7.0 no\r\n"
    )
    protocol = factory.buildProtocol(IPv4Address("TCP", peer, 50000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 50000))
    protocol.makeConnection(transport)
    return reactor, protocol, transport


def test_proxy_v1_header():
    """Behind a PROXY v1 load balancer the relay greets after the header and sees the real client."""
    reactor, protocol, transport = proxied()
    assert transport.value() == b""
    protocol.dataReceived(b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 25\r\nEHLO c\r\n")
    lines = transport.value().decode().split("\r\n")
    assert lines[0].startswith("220 relay.test")
    assert lines[1] == "250-relay.test Hello [203.0.113.9]"


def test_proxy_v2_header():
    """A PROXY v2 header works the same, split across reads."""
    reactor, protocol, transport = proxied()
    addresses = bytes([198, 51, 100, 4, 10, 0, 0, 1]) + struct.pack("!HH", 40000, 25)
    header = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses
    protocol.dataReceived(header[:10])
    protocol.dataReceived(header[10:])
    protocol.dataReceived(b"EHLO c\r\n")
    assert "Hello [198.51.100.4]" in transport.value().decode()


def test_proxy_header_deadline():
    """No PROXY header in time: the connection is dropped without a greeting."""
    reactor, protocol, transport = proxied(timeout=5.0)
    reactor.advance(5)
    assert transport.disconnected and transport.value() == b""


def test_proxy_header_garbage():
    """Something other than a PROXY header closes the connection."""
    reactor, protocol, transport = proxied()
    protocol.dataReceived(b"EHLO spammer\r\n")
    assert transport.disconnecting and transport.value() == b""
