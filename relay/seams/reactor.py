"""
The reactor the relay and its plugins are given, as one type a checker
reads (treq's C{_types.py} does the same): time, TCP, SSL, UNIX sockets,
processes and threads.  Every reactor twistd runs provides all of them.
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorProcess,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IReactorUNIX,
)

__all__ = ["IRelayReactor"]


class IRelayReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorSSL, IReactorUNIX, IReactorProcess, IReactorThreads):
    """The reactor interfaces the relay uses (never the global reactor: it is passed in)."""
