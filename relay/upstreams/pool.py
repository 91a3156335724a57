"""
Choosing, opening and reusing upstream sessions.

A tenant's upstreams are tried in priority order (equal priorities in random
order, to share load) while nothing has been streamed: a connection that
fails or a session that breaks before the upstream answered MAIL moves on to
the next upstream.  Sessions are kept open between transactions, up to a cap
per upstream and for an idle timeout, so a busy tenant pays the TCP, TLS and
AUTH handshake once, not once per message.

An upstream that failed to open is marked down for a while
(L{relay.upstreams.breaker}): it is tried after the tenant's other
upstreams, or not at all while its back-off runs, and a probe in the
background checks it once the back-off is over, so a hung upstream costs
one timeout, not one per message.

The pool keeps the lifecycle the plugin interface promises
(L{relay.seams.interfaces.IUpstreamSession}): a session is checked against
the interface when it is opened, and C{reset()} is called before every
reuse, whatever the last transaction did.  What the relay knows about a
session (its URL, its type) is kept here, in its L{Lease}.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass

from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from relay.core.reply import Reply
from relay.core.tenant import Tenant, Upstream
from relay.core.urls import UpstreamURL
from relay.seams.interfaces import IUpstreamSession, IUpstreamTLS, IUpstreamType
from relay.seams.registration import PluginError, conformance
from relay.seams.upstream import UpstreamContext, UpstreamError
from relay.upstreams.breaker import DOWN_KINDS, Breaker

__all__ = ["Lease", "Opening", "Route", "UpstreamPool"]


class Lease:
    """
    One upstream session as the relay holds it, and the one way the relay
    talks to it: every call goes through here, so that a plugin that
    raises, fails with something other than L{UpstreamError} or answers
    something other than a reply breaks only its own transaction (a
    C{protocol} error, logged with a traceback), never the client's session.

    @ivar session: the plugin's L{IUpstreamSession}.
    @ivar url: the upstream's URL (password included: show it with
        C{url.redacted()}).
    @ivar upstreamType: the type's name, the C{upstream_type} metric label.
    """

    log = Logger()

    def __init__(self, session: IUpstreamSession, url: UpstreamURL, upstreamType: str):
        self.session = session
        self.url = url
        self.upstreamType = upstreamType
        self._failed = False

    @property
    def peer(self) -> str:
        """Where it leads, for logs: the URL without its password."""
        return self.url.redacted()

    @property
    def alive(self) -> bool:
        return not self._failed and bool(self._sync("alive", lambda: self.session.alive))

    def reusable(self, now: float) -> bool:
        """Alive, and not past its C{reusableUntil} (an optional attribute of sessions)."""
        until = getattr(self.session, "reusableUntil", None)
        return self.alive and (until is None or now < until)

    def mailFrom(self, sender: str, parameters: dict[str, str | None]) -> Deferred[Reply]:
        return self._call("mailFrom", self.session.mailFrom, sender, parameters).addCallback(self._reply, "mailFrom")

    def rcptTo(self, recipient: str, parameters: dict[str, str | None]) -> Deferred[Reply]:
        return self._call("rcptTo", self.session.rcptTo, recipient, parameters).addCallback(self._reply, "rcptTo")

    def data(self) -> Deferred[Reply]:
        return self._call("data", self.session.data).addCallback(self._reply, "data")

    def end(self) -> Deferred[list[Reply]]:
        return self._call("end", self.session.end).addCallback(self._replies)

    def reset(self) -> Deferred[None]:
        return self._call("reset", self.session.reset)

    def close(self) -> Deferred[None]:
        return self._call("close", self.session.close).addErrback(lambda _: None)

    def write(self, data: bytes) -> None:
        self._sync("write", self.session.write, data)

    def registerProducer(self, producer, streaming: bool) -> None:
        self._sync("registerProducer", self.session.registerProducer, producer, streaming)

    def unregisterProducer(self) -> None:
        self._sync("unregisterProducer", self.session.unregisterProducer)

    def abort(self) -> None:
        self._sync("abort", self.session.abort)

    def _sync(self, method: str, f, *args):
        """A synchronous call; a plugin error marks the session broken (not alive)."""
        try:
            return f(*args)
        except Exception:
            self._failed = True
            self.log.failure("upstream type {type} failed in {method}", type=self.upstreamType, method=method)
            return None

    def _call(self, method: str, f, *args) -> Deferred:
        return maybeDeferred(f, *args).addErrback(self._contain, method)

    def _contain(self, failure, method: str):
        if failure.check(UpstreamError):
            return failure
        self._failed = True
        self.log.failure("upstream type {type} failed in {method}", failure, type=self.upstreamType, method=method)
        raise UpstreamError(
            "protocol", f"upstream type {self.upstreamType} failed in {method}: {failure.getErrorMessage()}"
        )

    def _reply(self, reply: object, method: str) -> Reply:
        if not isinstance(reply, Reply):
            self._failed = True
            raise UpstreamError(
                "protocol", f"upstream type {self.upstreamType} answered {method} with {reply!r}, not a Reply"
            )
        return self._closing(reply)

    def _closing(self, reply: Reply) -> Reply:
        """
        An upstream's 421 closes the upstream's connection, not our client's
        session: the client gets it as a 451 (same text) and the session is
        not used again.
        """
        if reply.code != 421:
            return reply
        self._failed = True
        enhanced = reply.enhanced if reply.enhanced and reply.enhanced.startswith("4.") else "4.4.2"
        return Reply(451, enhanced, reply.lines)

    def _replies(self, replies: object) -> list[Reply]:
        if not isinstance(replies, (list, tuple)) or not replies or not all(isinstance(r, Reply) for r in replies):
            self._failed = True
            raise UpstreamError(
                "protocol", f"upstream type {self.upstreamType} answered end with {replies!r}, not replies"
            )
        return [self._closing(reply) for reply in replies]


class UpstreamPool:
    """
    The upstream sessions of one relay process.

    @param types: upstream types by URL scheme.
    @param idleTimeout: seconds an unused session stays open.
    @param maxPerUpstream: sessions open at once to one upstream URL; beyond
        it a transaction waits for a session to come back, for at most the
        context's timeout.
    @param reporter: told of every session opened (C{upstreamOpened(type,
        seconds, tlsVersion)}), every failure to open one
        (C{upstreamError(type, kind)}) and of upstreams going down and up
        (C{upstreamState(tenant, url, up)}); a
        L{relay.telemetry.report.Reporter}.
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
        self._idle: dict[UpstreamURL, list[tuple[Lease, IDelayedCall]]] = defaultdict(list)
        self._open: dict[UpstreamURL, int] = defaultdict(int)
        self._waiting: dict[UpstreamURL, deque[Deferred[tuple[Lease, bool]]]] = defaultdict(deque)
        self._leases: set[Lease] = set()
        self._tenants: dict[UpstreamURL, set[str]] = defaultdict(set)  # who routes to it, for the gauge
        self.breaker = Breaker(context.reactor, onChange=self._stateChanged)

    def _stateChanged(self, url: UpstreamURL, up: bool) -> None:
        for tenant in sorted(self._tenants[url]):
            self._reporter.upstreamState(tenant, url.redacted(), up)

    def route(self, tenant: Tenant) -> Route:
        """
        The tenant's upstreams for one transaction, in the order they are
        tried; a session to the first is opened (or taken from the pool) at
        once, while the client goes on with its envelope.
        """
        for upstream in tenant.upstreams:
            if tenant.name not in self._tenants[upstream.url]:
                self._tenants[upstream.url].add(tenant.name)
                up = not self.breaker.isDown(upstream.url)
                self._reporter.upstreamState(tenant.name, upstream.url.redacted(), up)
        return Route(self, tenant)

    def _inOrder(self, upstreams: tuple[Upstream, ...]) -> list[Upstream]:
        """By priority (equal ones shuffled), those marked down last; a down one whose back-off is over probed."""
        ordered = sorted(upstreams, key=lambda u: (self.breaker.isDown(u.url), u.priority, self._random.random()))
        if ordered and not self.breaker.isDown(ordered[0].url):  # someone can take the mail meanwhile
            for upstream in ordered:
                if self.breaker.isDown(upstream.url) and self.breaker.probeDue(upstream.url):
                    self._probe(upstream.url)
        return ordered

    def _probe(self, url: UpstreamURL) -> None:
        """Check a down upstream in the background; a session it opens is kept for the next transaction."""
        if self._open[url] >= self._max:
            return
        self.breaker.probing(url, True)

        def done(result):
            self.breaker.probing(url, False)
            if isinstance(result, tuple):
                self._reuse(result[0])

        self._connect(url).addBoth(done)

    def _acquire(self, url: UpstreamURL) -> Deferred[tuple[Lease, bool]]:
        """A session to C{url}: idle if one is, new if under the cap, else wait."""
        idle = self._idle[url]
        while idle:
            lease, timer = idle.pop()
            timer.cancel()
            if lease.reusable(self._context.reactor.seconds()):
                return succeed((lease, True))
            self._forget(lease)
            lease.close()
        if self.breaker.isDown(url):  # only its probe: this attempt, if none is under way
            if not self.breaker.probeDue(url):
                again = self.breaker.retryIn(url)
                return fail(UpstreamError("down", f"marked down after failures; tried again in {again:.0f} s"))
            self.breaker.probing(url, True)
            return self._connect(url).addBoth(self._probed, url)
        if self._open[url] < self._max:
            return self._connect(url)
        waiter: Deferred[tuple[Lease, bool]] = Deferred()
        self._waiting[url].append(waiter)
        return waiter.addTimeout(self._context.timeout, self._context.reactor, self._busy)

    def _probed(self, result, url: UpstreamURL):
        self.breaker.probing(url, False)
        return result

    def _busy(self, result, timeout):
        raise UpstreamError("busy", "too many connections to this upstream")

    def _connect(self, url: UpstreamURL) -> Deferred[tuple[Lease, bool]]:
        kind = self._types.get(url.scheme)
        if kind is None:
            return fail(UpstreamError("connect", f"no upstream type installed for {url.scheme}://"))
        self._open[url] += 1
        started = self._context.reactor.seconds()

        def opened(session: IUpstreamSession) -> tuple[Lease, bool]:
            try:
                conformance(IUpstreamSession, session)
            except PluginError as e:
                session.abort()
                raise UpstreamError(
                    "nonconforming", f"upstream type {kind.name} gave a session it cannot use: {e}"
                ) from None
            lease = Lease(session, url, kind.name)
            self._leases.add(lease)
            self.breaker.succeeded(url)
            elapsed = self._context.reactor.seconds() - started
            tls = session.tlsVersion if IUpstreamTLS.providedBy(session) else None
            self._reporter.upstreamOpened(kind.name, elapsed, tls)
            return lease, False

        def failed(failure):
            self._closed(url)
            if not failure.check(UpstreamError):
                self.log.failure(
                    "upstream type {type} failed to open {url}", failure, type=kind.name, url=url.redacted()
                )
                failure = Failure(
                    UpstreamError("protocol", f"upstream type {kind.name} failed: {failure.getErrorMessage()}")
                )
            self._reporter.upstreamError(kind.name, failure.value.kind)
            if failure.value.kind in DOWN_KINDS:
                backoff = self.breaker.failed(url)
                self.log.warn(
                    "upstream {url} marked down for {backoff:.0f} s: {error}",
                    url=url.redacted(),
                    backoff=backoff,
                    error=failure.value,
                )
            return failure

        return maybeDeferred(kind.open, url, self._context).addCallback(opened).addErrback(failed)

    def release(self, lease: Lease, reusable: bool) -> None:
        """
        Hand a session back after a transaction, however it ended.  A
        reusable one is reset (always: the plugin contract) and kept for
        the next transaction; one that is not, or whose reset fails, is
        aborted.
        """
        if lease not in self._leases:
            return
        if not reusable or not lease.alive:
            lease.abort()
            self._forget(lease)
            return
        if not lease.reusable(self._context.reactor.seconds()):  # its credentials expire: QUIT
            self._forget(lease)
            lease.close()
            return
        lease.reset().addCallbacks(lambda _: self._reuse(lease), lambda _: self.release(lease, False))

    def _reuse(self, lease: Lease) -> None:
        if lease not in self._leases:
            return
        if not lease.alive:
            self.release(lease, False)
            return
        waiting = self._waiting[lease.url]
        while waiting:
            waiter = waiting.popleft()
            if not waiter.called:
                waiter.callback((lease, True))
                return
        timer = self._context.reactor.callLater(self._idleTimeout, self._expire, lease)
        self._idle[lease.url].append((lease, timer))

    def _expire(self, lease: Lease) -> None:
        self._idle[lease.url] = [(each, t) for each, t in self._idle[lease.url] if each is not lease]
        self._forget(lease)
        lease.close()

    def _forget(self, lease: Lease) -> None:
        self._leases.discard(lease)
        self._closed(lease.url)

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
        for idle in self._idle.values():
            for lease, timer in idle:
                timer.cancel()
                self._leases.discard(lease)
                closing.append(lease.close())
            idle.clear()
        return gatherResults(closing).addCallback(lambda _: None)


@dataclass(frozen=True, slots=True)
class Opening:
    """
    A transaction begun at an upstream: MAIL and the first RCPT sent (in one
    write to an upstream with PIPELINING).

    @ivar mail: the upstream's reply to MAIL: positive, or a permanent
        refusal (temporary ones moved on to the next upstream).
    @ivar rcpt: fires with its reply to the first RCPT.
    """

    lease: Lease
    mail: Reply
    rcpt: Deferred[Reply]


def _ignored(failure: Failure) -> None:
    """The reply of a command sent with one that failed: its outcome is that one's."""


class Route:
    """
    One transaction's way through a tenant's upstreams (docs/design.md §2):
    while nothing has been streamed, an upstream that cannot be reached, that
    breaks, or that refuses MAIL with a 4xx moves the transaction on to the
    next one; a reused session that broke is tried once more, fresh.
    """

    log = Logger()

    def __init__(self, pool: UpstreamPool, tenant: Tenant):
        self._pool = pool
        self._tenant = tenant
        self._candidates: deque[Upstream] = deque(pool._inOrder(tenant.upstreams))
        self._again: set[UpstreamURL] = set()  # upstreams whose reused session broke: retried fresh once
        self._prefetch: Deferred[tuple[Lease, bool]] | None = None
        self._startedAt: Upstream | None = None
        if self._candidates:
            self._startedAt = self._candidates.popleft()
            self._prefetch = pool._acquire(self._startedAt.url)

    def start(self, sender: str, mailParameters: dict, recipient: str, rcptParameters: dict) -> Deferred[Opening]:
        """
        Begin the transaction at the first upstream that takes it.

        @return: a Deferred firing with the L{Opening}, or failing with the
            last L{UpstreamError} when no upstream took it.
        """
        return Deferred.fromCoroutine(self._start(sender, mailParameters, recipient, rcptParameters))

    async def _start(self, sender: str, mailParameters: dict, recipient: str, rcptParameters: dict) -> Opening:
        error: UpstreamError | None = None
        while True:
            try:
                upstream, lease, reused = await self._next()
            except UpstreamError as e:
                raise error or e from None
            except _Unreachable as e:
                error = e.error
                continue
            mail = lease.mailFrom(sender, mailParameters)
            rcpt = lease.rcptTo(recipient, rcptParameters)
            try:
                reply = await mail
            except UpstreamError as e:
                rcpt.addErrback(_ignored)
                self._pool._reporter.upstreamError(lease.upstreamType, e.kind)
                self._pool.release(lease, reusable=False)
                if reused and upstream.url not in self._again:  # it may have died while idle
                    self._again.add(upstream.url)
                    self._candidates.appendleft(upstream)
                error = e
                continue
            if reply.transient:
                rcpt.addErrback(_ignored)
                self.log.warn(
                    "upstream {url} of {tenant} refused MAIL for now ({code} {text}); trying the next one",
                    url=upstream.url.redacted(),
                    tenant=self._tenant.name,
                    code=reply.code,
                    text=reply.text,
                )
                self._pool.release(lease, reusable=True)
                error = UpstreamError("mail", f"MAIL refused: {reply.code} {reply.text}", reply)
                continue
            return Opening(lease, reply, rcpt)

    async def _next(self) -> tuple[Upstream, Lease, bool]:
        """The next upstream to try and a session to it."""
        if self._prefetch is not None:
            upstream, d = self._startedAt, self._prefetch
            self._prefetch = None
        elif self._candidates:
            upstream = self._candidates.popleft()
            d = self._pool._acquire(upstream.url)
        else:
            raise UpstreamError("connect", f"tenant {self._tenant.name} has no upstream left to try")
        assert upstream is not None
        try:
            lease, reused = await d
        except UpstreamError as e:
            self.log.warn(
                "upstream {url} of {tenant} unavailable: {error}",
                url=upstream.url.redacted(),
                tenant=self._tenant.name,
                error=e,
            )
            raise _Unreachable(e) from None
        return upstream, lease, reused

    def cancel(self) -> None:
        """The transaction ended before it began (RSET, QUIT): give back the session opened for it."""
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            prefetch.addCallbacks(lambda result: self._pool.release(result[0], reusable=True), _ignored)


class _Unreachable(Exception):
    """One upstream could not be reached; the next is tried."""

    def __init__(self, error: UpstreamError):
        self.error = error
