"""
Policies: the checks every session passes through.  The interface is
L{relay.interfaces.IPolicy}; built-in policies live in this package and are
registered in C{twisted/plugins/smtprelay_policies.py} like any plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PolicyContext"]


@dataclass(frozen=True)
class PolicyContext:
    """
    What a policy factory gets to build its policy.

    @ivar reactor: the reactor (an C{IReactorTime} and C{IReactorTCP});
        never import the global one.
    @ivar options: the relay's parsed command-line options.
    @ivar sharedState: the Redis server of C{--rate-limit-store} (a
        L{relay.sharedstate.RedisConnection}: C{call(f, *args)} runs a
        redis-py call off the reactor thread), or C{None}: keep state in
        this process then.
    """

    reactor: Any
    options: Mapping[str, Any]
    sharedState: Any = None
