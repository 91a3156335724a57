"""
Contract tests for the Twisted internals relay/core/twistedprivate.py
leans on: if a Twisted release renames or changes one of them, these fail
(rather than the relay quietly sending on the next turn, or dispatching
nothing).  setup.cfg caps Twisted at the versions these passed with.
"""

from __future__ import annotations

import socket

from twisted.internet import epollreactor, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.protocol import Factory, Protocol

from relay.core.twistedprivate import DirectEPollReactor, writeNow


def test_file_descriptor_buffer_attributes():
    """writeNow reads a FileDescriptor's send buffers: dataBuffer, offset, _tempDataBuffer."""
    descriptor = FileDescriptor()
    assert descriptor.dataBuffer == b"" and descriptor.offset == 0 and descriptor._tempDataBuffer == []
    assert callable(descriptor.doWrite) and hasattr(descriptor, "producer")


def test_tcp_connection_writes_directly():
    """On a real TCP connection writeNow sends at once: nothing is left queued for the reactor's next turn."""
    reactor = epollreactor.EPollReactor()
    left, right = socket.socketpair()
    try:
        protocol = Protocol()
        left.setblocking(False)
        connection = tcp.Server(left, protocol, ("127.0.0.1", 1), None, 0, reactor)
        protocol.makeConnection(connection)
        assert isinstance(connection, tcp.Connection) and connection.TLS is False
        writeNow(connection, b"250 2.0.0 Ok\r\n")
        right.settimeout(5)
        assert right.recv(100) == b"250 2.0.0 Ok\r\n"
        assert connection.dataBuffer == b"" and not connection._tempDataBuffer
    finally:
        left.close()
        right.close()


def test_epoll_reactor_internals():
    """DirectEPollReactor dispatches with EPollReactor's _poller, _selectables and _doReadOrWrite."""
    reactor = DirectEPollReactor()
    assert hasattr(reactor._poller, "poll")
    assert isinstance(reactor._selectables, dict)
    assert callable(reactor._doReadOrWrite)
    assert reactor.doIteration == reactor.doPoll
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    assert port.fileno() in reactor._selectables
    port.stopListening()
