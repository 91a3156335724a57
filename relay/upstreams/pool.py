"""
Choosing, opening and reusing upstream sessions.

A tenant's upstreams are tried in priority order (equal priorities in random
order, to share load) while nothing has been streamed: a connection that
fails or a session that breaks before the upstream answered MAIL moves on to
the next upstream.  Sessions are kept open between transactions, up to a cap
per upstream and for an idle timeout, so a busy tenant pays the TCP, TLS and
AUTH handshake once, not once per message.
"""

from __future__ import annotations

import enum
import random
from collections import defaultdict, deque
from collections.abc import Mapping

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from relay.seams.interfaces import IUpstreamSession, IUpstreamType
from relay.core.reply import Reply
from relay.core.tenant import Tenant, Upstream
from relay.seams.upstream import UpstreamContext, UpstreamError
from relay.core.urls import UpstreamURL

__all__ = ["Release", "UpstreamPool"]


class Release(enum.Enum):
    """The state a session is handed back in."""

    CLEAN = "clean"  # between transactions: reuse as is
    DIRTY = "dirty"  # a transaction was started: RSET before reuse
    BROKEN = "broken"  # aborted or failed: never reuse


class UpstreamPool:
    """
    The upstream sessions of one relay process.

    @param types: upstream types by URL scheme.
    @param idleTimeout: seconds an unused session stays open.
    @param maxPerUpstream: sessions open at once to one upstream URL; beyond
        it a transaction waits for a session to come back, for at most the
        context's timeout.
    @param reporter: told of every session opened (C{upstreamOpened(type,
        seconds, tlsVersion)}) and every failure to open one
        (C{upstreamError(type, kind)}); a L{relay.telemetry.report.Reporter}.
    """

    log = Logger()

    def __init__(
        self,
        types: Mapping[str, IUpstreamType],
        context: UpstreamContext,
        reporter,
        idleTimeout: float = 30.0,
        maxPerUpstream: int = 50,
        chance: random.Random | None = None,
    ):
        self._types = types
        self._context = context
        self._reporter = reporter
        self._idleTimeout = idleTimeout
        self._max = maxPerUpstream
        self._random = chance or random.Random()
        self._idle: dict[UpstreamURL, list[tuple[IUpstreamSession, IDelayedCall]]] = defaultdict(list)
        self._open: dict[UpstreamURL, int] = defaultdict(int)
        self._waiting: dict[UpstreamURL, deque[Deferred]] = defaultdict(deque)
        self._keys: dict[IUpstreamSession, UpstreamURL] = {}

    def begin(
        self, tenant: Tenant, sender: str, parameters: dict[str, str | None]
    ) -> Deferred[tuple[IUpstreamSession, Reply]]:
        """
        Start a transaction with the first of the tenant's upstreams that
        answers MAIL FROM.

        @return: a Deferred firing with the session and the upstream's reply
            to MAIL (whatever it is), or failing with L{UpstreamError} when
            no upstream could be reached.
        """
        return Deferred.fromCoroutine(self._begin(tenant, sender, parameters))

    def _inOrder(self, upstreams: tuple[Upstream, ...]) -> list[Upstream]:
        return sorted(upstreams, key=lambda u: (u.priority, self._random.random()))

    async def _begin(self, tenant: Tenant, sender: str, parameters) -> tuple[IUpstreamSession, Reply]:
        error = None
        for upstream in self._inOrder(tenant.upstreams):
            reused = True
            while reused:
                try:
                    session, reused = await self._acquire(upstream.url)
                except UpstreamError as e:
                    self.log.warn(
                        "upstream {url} of {tenant} unavailable: {error}",
                        url=upstream.url.redacted(),
                        tenant=tenant.name,
                        error=e,
                    )
                    error = e
                    break
                try:
                    return session, await session.mailFrom(sender, parameters)
                except UpstreamError as e:
                    # A reused session may have died while idle: try a fresh one.
                    self._reporter.upstreamError(session.upstreamType, e.kind)
                    self.release(session, Release.BROKEN)
                    error = e
        raise error or UpstreamError("connect", f"tenant {tenant.name} has no upstream")

    def _acquire(self, url: UpstreamURL) -> Deferred[tuple[IUpstreamSession, bool]]:
        """A session to C{url}: idle if one is, new if under the cap, else wait."""
        idle = self._idle[url]
        while idle:
            session, timer = idle.pop()
            timer.cancel()
            if session.alive:
                return succeed((session, True))
            self._forget(session)
        if self._open[url] < self._max:
            return self._connect(url)
        waiter: Deferred[tuple[IUpstreamSession, bool]] = Deferred()
        self._waiting[url].append(waiter)
        return waiter.addTimeout(self._context.timeout, self._context.reactor, self._busy)

    def _busy(self, result, timeout):
        raise UpstreamError("busy", "too many connections to this upstream")

    def _connect(self, url: UpstreamURL) -> Deferred[tuple[IUpstreamSession, bool]]:
        kind = self._types.get(url.scheme)
        if kind is None:
            return fail(UpstreamError("connect", f"no upstream type installed for {url.scheme}://"))
        self._open[url] += 1
        started = self._context.reactor.seconds()

        def opened(session: IUpstreamSession) -> tuple[IUpstreamSession, bool]:
            self._keys[session] = url
            elapsed = self._context.reactor.seconds() - started
            self._reporter.upstreamOpened(kind.name, elapsed, getattr(session, "tls", None))
            return session, False

        def failed(failure):
            self._closed(url)
            self._reporter.upstreamError(kind.name, getattr(failure.value, "kind", "connect"))
            return failure

        return kind.open(url, self._context).addCallbacks(opened, failed)

    def release(self, session: IUpstreamSession, state: Release) -> None:
        """
        Hand a session back after a transaction.  A DIRTY session is reset
        first; a BROKEN one, or one that cannot be reset, is dropped.
        """
        url = self._keys.get(session)
        if url is None:
            return
        if state is Release.BROKEN or not session.alive:
            session.abort()
            self._forget(session)
        elif state is Release.DIRTY:
            session.reset().addCallbacks(lambda _: self._reuse(session), lambda _: self.release(session, Release.BROKEN))
        else:
            self._reuse(session)

    def _reuse(self, session: IUpstreamSession) -> None:
        url = self._keys[session]
        waiting = self._waiting[url]
        while waiting:
            waiter = waiting.popleft()
            if not waiter.called:
                waiter.callback((session, True))
                return
        timer = self._context.reactor.callLater(self._idleTimeout, self._expire, session)
        self._idle[url].append((session, timer))

    def _expire(self, session: IUpstreamSession) -> None:
        url = self._keys[session]
        self._idle[url] = [(s, t) for s, t in self._idle[url] if s is not session]
        self._forget(session)
        session.close()

    def _forget(self, session: IUpstreamSession) -> None:
        self._closed(self._keys.pop(session))

    def _closed(self, url: UpstreamURL) -> None:
        """One session to C{url} fewer: a waiting transaction may open one."""
        self._open[url] -= 1
        waiting = self._waiting[url]
        while waiting:
            waiter = waiting.popleft()
            if not waiter.called:
                self._connect(url).chainDeferred(waiter)
                return

    def closeIdle(self) -> Deferred[None]:
        """Close every idle session (at shutdown)."""
        closing = []
        for url, idle in self._idle.items():
            for session, timer in idle:
                timer.cancel()
                self._keys.pop(session, None)
                closing.append(session.close())
            idle.clear()
        return gatherResults(closing).addCallback(lambda _: None)
