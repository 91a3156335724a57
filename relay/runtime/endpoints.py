"""
Listening on a socket another process opened: how a C{--workers} child
accepts from the listeners its parent bound.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.defer import Deferred, succeed

__all__ = ["AdoptedEndpoint"]


class AdoptedEndpoint:
    """A listening endpoint for a socket opened by another process (inherited)."""

    def __init__(self, reactor, fd: int):
        self._reactor = reactor
        self._fd = fd

    def listen(self, factory) -> Deferred:
        with socket.socket(fileno=os.dup(self._fd)) as probe:
            family = probe.family
        return succeed(self._reactor.adoptStreamPort(self._fd, family, factory))
