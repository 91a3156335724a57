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
from relay.seams.interfaces import IPolicy

__all__ = ["Policy", "PolicyContext"]


@dataclass(frozen=True)
class PolicyContext:
    """
    What a policy factory gets to build its policy.

    @ivar reactor: the reactor (an C{IReactorTime} and C{IReactorTCP});
        never import the global one.
    @ivar options: the relay's parsed command-line options.
    @ivar sharedState: the Redis server of C{--rate-limit-store} (a
        L{relay.runtime.sharedstate.RedisConnection}: C{call(f, *args)} runs a
        redis-py call off the reactor thread), or C{None}: keep state in
        this process then.
    """

    reactor: Any
    options: Mapping[str, Any]
    sharedState: Any = None


@implementer(IPolicy)
class Policy:
    """
    A base class for policies: every hook answers L{CONTINUE}.  Override the
    hooks you need; see L{IPolicy} for when each is called.
    """

    name = "unnamed"

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
