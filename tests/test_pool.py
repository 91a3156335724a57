"""
The upstream pool and its routes: priority order and failover (a dead
upstream, a 4xx MAIL), reuse between transactions, the per-upstream cap and
the idle timeout.
"""

from __future__ import annotations

import random

from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from relay.core.reply import Reply
from relay.core.tenant import Tenant, Upstream
from relay.core.urls import UpstreamURL
from relay.seams.upstream import UpstreamContext, UpstreamError
from relay.telemetry.metrics import Metrics
from relay.telemetry.report import AddressRedactor, Reporter
from relay.testing import FakeUpstreamType
from relay.upstreams.pool import UpstreamPool


def pool(kind: FakeUpstreamType, **settings) -> tuple[UpstreamPool, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    context = UpstreamContext(reactor=reactor, hostname="relay.test", threadPool=None, timeout=30.0)
    reporter = Reporter(Metrics(processMetrics=False), AddressRedactor("full"))
    return UpstreamPool({"fake": kind}, context, reporter, **settings), reactor


def tenant(*hosts: tuple[str, int]) -> Tenant:
    return Tenant("acme", upstreams=tuple(Upstream(UpstreamURL.parse(f"fake://{h}"), p) for h, p in hosts))


def start(p: UpstreamPool, t: Tenant):
    """A route's start, as the relay calls it at the first RCPT: a Deferred of its Opening."""
    return p.route(t).start("a@example.com", {}, "b@example.net", {})


def begin(p: UpstreamPool, t: Tenant):
    """The lease and MAIL reply of a transaction begun at once, or the failure."""
    results = []
    start(p, t).addBoth(results.append)
    assert results, "start() should not wait here"
    if isinstance(results[0], Failure):
        return results[0]
    return results[0].lease, results[0].mail


def test_priority_order_and_failover():
    """The lowest priority number is tried first; an unreachable one is skipped."""
    kind = FakeUpstreamType()
    p, _ = pool(kind)
    lease, reply = begin(p, tenant(("second", 20), ("first", 10)))
    assert lease.session.host == "first" and lease.peer == "fake://first" and reply.code == 250
    kind.unreachable.add("first")
    p.release(lease, reusable=False)
    lease, _ = begin(p, tenant(("second", 20), ("first", 10)))
    assert lease.session.host == "second"


def test_equal_priorities_share_the_load():
    """Upstreams of equal priority are chosen in random order."""
    kind = FakeUpstreamType()
    reactor = MemoryReactorClock()
    context = UpstreamContext(reactor=reactor, hostname="relay.test", threadPool=None)
    reporter = Reporter(Metrics(processMetrics=False), AddressRedactor("full"))
    p = UpstreamPool({"fake": kind}, context, reporter, chance=random.Random(7))
    peers = set()
    for _ in range(20):
        lease, _ = begin(p, tenant(("a", 10), ("b", 10)))
        peers.add(lease.session.host)
        p.release(lease, reusable=False)
    assert peers == {"a", "b"}


def test_all_unreachable():
    """No upstream reachable: begin() fails with UpstreamError."""
    kind = FakeUpstreamType()
    kind.unreachable.update({"a", "b"})
    p, _ = pool(kind)
    failure = begin(p, tenant(("a", 10), ("b", 20)))
    assert failure.check(UpstreamError)


def test_reset_before_every_reuse():
    """A session is reset before it is reused, however its transaction ended (the plugin contract)."""
    kind = FakeUpstreamType()
    p, _ = pool(kind)
    lease, _ = begin(p, tenant(("a", 10)))
    p.release(lease, reusable=True)
    assert lease.session.calls == ["MAIL", "RCPT", "RSET"]
    again, _ = begin(p, tenant(("a", 10)))
    assert again is lease
    p.release(again, reusable=True)
    assert lease.session.calls == ["MAIL", "RCPT", "RSET", "MAIL", "RCPT", "RSET"]
    assert len(kind.sessions) == 1


def test_failed_reset_not_reused():
    """A session whose reset fails is aborted, never reused."""
    kind = FakeUpstreamType()
    p, _ = pool(kind)
    lease, _ = begin(p, tenant(("a", 10)))
    kind.errors.add("RSET")
    p.release(lease, reusable=True)
    assert lease.session.calls[-1] == "ABORT"
    assert begin(p, tenant(("a", 10)))[0] is not lease


def test_nonconforming_session_refused():
    """A session not providing IUpstreamSession is refused at open, before any message: the next upstream is used."""

    class Careless(FakeUpstreamType):
        def open(self, url, context):
            d = super().open(url, context)
            if url.host == "careless":
                d.addCallback(lambda session: (setattr(session, "reset", None), session)[1])
            return d

    kind = Careless()
    p, _ = pool(kind)
    lease, _ = begin(p, tenant(("careless", 10), ("b", 20)))
    assert lease.session.host == "b"
    assert kind.sessions[0].calls == ["ABORT"]


def test_plugin_errors_contained():
    """A type that raises in open, or a session that raises or answers garbage, is an UpstreamError, not a crash."""

    class Broken(FakeUpstreamType):
        def open(self, url, context):
            if url.host == "raises":
                raise RuntimeError("bug in open")
            return super().open(url, context)

    kind = Broken()
    p, _ = pool(kind)
    lease, _ = begin(p, tenant(("raises", 10), ("b", 20)))
    assert lease.session.host == "b"
    lease.session.rcptTo = lambda recipient, parameters: 1 / 0
    failures = []
    lease.rcptTo("x@example.net", {}).addErrback(failures.append)
    assert failures[0].check(UpstreamError) and failures[0].value.kind == "protocol"
    assert not lease.alive
    lease.session.data = lambda: "not a reply"
    lease.data().addErrback(failures.append)
    assert failures[1].value.kind == "protocol"


def test_dead_idle_session_replaced():
    """A pooled session that died while idle is not used; a fresh one is opened."""
    kind = FakeUpstreamType()
    p, _ = pool(kind)
    lease, _ = begin(p, tenant(("a", 10)))
    p.release(lease, reusable=True)
    lease.session.alive = False
    fresh, _ = begin(p, tenant(("a", 10)))
    assert fresh is not lease and len(kind.sessions) == 2


def test_idle_timeout_closes():
    """An unused session is closed after the idle timeout."""
    kind = FakeUpstreamType()
    p, reactor = pool(kind, idleTimeout=30.0)
    lease, _ = begin(p, tenant(("a", 10)))
    p.release(lease, reusable=True)
    reactor.advance(29)
    assert "QUIT" not in lease.session.calls
    reactor.advance(1)
    assert lease.session.calls[-1] == "QUIT"
    assert begin(p, tenant(("a", 10)))[0] is not lease


def test_cap_waits_for_a_session():
    """At the cap a transaction waits for a session to come back, then reuses it."""
    kind = FakeUpstreamType()
    p, reactor = pool(kind, maxPerUpstream=1)
    lease, _ = begin(p, tenant(("a", 10)))
    waiting = []
    start(p, tenant(("a", 10))).addCallback(lambda o: (o.lease, o.mail)).addBoth(waiting.append)
    assert waiting == []
    p.release(lease, reusable=True)
    assert waiting[0][0] is lease and len(kind.sessions) == 1


def test_cap_waiter_gets_a_new_session_when_one_closes():
    """At the cap, a session that is dropped lets the waiting transaction open a fresh one."""
    kind = FakeUpstreamType()
    p, reactor = pool(kind, maxPerUpstream=1)
    lease, _ = begin(p, tenant(("a", 10)))
    waiting = []
    start(p, tenant(("a", 10))).addCallback(lambda o: (o.lease, o.mail)).addBoth(waiting.append)
    p.release(lease, reusable=False)
    assert waiting[0][0] is not lease and len(kind.sessions) == 2


def test_cap_wait_times_out_to_next_upstream():
    """A transaction that waits too long for a capped upstream moves on to the next."""
    kind = FakeUpstreamType()
    p, reactor = pool(kind, maxPerUpstream=1)
    begin(p, tenant(("a", 10)))
    results = []
    start(p, tenant(("a", 10), ("b", 20))).addCallback(lambda o: (o.lease, o.mail)).addBoth(results.append)
    reactor.advance(30)
    assert results[0][0].session.host == "b"


def test_transient_mail_refusal_fails_over():
    """An upstream refusing MAIL with a 4xx is left for the next one (reset for reuse), before any RCPT reply."""
    kind = FakeUpstreamType()
    kind.replies["MAIL first"] = Reply.of(451, "4.3.0", "Try later")
    p, _ = pool(kind)
    lease, reply = begin(p, tenant(("first", 10), ("second", 20)))
    assert lease.session.host == "second" and reply.code == 250
    assert kind.sessions[0].calls == ["MAIL", "RCPT", "RSET"]


def test_permanent_mail_refusal_returned():
    """A 5xx to MAIL is the transaction's answer: no failover."""
    kind = FakeUpstreamType()
    kind.replies["MAIL first"] = Reply.of(550, "5.7.1", "Not from you")
    p, _ = pool(kind)
    lease, reply = begin(p, tenant(("first", 10), ("second", 20)))
    assert lease.session.host == "first" and reply.code == 550
    assert len(kind.sessions) == 1


def test_route_opens_at_once_and_gives_back_unused():
    """A route opens its first upstream when made; cancelled unused, the session goes back to the pool."""
    kind = FakeUpstreamType()
    p, _ = pool(kind)
    route = p.route(tenant(("a", 10)))
    assert len(kind.sessions) == 1
    route.cancel()
    assert begin(p, tenant(("a", 10)))[0].session is kind.sessions[0]


def upstreamUp(p: UpstreamPool, tenantName: str, host: str) -> float | None:
    return p._reporter.metrics.registry.get_sample_value(
        "smtprelay_upstream_up", {"tenant": tenantName, "upstream": f"fake://{host}"}
    )


def test_dead_upstream_remembered():
    """An upstream that failed to open is not tried again during its back-off: the next transaction goes elsewhere."""
    kind = FakeUpstreamType()
    kind.unreachable.add("first")
    p, _ = pool(kind)
    acme = tenant(("first", 10), ("second", 20))
    for _ in range(3):
        lease, _ = begin(p, acme)
        assert lease.session.host == "second"
        p.release(lease, reusable=False)
    assert kind.attempts == ["first", "second", "second", "second"]
    assert upstreamUp(p, "acme", "first") == 0 and upstreamUp(p, "acme", "second") == 1


def test_down_upstream_probed_in_the_background():
    """
    Once its back-off is over, a down upstream is probed without holding up
    a transaction (which goes to the next one); when the probe's session
    opens, the upstream is up, that session is used, and the gauge says so.
    """
    kind = FakeUpstreamType()
    kind.unreachable.add("first")
    p, reactor = pool(kind)
    acme = tenant(("first", 10), ("second", 20))
    lease, _ = begin(p, acme)
    p.release(lease, reusable=False)
    reactor.advance(5)  # the first back-off
    kind.unreachable.discard("first")
    lease, _ = begin(p, acme)
    assert lease.session.host == "second"  # this one did not wait for the probe
    assert kind.attempts[-2:] == ["first", "second"] and upstreamUp(p, "acme", "first") == 1
    p.release(lease, reusable=False)
    lease, _ = begin(p, acme)
    assert lease.session.host == "first" and kind.attempts.count("first") == 2  # the probe's session, kept


def test_back_off_grows_while_it_keeps_failing():
    """Each failed probe doubles the back-off (5 s, 10 s, ...); a sole upstream inside it is not even tried."""
    kind = FakeUpstreamType()
    kind.unreachable.add("only")
    p, reactor = pool(kind)
    solo = tenant(("only", 10))
    assert isinstance(begin(p, solo), Failure)
    failure = begin(p, solo)
    assert failure.value.kind == "down" and kind.attempts == ["only"]
    reactor.advance(5)
    assert isinstance(begin(p, solo), Failure) and kind.attempts == ["only", "only"]  # this one probed
    reactor.advance(5)
    assert begin(p, solo).value.kind == "down" and len(kind.attempts) == 2  # 10 s now
    reactor.advance(5)
    kind.unreachable.clear()
    lease, reply = begin(p, solo)
    assert reply.code == 250 and upstreamUp(p, "acme", "only") == 1


def test_mail_refusal_does_not_mark_down():
    """An upstream that answers (even 4xx to MAIL) is alive: it stays up."""
    kind = FakeUpstreamType()
    kind.replies["MAIL"] = Reply.of(451, "4.3.0", "Try later")
    p, _ = pool(kind)
    failure = begin(p, tenant(("first", 10)))
    assert isinstance(failure, Failure) and failure.value.kind == "mail"
    assert upstreamUp(p, "acme", "first") == 1 and not p.breaker.isDown(UpstreamURL.parse("fake://first"))
