"""
A short-lived memory of successful password verifications, so that a
tenant opening many connections does not pay a slow hash (scrypt, ~50 ms of
CPU and 32 MiB) for every one.

Only successes are remembered, under a keyed HMAC of the user name, the
password and the stored hash: a wrong password never matches an entry (it
always costs the full hash), entries reveal nothing without the per-process
key, and a changed password (a new stored hash) misses at once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict

__all__ = ["VerifiedCache"]


class VerifiedCache:
    """
    @param clock: an C{IReactorTime}.
    @param lifetime: seconds an entry is trusted.
    @param size: entries kept at most (the oldest go first).
    """

    def __init__(self, clock, lifetime: float = 300.0, size: int = 10_000):
        self._clock = clock
        self._lifetime = lifetime
        self._size = size
        self._key = os.urandom(32)
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def digest(self, username: str, password: str, encoded: str) -> bytes:
        """The key of an attempt: a keyed HMAC of the user name, password and stored hash."""
        message = "\0".join((username, password, encoded)).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def __contains__(self, digest: bytes) -> bool:
        """Whether the attempt with this L{digest} was verified recently."""
        expires = self._entries.get(digest)
        return expires is not None and expires > self._clock.seconds()

    def add(self, digest: bytes) -> None:
        """Remember a successful verification."""
        self._entries.pop(digest, None)
        self._entries[digest] = self._clock.seconds() + self._lifetime
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
