"""
Listening behind a load balancer that speaks the PROXY protocol (HAProxy,
v1 or v2): C{--smtp haproxy:tcp:25}.

Twisted's wrapper connects the SMTP protocol as soon as TCP connects, when
the client's real address is not known yet, and waits for the header for
ever.  This one connects the SMTP protocol only once the header is read, so
that the greeting, the connection caps and the logs see the client's
address, and drops connections whose header does not arrive in time.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from zope.interface import directlyProvides, implementer, providedBy

__all__ = ["PREFIX", "ProxiedEndpoint"]

PREFIX = "haproxy:"
MAX_HEADER = 536  # PROXY v2 header with addresses and a few TLVs; v1 is at most 107
_V1 = b"PROXY "
_V2 = b"\r\n\r\n\x00\r\nQUIT\n"


def _couldStartHeader(start: bytes) -> bool:
    return start[: len(_V1)] == _V1[: len(start)] or start[: len(_V2)] == _V2[: len(start)]


class _Held(Protocol):
    """Stands in for the SMTP protocol while the header is parsed: keeps what follows it."""

    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


@implementer(IHandshakeListener)
class _HeaderFirstWrapper(HAProxyProtocolWrapper):
    def handshakeCompleted(self) -> None:
        """STARTTLS happened below this wrapper: tell the SMTP protocol."""
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def makeConnection(self, transport) -> None:
        # ProtocolWrapper.makeConnection, without connecting the wrapped protocol yet.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._start = b""
        self._seen = 0
        self._connected = False
        self._deadline = self.factory.clock.callLater(self.factory.timeout, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        if self._connected:
            self.wrappedProtocol.dataReceived(data)
            return
        self._seen += len(data)
        if self._seen > MAX_HEADER:
            self._deadline.cancel()
            self.transport.abortConnection()
            return
        if self._proxyInfo is None and self._parser is None:
            # Twisted tells v1 from v2 by the first read alone: gather enough.
            self._start += data
            if not _couldStartHeader(self._start):
                self.loseConnection()
                return
            shortV1 = self._start.startswith(_V1) and b"\n" in self._start
            if len(self._start) < 16 and not shortV1:
                return
            data, self._start = self._start, b""
        smtp, self.wrappedProtocol = self.wrappedProtocol, _Held()
        try:
            super().dataReceived(data)
        finally:
            held, self.wrappedProtocol = self.wrappedProtocol.data, smtp
        if self._proxyInfo is not None:
            self._deadline.cancel()
            self._connected = True
            smtp.makeConnection(self)
            if held:
                smtp.dataReceived(held)

    def connectionLost(self, reason) -> None:
        if self._connected:
            super().connectionLost(reason)
            return
        if self._deadline.active():
            self._deadline.cancel()
        self.factory.unregisterProtocol(self)


class _HeaderFirstFactory(HAProxyWrappingFactory):
    protocol = _HeaderFirstWrapper

    def __init__(self, wrappedFactory, clock: IReactorTime, timeout: float):
        super().__init__(wrappedFactory)
        self.clock = clock
        self.timeout = timeout


class ProxiedEndpoint:
    """
    A listening endpoint behind a PROXY-protocol load balancer: connections
    to C{endpoint} must start with the header, within C{timeout} seconds.
    """

    def __init__(self, endpoint, clock: IReactorTime, timeout: float):
        self._endpoint = endpoint
        self._clock = clock
        self._timeout = timeout

    def listen(self, factory):
        return self._endpoint.listen(_HeaderFirstFactory(factory, self._clock, self._timeout))
