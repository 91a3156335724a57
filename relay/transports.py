"""
Latency: Nagle's algorithm off, and command lines sent at once.

An SMTP relay's hot path is a ping-pong of small lines (a client command, the
same command upstream, the upstream's reply, ours).  Twisted sends a write
on the reactor's next turn, after polling again and registering the socket
for writing; for these lines that doubles the turns and the system calls
per command.  L{writeNow} writes such a line straight to a plain TCP socket
when nothing is queued before it (what asyncio's transports do), and
otherwise sends the queue right away through the transport's own
C{doWrite}; message data keeps the normal, flow-controlled path.  Both lean
on C{twisted.internet.abstract.FileDescriptor}'s buffer attributes, so they
live here, in one place.
"""

from __future__ import annotations

from twisted.internet.abstract import FileDescriptor
from twisted.internet.tcp import Connection

__all__ = ["noDelay", "writeNow"]


def noDelay(transport) -> None:
    """Turn Nagle's algorithm off (TCP only; other transports are left alone)."""
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):
        pass


def _descriptor(transport) -> FileDescriptor | None:
    """The socket under any TLS or PROXY wrappers."""
    while transport is not None and not isinstance(transport, FileDescriptor):
        transport = getattr(transport, "transport", None)
    return transport


def _open(descriptor: FileDescriptor | None) -> bool:
    """Writable by us: connected, not closing, no producer streaming into it."""
    return descriptor is not None and descriptor.connected and not descriptor.disconnecting and descriptor.producer is None


def _empty(connection: Connection) -> bool:
    """Nothing queued to send."""
    return not connection._tempDataBuffer and connection.offset == len(connection.dataBuffer)


def writeNow(transport, data: bytes) -> None:
    """
    Write C{data} to C{transport} and send it now, not on the reactor's next
    turn.  Skipped while the connection closes or a producer streams into
    it; a write error is left for the reactor to find, as usual.
    """
    if isinstance(transport, Connection) and not transport.TLS and _open(transport) and _empty(transport):
        sent = transport.writeSomeData(data)
        if not isinstance(sent, int):  # an error: queued, the reactor finds it
            sent = 0
        if sent < len(data):
            transport.write(data[sent:])
        return
    transport.write(data)
    descriptor = _descriptor(transport)
    if _open(descriptor):
        descriptor.doWrite()
