"""
Composite Twisted types, as single interfaces a checker reads (treq's
C{_types.py} does the same): the reactor the relay and its plugins are
given, and the stream transport its protocols run on.
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IReactorCore,
    IReactorProcess,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IReactorUNIX,
    ISystemHandle,
    ITLSTransport,
)

__all__ = ["IRelayReactor", "IStreamTransport"]


class IRelayReactor(
    IReactorCore, IReactorTime, IReactorTCP, IReactorSSL, IReactorUNIX, IReactorProcess, IReactorThreads
):
    """The reactor interfaces the relay uses (never the global reactor: it is passed in)."""


class IStreamTransport(ITLSTransport, IConsumer, IPushProducer, ISystemHandle):
    """
    A TCP (or UNIX) connection as the relay's protocols use it: a transport
    that can start TLS, take a producer, be paused, and show its socket
    (or TLS connection) handle.  Twisted's TCP and TLS transports provide it.
    """
