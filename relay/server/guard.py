"""
Connection-level protection of one relay process: caps on connections in
total and per client address, and a growing penalty for AUTH failures from
one address, ending in refusal for the rest of the period.
"""

from __future__ import annotations

from collections import defaultdict

from relay.reply import Reply

__all__ = ["ConnectionGuard"]

TOO_MANY = Reply.of(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_ADDRESS = Reply.of(421, "4.7.0", "Too many connections from your address, try again later")
AUTH_LOCKED = Reply.of(421, "4.7.0", "Too many authentication failures from your address, try again later")
MAX_DELAY = 8.0  # seconds: 1, 2, 4, 8, 8, ...
_PRUNE_AT = 10_000  # addresses with recent failures before old ones are dropped


class ConnectionGuard:
    """
    @param clock: an C{IReactorTime}.
    @param maxConnections: connections open at once in this process.
    @param maxPerAddress: connections open at once from one address.
    @param maxAuthFailures: failures from one address within C{window}
        seconds after which it is refused until they age out.
    """

    def __init__(self, clock, maxConnections: int, maxPerAddress: int, maxAuthFailures: int, window: float):
        self._clock = clock
        self._maxConnections = maxConnections
        self._maxPerAddress = maxPerAddress
        self._maxAuthFailures = maxAuthFailures
        self._window = window
        self._open: dict[str, int] = defaultdict(int)
        self._total = 0
        self._failures: dict[str, list[float]] = {}

    def admit(self, address: str) -> Reply | None:
        """A client connects: C{None} to serve it, or the reply refusing it."""
        if self._total >= self._maxConnections:
            return TOO_MANY
        if self._open[address] >= self._maxPerAddress:
            return TOO_MANY_FROM_ADDRESS
        if len(self._recentFailures(address)) >= self._maxAuthFailures:
            return AUTH_LOCKED
        self._total += 1
        self._open[address] += 1
        return None

    def leave(self, address: str) -> None:
        """An admitted client disconnected."""
        self._total -= 1
        self._open[address] -= 1
        if not self._open[address]:
            del self._open[address]

    def _recentFailures(self, address: str) -> list[float]:
        since = self._clock.seconds() - self._window
        return [t for t in self._failures.get(address, ()) if t > since]

    def authFailed(self, address: str) -> float | None:
        """
        Record an AUTH failure.

        @return: seconds to wait before answering it, or C{None} when the
            address has used up its failures and must be disconnected.
        """
        if len(self._failures) > _PRUNE_AT:
            self._failures = {a: times for a in list(self._failures) if (times := self._recentFailures(a))}
        failures = self._recentFailures(address) + [self._clock.seconds()]
        self._failures[address] = failures
        if len(failures) >= self._maxAuthFailures:
            return None
        return min(2.0 ** (len(failures) - 1), MAX_DELAY)
