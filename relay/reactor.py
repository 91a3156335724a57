"""
The reactor the relay's worker processes run: Twisted's epoll reactor,
dispatching each I/O event straight to the connection.

Twisted's reactor wraps every read and write in C{log.callWithLogger}, which
pushes the connection's legacy log context (the C{[Protocol,3,127.0.0.1]}
prefix of C{twisted.python.log} lines) around the call.  That is five
Python calls per event, and a relayed message is eight events on the
relay's side: about 8% of a worker's CPU on small mail (docs/performance.md).
The relay logs through C{twisted.logger} with its own namespaces and the
session id in each line, so nothing it writes uses that context.  Errors
raised by a connection are still caught and logged by the reactor
(C{_doReadOrWrite}), without the prefix.

Workers install it (L{relay.worker}); a single-process relay gets it with
C{twistd -r smtprelay-epoll smtprelay ...}.
"""

from __future__ import annotations

from twisted.internet.epollreactor import EPollReactor

__all__ = ["DirectEPollReactor", "install"]


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


def install() -> DirectEPollReactor:
    """Install L{DirectEPollReactor} as the global reactor."""
    from twisted.internet.main import installReactor

    reactor = DirectEPollReactor()
    installReactor(reactor)
    return reactor
