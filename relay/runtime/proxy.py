"""
Listening behind a load balancer that speaks the PROXY protocol (HAProxy,
v1 or v2): C{--smtp haproxy:tcp:25 --trusted-proxy 10.0.0.0/24}.

A PROXY header lets whoever sends it choose the client address the relay
sees: the address that C{--no-auth} networks, connection caps, AUTH
lock-outs and the C{Received:} header go by.  So a header is accepted only
from a C{--trusted-proxy} network; a connection from anywhere else is
refused before a byte of it is read.  Headers are parsed strictly (the
addresses with C{ipaddress}, in the header's family; the ports as ports)
and anything else closes the connection with one log line.

The SMTP protocol is connected only once the header is read, so that the
greeting, the connection caps and the logs see the client's address, and a
connection whose header does not arrive in time is dropped.

The header formats are those of HAProxy's C{proxy-protocol.txt}: v1 is one
line of at most 107 octets, C{PROXY TCP4|TCP6|UNKNOWN src dst sport
dport CRLF}; v2 is a 16-octet binary prefix followed by the addresses and
optional TLVs (ignored here).  A v1 C{UNKNOWN} or a v2 C{LOCAL} header (a
load balancer's own health check) leaves the connection's real peer as the
client.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IHandshakeListener, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from relay.core.logtext import logText
from relay.seams.types import IStreamTransport

__all__ = ["PREFIX", "ProxiedEndpoint", "ProxyHeaderError", "isTrusted", "parseV1", "parseV2"]

PREFIX = "haproxy:"
MAX_V1 = 107  # octets including CRLF, proxy-protocol.txt §2.1
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V2_ADDRESSES = 2048  # octets after the 16-octet prefix: addresses and a few TLVs
_V1 = b"PROXY "
_PORT_DIGITS = frozenset(b"0123456789")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Peer = IPv4Address | IPv6Address | None


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY header we accept; the message says why (for the log)."""


def _port(text: bytes) -> int:
    if not text or not set(text) <= _PORT_DIGITS or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyHeaderError(f"bad port {logText(text.decode('latin-1'))}")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"bad port {port}")
    return port


def _address(text: bytes, version: int) -> str:
    try:
        parsed = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"bad address {logText(text.decode('latin-1'))}") from None
    if parsed.version != version:
        raise ProxyHeaderError(f"address {parsed} is not IPv{version}")
    if getattr(parsed, "scope_id", None) is not None:  # "fe80::1%anything": a zone is not an address
        raise ProxyHeaderError(f"address with a zone {logText(str(parsed))}")
    return str(parsed)


def parseV1(line: bytes) -> Peer:
    """
    Parse a v1 header line (without its CRLF).

    @return: the client's address, or C{None} for C{UNKNOWN} (use the
        connection's own peer).
    @raise ProxyHeaderError: it is not a valid v1 header.
    """
    fields = line.split(b" ")
    if fields[0] != b"PROXY" or len(fields) < 2:
        raise ProxyHeaderError("not a PROXY v1 header")
    if fields[1] == b"UNKNOWN":
        return None
    families = {b"TCP4": (4, IPv4Address), b"TCP6": (6, IPv6Address)}
    if fields[1] not in families:
        raise ProxyHeaderError(f"unknown protocol {logText(fields[1].decode('latin-1'))}")
    if len(fields) != 6:
        raise ProxyHeaderError("a PROXY v1 header has 6 fields")
    version, kind = families[fields[1]]
    source = _address(fields[2], version)
    _address(fields[3], version)
    port = _port(fields[4])
    _port(fields[5])
    return kind("TCP", source, port)


def parseV2(header: bytes) -> Peer:
    """
    Parse a whole v2 header (its 16-octet prefix and what its length says follows).

    @return: the client's address, or C{None} for a C{LOCAL} command or an
        unspecified or UNIX family (use the connection's own peer).
    @raise ProxyHeaderError: it is not a valid v2 header.
    """
    if header[:12] != V2_SIGNATURE or len(header) < 16:
        raise ProxyHeaderError("not a PROXY v2 header")
    versionCommand, family, length = header[12], header[13], struct.unpack("!H", header[14:16])[0]
    if versionCommand >> 4 != 2 or versionCommand & 0x0F not in (0, 1):
        raise ProxyHeaderError(f"unknown v2 version or command 0x{versionCommand:02x}")
    if len(header) != 16 + length:
        raise ProxyHeaderError("v2 header length mismatch")
    if versionCommand & 0x0F == 0:  # LOCAL
        return None
    body = header[16:]
    if family == 0x11:  # TCP over IPv4
        if length < 12:
            raise ProxyHeaderError("v2 IPv4 addresses truncated")
        source, _, port, _ = struct.unpack("!4s4sHH", body[:12])
        return IPv4Address("TCP", str(ipaddress.IPv4Address(source)), port)
    if family == 0x21:  # TCP over IPv6
        if length < 36:
            raise ProxyHeaderError("v2 IPv6 addresses truncated")
        source, _, port, _ = struct.unpack("!16s16sHH", body[:36])
        return IPv6Address("TCP", str(ipaddress.IPv6Address(source)), port)
    if family in (0x00, 0x31):  # unspecified, or UNIX stream: nothing to take
        return None
    raise ProxyHeaderError(f"unsupported v2 family 0x{family:02x}")


def isTrusted(peer: IAddress, trusted: Sequence[IPNetwork]) -> bool:
    """
    May this connection's peer send a PROXY header?  An IP peer must be in
    one of the C{trusted} networks (an IPv4-mapped IPv6 address counts as
    IPv4); a local (UNIX) socket's peer is trusted, its file mode deciding
    who can connect.
    """
    host = getattr(peer, "host", None)
    if not isinstance(peer, (IPv4Address, IPv6Address)) or host is None:
        return True
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in trusted)


@implementer(IHandshakeListener)
class _HeaderFirst(ProtocolWrapper):
    """Reads the PROXY header, then connects the wrapped (SMTP) protocol with the client's address."""

    log = Logger()
    transport: IStreamTransport
    factory: _HeaderFirstFactory

    def makeConnection(self, transport) -> None:
        # ProtocolWrapper.makeConnection, without connecting the wrapped protocol yet.
        directlyProvides(self, providedBy(transport))
        self.transport = transport
        self.connected = 1
        self.factory.registerProtocol(self)
        self._buffer = b""
        self._client: Peer = None
        self._connected = False
        peer = transport.getPeer()
        if not isTrusted(peer, self.factory.trusted):
            self._deadline = None
            self.log.warn(
                "PROXY listener refused a connection from {peer}: not a --trusted-proxy address",
                peer=getattr(peer, "host", peer),
            )
            transport.write(self.factory.untrustedReply)
            transport.loseConnection()
            return
        self._deadline = self.factory.clock.callLater(self.factory.timeout, self._timedOut)

    def _stopDeadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timedOut(self) -> None:
        self._deadline = None
        self.log.info("no PROXY header from {peer} in time; connection dropped", peer=self._peerHost())
        self.transport.abortConnection()

    def _peerHost(self) -> str:
        return getattr(self.transport.getPeer(), "host", "local")

    def handshakeCompleted(self) -> None:
        """STARTTLS happened below this wrapper: tell the SMTP protocol."""
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def dataReceived(self, data: bytes) -> None:
        if self._connected:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._deadline is None:  # refused or timed out: nothing more is read
            return
        self._buffer += data
        try:
            header = self._header()
        except ProxyHeaderError as e:
            self._refuse(str(e))
            return
        if header is None:
            return
        self._stopDeadline()
        self._connected = True
        rest, self._buffer = self._buffer, b""
        self.wrappedProtocol.makeConnection(cast(IStreamTransport, self))  # it provides the transport's interfaces
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def _header(self) -> bytes | None:
        """Take a complete header off the buffer; C{None} while it is incomplete."""
        buffer = self._buffer
        if buffer[:1] == V2_SIGNATURE[:1]:
            if buffer[: len(V2_SIGNATURE)] != V2_SIGNATURE[: len(buffer)]:
                raise ProxyHeaderError("not a PROXY header")
            if len(buffer) < 16:
                return None
            length = struct.unpack("!H", buffer[14:16])[0]
            if length > MAX_V2_ADDRESSES:
                raise ProxyHeaderError(f"v2 header of {length} octets is too long")
            if len(buffer) < 16 + length:
                return None
            header, self._buffer = buffer[: 16 + length], buffer[16 + length :]
            self._client = parseV2(header)
            return header
        if buffer[: len(_V1)] != _V1[: len(buffer)]:
            raise ProxyHeaderError("not a PROXY header")
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) >= MAX_V1:
                raise ProxyHeaderError("PROXY v1 header too long")
            return None
        if end + 2 > MAX_V1:
            raise ProxyHeaderError("PROXY v1 header too long")
        header, self._buffer = buffer[:end], buffer[end + 2 :]
        self._client = parseV1(header)
        return header

    def _refuse(self, reason: str) -> None:
        """A malformed header: one log line, and the connection closed at once."""
        self._stopDeadline()
        self.log.warn(
            "malformed PROXY header from {peer}: {reason}; connection closed", peer=self._peerHost(), reason=reason
        )
        self.transport.abortConnection()

    def getPeer(self) -> IAddress:
        return self._client if self._client is not None else self.transport.getPeer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._connected:
            super().connectionLost(reason)
            return
        self._stopDeadline()
        self.factory.unregisterProtocol(self)


class _HeaderFirstFactory(WrappingFactory):
    protocol = _HeaderFirst
    noisy = False

    def __init__(
        self, wrappedFactory, clock: IReactorTime, timeout: float, trusted: Sequence[IPNetwork], untrustedReply: bytes
    ):
        super().__init__(wrappedFactory)
        self.clock = clock
        self.timeout = timeout
        self.trusted = tuple(trusted)
        self.untrustedReply = untrustedReply


class ProxiedEndpoint:
    """
    A listening endpoint behind a PROXY-protocol load balancer: connections
    to C{endpoint} from a C{trusted} network must start with the header,
    within C{timeout} seconds; connections from elsewhere get
    C{untrustedReply} and are closed.
    """

    def __init__(
        self, endpoint, clock: IReactorTime, timeout: float, trusted: Sequence[IPNetwork], untrustedReply: bytes
    ):
        self._endpoint = endpoint
        self._clock = clock
        self._timeout = timeout
        self._trusted = tuple(trusted)
        self._untrustedReply = untrustedReply

    def listen(self, factory):
        return self._endpoint.listen(
            _HeaderFirstFactory(factory, self._clock, self._timeout, self._trusted, self._untrustedReply)
        )
