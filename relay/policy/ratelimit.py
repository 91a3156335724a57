"""
Rate limits per tenant: messages and recipients per period (fixed windows,
e.g. C{100/1m}) and transactions in flight at once.  Refusals are
temporary (C{450 4.7.1}), so the client keeps the message and retries:
nothing is lost.

The counters live in a L{Budget}: in this process by default, or in Redis
(C{--rate-limit-store redis://host:6379/0}) so that every relay process and
instance shares one budget.  When Redis cannot be reached the policy fails
like any broken policy: the transaction is tempfailed (as Postfix does for
an unreachable policy service), never waved through.
"""

from __future__ import annotations

import uuid

from twisted.internet.defer import Deferred

from relay.core.maybe import then
from relay.core.tenant import Rate
from relay.plugin import CONTINUE, Policy, tempfail
from relay.seams.interfaces import ISharedState

NOTES = "rate-limit"  # its key in transaction.notes
__all__ = ["MemoryBudget", "RateLimitPolicy", "RedisBudget"]

RATE_EXCEEDED = tempfail(450, "4.7.1", "Rate limit exceeded for this tenant, try again later")
RECIPIENT_RATE_EXCEEDED = tempfail(450, "4.7.1", "Recipient rate limit exceeded for this tenant, try again later")
TOO_MANY_AT_ONCE = tempfail(450, "4.7.1", "Too many messages in flight for this tenant, try again later")
LEASE = 900  # seconds a concurrency slot outlives a relay that died holding it


class MemoryBudget:
    """Counters in this process; C{clock} is an C{IReactorTime}."""

    def __init__(self, clock):
        self._clock = clock
        self._windows: dict[str, tuple[int, int]] = {}
        self._slots: dict[str, int] = {}

    def spend(self, key: str, rate: Rate) -> bool:
        """Count one against C{rate}; C{False} (and nothing counted) when it is used up."""
        window = int(self._clock.seconds() // rate.seconds)
        current, used = self._windows.get(key, (window, 0))
        if current != window:
            used = 0
        if used >= rate.count:
            return False
        self._windows[key] = (window, used + 1)
        return True

    def acquire(self, key: str, cap: int, token: str) -> bool:
        """Take one of C{cap} slots; C{False} when all are taken."""
        if self._slots.get(key, 0) >= cap:
            return False
        self._slots[key] = self._slots.get(key, 0) + 1
        return True

    def release(self, key: str, token: str) -> None:
        self._slots[key] -= 1


_SPEND = """
local used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if used > tonumber(ARGV[1]) then redis.call('DECR', KEYS[1]) return 0 end
return 1
"""
_ACQUIRE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisBudget:
    """
    Counters in Redis (the relay's L{ISharedState}), shared by every relay using the
    same server.  Windows are aligned to the Redis server's clock, so
    instances need not agree on time.
    """

    def __init__(self, redis: ISharedState):
        self._redis = redis
        self._spend = redis.script(_SPEND)
        self._acquire = redis.script(_ACQUIRE)

    def spend(self, key: str, rate: Rate) -> Deferred[bool]:
        def spend() -> bool:
            window = int(self._redis.client.time()[0]) // rate.seconds
            return bool(
                self._spend(keys=[f"smtprelay:rate:{key}:{rate.seconds}:{window}"], args=[rate.count, rate.seconds])
            )

        return self._redis.call(spend)

    def acquire(self, key: str, cap: int, token: str) -> Deferred[bool]:
        return self._redis.call(lambda: bool(self._acquire(keys=[f"smtprelay:slots:{key}"], args=[cap, LEASE, token])))

    def release(self, key: str, token: str) -> None:
        self._redis.call(self._redis.client.zrem, f"smtprelay:slots:{key}", token)


class RateLimitPolicy(Policy):
    """Messages per period and in flight at MAIL, recipients per period at RCPT."""

    def __init__(self, context):
        super().__init__(context)
        shared = context.sharedState
        self._budget = RedisBudget(shared) if shared is not None else MemoryBudget(context.reactor)

    def mailFrom(self, client, transaction):
        tenant = client.tenant
        if tenant.maxConcurrency is None:
            return self._spendMessage(tenant)
        token = uuid.uuid4().hex

        def slotted(ok: bool):
            if not ok:
                return TOO_MANY_AT_ONCE
            transaction.notes[NOTES] = (tenant.name, token)
            return self._spendMessage(tenant)

        return then(self._budget.acquire(tenant.name, tenant.maxConcurrency, token), slotted)

    def _spendMessage(self, tenant):
        if tenant.rate is None:
            return CONTINUE
        return then(
            self._budget.spend(f"messages:{tenant.name}", tenant.rate), lambda ok: CONTINUE if ok else RATE_EXCEEDED
        )

    def rcptTo(self, client, transaction, recipient):
        rate = client.tenant.rateRecipients
        if rate is None:
            return CONTINUE
        spent = self._budget.spend(f"recipients:{client.tenant.name}", rate)
        return then(spent, lambda ok: CONTINUE if ok else RECIPIENT_RATE_EXCEEDED)

    def reset(self, client, transaction):
        slot = transaction.notes.pop(NOTES, None)
        if slot is not None:
            self._budget.release(*slot)
