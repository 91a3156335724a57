"""
Values that may or may not be ready yet.

Policies answer synchronously or with a Deferred; the relay keeps the
synchronous case free of Deferred overhead on its hot paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred

__all__ = ["settle", "then"]

T = TypeVar("T")
U = TypeVar("U")


def then(result: T | Deferred[T], f: Callable[[T], U | Deferred[U]]) -> U | Deferred[U]:
    """
    Apply C{f} to C{result} now, or when it fires if it is a Deferred (a
    Deferred that C{f} returns is chained, as Deferreds do).
    """
    if isinstance(result, Deferred):
        return result.addCallback(f)
    return f(result)


async def settle(result: T | Deferred[T]) -> T:
    """Await C{result} if it is a Deferred (for use in coroutines)."""
    if isinstance(result, Deferred):
        return await result
    return result
