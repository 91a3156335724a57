"""
What the relay gives a policy (L{PolicyContext}) and the base class a
policy starts from (L{Policy}).  Plugin authors import both from
L{relay.plugin}.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zope.interface import implementer

from relay.core.verdict import CONTINUE
from relay.seams.interfaces import IPolicy, ISharedState
from relay.seams.types import IRelayReactor

__all__ = ["Policy", "PolicyContext"]


@dataclass(frozen=True, kw_only=True)
class PolicyContext:
    """
    What the relay gives a policy: the one argument of its constructor.

    @ivar reactor: the reactor (time, TCP, SSL, threads); never import the
        global one.
    @ivar options: the relay's parsed command-line options (read-only).
    @ivar sharedState: the Redis server of C{--rate-limit-store}, or
        C{None}: keep state in this process then.
    """

    reactor: IRelayReactor
    options: Mapping[str, Any]
    sharedState: ISharedState | None = None


@implementer(IPolicy)
class Policy:
    """
    A base class for policies: every hook answers L{CONTINUE}.  Override the
    hooks you need; see L{IPolicy} for when each is called.

    One instance serves every connection of a relay process: keep
    per-transaction state in C{transaction.notes} (keyed by your policy's
    name), per-connection state keyed by C{client.sessionId}.

    @ivar context: the L{PolicyContext} it was made with.
    """

    def __init__(self, context: PolicyContext):
        self.context = context

    def connect(self, client):
        return CONTINUE

    def auth(self, client, login):
        return CONTINUE

    def mailFrom(self, client, transaction):
        return CONTINUE

    def rcptTo(self, client, transaction, recipient):
        return CONTINUE

    def headers(self, client, transaction, headers):
        return CONTINUE

    def bodyChunk(self, client, transaction, chunk):
        return CONTINUE

    def endOfData(self, client, transaction):
        return CONTINUE

    def reset(self, client, transaction):
        return None

    def disconnect(self, client):
        return None
