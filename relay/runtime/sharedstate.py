"""
State shared by every relay process and instance: C{--rate-limit-store
redis://host:6379/0}.

redis-py is a blocking client; L{RedisConnection} runs it on a small thread
pool of its own (never the reactor thread, never the store's pool), so each
call returns a Deferred.  Rate-limit budgets (L{relay.policy.ratelimit}) and
AUTH failure counts (L{relay.server.guard}) keep their counters here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from relay.seams.interfaces import ISharedState

__all__ = ["RedisConnection"]

T = TypeVar("T")
TIMEOUT = 5.0  # seconds for a Redis connect or reply: a stuck server costs a tempfail, not a hung session


@implementer(ISharedState)
class RedisConnection:
    """
    One Redis server, used from the reactor thread.

    @param url: C{redis://host:6379/0} (any URL redis-py takes).
    @param reactor: the reactor; the thread pool stops at its shutdown.
    """

    def __init__(self, url: str, reactor, threads: int = 4):
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=threads, name="smtprelay-redis")
        self._pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)

    def call(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run C{f(*args)} (a blocking call of L{client}) on the pool."""
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def script(self, source: str):
        """A Lua script registered with the server, called as C{script(keys=[...], args=[...])} on the pool."""
        return self.client.register_script(source)
