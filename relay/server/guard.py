"""
Connection-level protection: caps on connections in total and per client
address, and AUTH failures from one address answered ever more slowly,
then locked out for the rest of the window.

The lock-out is checked when a client connects and again at every AUTH, so
a session opened before it cannot keep guessing.  AUTH attempts from one
address take turns (L{ConnectionGuard.authTurn}): an attacker's parallel
guesses are verified one at a time, with the growing delay between them,
so they occupy one hashing thread, not all of them, and a login from
another address never waits behind them.

The failure counts live in this process (L{MemoryAuthFailures}) or, with
C{--rate-limit-store}, in Redis (L{RedisAuthFailures}), shared by every
process and instance.  When Redis cannot be reached the counts of this
process stand in (fail open to per-process protection): a Redis outage
neither locks every tenant out nor lifts the lock-out altogether.
"""

from __future__ import annotations

import uuid
from collections import defaultdict, deque

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from relay.core.maybe import then
from relay.core.reply import Reply
from relay.seams.interfaces import ISharedState

__all__ = ["AUTH_LOCKED", "ConnectionGuard", "MemoryAuthFailures", "RedisAuthFailures"]

TOO_MANY = Reply.of(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_ADDRESS = Reply.of(421, "4.7.0", "Too many connections from your address, try again later")
AUTH_LOCKED = Reply.of(421, "4.7.0", "Too many authentication failures from your address, try again later")
MAX_DELAY = 8.0  # seconds: 1, 2, 4, 8, 8, ...
_PRUNE_AT = 10_000  # addresses with recent failures before old ones are dropped


class MemoryAuthFailures:
    """
    AUTH failures per address in this process, within a sliding window.

    @param clock: an C{IReactorTime}.
    @param window: seconds a failure counts.
    """

    def __init__(self, clock, window: float):
        self._clock = clock
        self._window = window
        self._failures: dict[str, list[float]] = {}

    def _recent(self, address: str) -> list[float]:
        since = self._clock.seconds() - self._window
        return [t for t in self._failures.get(address, ()) if t > since]

    def count(self, address: str) -> int:
        """The failures from C{address} within the window."""
        return len(self._recent(address))

    def record(self, address: str) -> int:
        """Count one more failure; returns the failures within the window, this one included."""
        if len(self._failures) > _PRUNE_AT:
            self._failures = {a: times for a in list(self._failures) if (times := self._recent(a))}
        failures = self._recent(address) + [self._clock.seconds()]
        self._failures[address] = failures
        return len(failures)


# KEYS[1]: the address's sorted set of failure times; ARGV: window seconds, record (1/0), a unique member.
_FAILURES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
if ARGV[2] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])))
end
return redis.call('ZCARD', KEYS[1])
"""


class RedisAuthFailures:
    """
    AUTH failures per address in Redis, shared by every relay using it; the
    window follows the Redis server's clock.  Every failure is also counted
    in C{local}, which answers while Redis cannot be reached.
    """

    log = Logger()

    def __init__(self, redis: ISharedState, window: float, local: MemoryAuthFailures):
        self._redis = redis
        self._script = redis.script(_FAILURES)
        self._window = window
        self._local = local
        self._reachable = True

    def _ask(self, address: str, record: bool) -> Deferred[int]:
        key = f"smtprelay:authfail:{address}"
        d = self._redis.call(
            lambda: int(self._script(keys=[key], args=[self._window, "1" if record else "0", uuid.uuid4().hex]))
        )

        def answered(count: int) -> int:
            if not self._reachable:
                self._reachable = True
                self.log.info("shared AUTH failure counts reachable again")
            return max(count, self._local.count(address))

        def unreachable(failure) -> int:
            if self._reachable:
                self._reachable = False
                self.log.warn(
                    "shared AUTH failure counts unreachable ({error}); counting in this process until they are back",
                    error=failure.getErrorMessage(),
                )
            return self._local.count(address)

        return d.addCallbacks(answered, unreachable)

    def count(self, address: str) -> Deferred[int]:
        return self._ask(address, record=False)

    def record(self, address: str) -> Deferred[int]:
        self._local.record(address)
        return self._ask(address, record=True)


AuthFailures = MemoryAuthFailures | RedisAuthFailures


class _Turns:
    """One holder at a time per key; the others wait in order."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Deferred[None]]] = {}

    def take(self, key: str) -> Deferred[None]:
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = deque()
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        queue.append(waiter)
        return waiter

    def give(self, key: str) -> None:
        queue = self._queues[key]
        if queue:
            queue.popleft().callback(None)
        else:
            del self._queues[key]


class ConnectionGuard:
    """
    @param clock: an C{IReactorTime}.
    @param maxConnections: connections open at once in this process.
    @param maxPerAddress: connections open at once from one address.
    @param maxAuthFailures: failures from one address within the window
        after which it is refused until they age out.
    @param failures: where the failures are counted.
    """

    def __init__(self, clock, maxConnections: int, maxPerAddress: int, maxAuthFailures: int, failures: AuthFailures):
        self._clock = clock
        self._maxConnections = maxConnections
        self._maxPerAddress = maxPerAddress
        self._maxAuthFailures = maxAuthFailures
        self._failures = failures
        self._open: dict[str, int] = defaultdict(int)
        self._total = 0
        self._turns = _Turns()

    def admit(self, address: str) -> Reply | None:
        """A client connects: C{None} to serve it, or the reply refusing it."""
        if self._total >= self._maxConnections:
            return TOO_MANY
        if self._open[address] >= self._maxPerAddress:
            return TOO_MANY_FROM_ADDRESS
        self._total += 1
        self._open[address] += 1
        return None

    def leave(self, address: str) -> None:
        """An admitted client disconnected."""
        self._total -= 1
        self._open[address] -= 1
        if not self._open[address]:
            del self._open[address]

    def locked(self, address: str) -> bool | Deferred[bool]:
        """Whether the address has used up its AUTH failures (it is then refused with L{AUTH_LOCKED})."""
        return then(self._failures.count(address), lambda count: count >= self._maxAuthFailures)

    def authTurn(self, address: str) -> Deferred[None]:
        """
        Wait for this address's turn to try AUTH; fires when no other
        attempt from it is being checked.  Call L{authDone} after.
        """
        return self._turns.take(address)

    def authDone(self, address: str) -> None:
        """The attempt that had the address's turn is over."""
        self._turns.give(address)

    def authFailed(self, address: str) -> float | None | Deferred[float | None]:
        """
        Record an AUTH failure.

        @return: seconds to wait before answering it, or C{None} when the
            address has used up its failures and must be disconnected.
        """

        def delay(failures: int) -> float | None:
            if failures >= self._maxAuthFailures:
                return None
            return min(2.0 ** (failures - 1), MAX_DELAY)

        return then(self._failures.record(address), delay)
