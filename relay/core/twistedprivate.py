"""
Every use of Twisted's private API, in one place, each pinned by a contract
test (C{tests/test_twisted_contract.py}) that fails when Twisted changes
what it relies on.  C{setup.cfg} caps Twisted at the versions tested.

Latency: Nagle's algorithm off, and data sent at once (L{writeNow}).  An
SMTP relay's hot path is a ping-pong of small lines (a client command, the
same command upstream, the upstream's reply, ours).  Twisted sends a write
on the reactor's next turn, after polling again and registering the socket
for writing; for these lines that doubles the turns and the system calls
per command.  L{writeNow} writes straight to a plain TCP socket when nothing
is queued before it (what asyncio's transports do): command lines and
message data alike, so a chunk of message that fits in the socket buffer
costs no registration for writing.  What the socket does not take is queued
as usual, under the transport's flow control (a registered producer is
paused when the queue grows).  With something already queued, or on TLS,
the data is sent right away through the transport's own C{doWrite}.  This
leans on C{twisted.internet.abstract.FileDescriptor}'s buffer attributes.

Dispatch: L{DirectEPollReactor}, the reactor the relay's workers run.
Twisted's reactor wraps every read and write in C{log.callWithLogger}, which
pushes the connection's legacy log context (the C{[Protocol,3,127.0.0.1]}
prefix of C{twisted.python.log} lines) around the call.  That is five
Python calls per event, and a relayed message is eight events on the
relay's side: about 8% of a worker's CPU on small mail (docs/performance.md).
The relay logs through C{twisted.logger} with its own namespaces and the
session id in each line, so nothing it writes uses that context.  Errors
raised by a connection are still caught and logged by the reactor
(C{_doReadOrWrite}), without the prefix.  This leans on
C{EPollReactor}'s C{_poller}, C{_selectables} and C{_doReadOrWrite}.
"""

from __future__ import annotations

from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.tcp import Connection

__all__ = ["DirectEPollReactor", "noDelay", "writeNow"]


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
    """Writable by us: connected and not closing."""
    return descriptor is not None and bool(descriptor.connected) and not descriptor.disconnecting


def _empty(connection: Connection) -> bool:
    """Nothing queued to send."""
    return not connection._tempDataBuffer and connection.offset == len(connection.dataBuffer)


def writeNow(transport, data: bytes) -> None:
    """
    Write C{data} to C{transport} and send what the socket takes now, not
    on the reactor's next turn.  While the connection closes, C{data} is
    only queued.  A write error is left for the reactor to find, as usual.
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
    if descriptor is not None and _open(descriptor):
        descriptor.doWrite()


class DirectEPollReactor(EPollReactor):
    """L{EPollReactor} without the legacy log context around each event."""

    def doPoll(self, timeout: float | None) -> None:
        # Python retries epoll_wait on EINTR (PEP 475): any error here is a bug.
        events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        selectables, dispatch = self._selectables, self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                dispatch(selectable, fd, event)

    doIteration = doPoll
