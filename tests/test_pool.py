"""
The upstream pool: priority order and failover, reuse between
transactions, the per-upstream cap and the idle timeout.
"""

from __future__ import annotations

import random

from twisted.internet.testing import MemoryReactorClock

from relay.telemetry.metrics import Metrics
from relay.telemetry.report import AddressRedactor, Reporter
from relay.core.tenant import Tenant, Upstream
from relay.testing import FakeUpstreamType
from relay.seams.upstream import UpstreamContext, UpstreamError
from relay.upstreams.pool import Release, UpstreamPool
from relay.core.urls import UpstreamURL


def pool(kind: FakeUpstreamType, **settings) -> tuple[UpstreamPool, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    context = UpstreamContext(reactor=reactor, hostname="relay.test", threadPool=None, timeout=30.0)
    reporter = Reporter(Metrics(processMetrics=False), AddressRedactor("full"))
    return UpstreamPool({"fake": kind}, context, reporter, **settings), reactor


def tenant(*hosts: tuple[str, int]) -> Tenant:
    return Tenant("acme", upstreams=tuple(Upstream(UpstreamURL.parse(f"fake://{h}"), p) for h, p in hosts))


def begin(p: UpstreamPool, t: Tenant):
    results = []
    p.begin(t, "a@example.com", {}).addBoth(results.append)
    assert results, "begin() should not wait here"
    return results[0]


def test_priority_order_and_failover():
    """The lowest priority number is tried first; an unreachable one is skipped."""
    kind = FakeUpstreamType()
    p, _ = pool(kind)
    session, reply = begin(p, tenant(("second", 20), ("first", 10)))
    assert session.peer == "first" and reply.code == 250
    kind.unreachable.add("first")
    p.release(session, Release.BROKEN)
    session, _ = begin(p, tenant(("second", 20), ("first", 10)))
    assert session.peer == "second"


def test_equal_priorities_share_the_load():
    """Upstreams of equal priority are chosen in random order."""
    kind = FakeUpstreamType()
    reactor = MemoryReactorClock()
    context = UpstreamContext(reactor=reactor, hostname="relay.test", threadPool=None)
    reporter = Reporter(Metrics(processMetrics=False), AddressRedactor("full"))
    p = UpstreamPool({"fake": kind}, context, reporter, chance=random.Random(7))
    peers = set()
    for _ in range(20):
        session, _ = begin(p, tenant(("a", 10), ("b", 10)))
        peers.add(session.peer)
        p.release(session, Release.BROKEN)
    assert peers == {"a", "b"}


def test_all_unreachable():
    """No upstream reachable: begin() fails with UpstreamError."""
    kind = FakeUpstreamType()
    kind.unreachable.update({"a", "b"})
    p, _ = pool(kind)
    failure = begin(p, tenant(("a", 10), ("b", 20)))
    assert failure.check(UpstreamError)


def test_reuse_clean_and_reset_dirty():
    """A clean session is reused as is; a dirty one after RSET."""
    kind = FakeUpstreamType()
    p, _ = pool(kind)
    session, _ = begin(p, tenant(("a", 10)))
    p.release(session, Release.CLEAN)
    again, _ = begin(p, tenant(("a", 10)))
    assert again is session and "RSET" not in session.calls
    p.release(again, Release.DIRTY)
    assert session.calls[-1] == "RSET"
    assert begin(p, tenant(("a", 10)))[0] is session
    assert len(kind.sessions) == 1


def test_dead_idle_session_replaced():
    """A pooled session that died while idle is not used; a fresh one is opened."""
    kind = FakeUpstreamType()
    p, _ = pool(kind)
    session, _ = begin(p, tenant(("a", 10)))
    p.release(session, Release.CLEAN)
    session.alive = False
    fresh, _ = begin(p, tenant(("a", 10)))
    assert fresh is not session and len(kind.sessions) == 2


def test_idle_timeout_closes():
    """An unused session is closed after the idle timeout."""
    kind = FakeUpstreamType()
    p, reactor = pool(kind, idleTimeout=30.0)
    session, _ = begin(p, tenant(("a", 10)))
    p.release(session, Release.CLEAN)
    reactor.advance(29)
    assert "QUIT" not in session.calls
    reactor.advance(1)
    assert session.calls[-1] == "QUIT"
    assert begin(p, tenant(("a", 10)))[0] is not session


def test_cap_waits_for_a_session():
    """At the cap a transaction waits for a session to come back, then reuses it."""
    kind = FakeUpstreamType()
    p, reactor = pool(kind, maxPerUpstream=1)
    session, _ = begin(p, tenant(("a", 10)))
    waiting = []
    p.begin(tenant(("a", 10)), "b@example.com", {}).addBoth(waiting.append)
    assert waiting == []
    p.release(session, Release.CLEAN)
    assert waiting[0][0] is session and len(kind.sessions) == 1


def test_cap_wait_times_out_to_next_upstream():
    """A transaction that waits too long for a capped upstream moves on to the next."""
    kind = FakeUpstreamType()
    p, reactor = pool(kind, maxPerUpstream=1)
    begin(p, tenant(("a", 10)))
    results = []
    p.begin(tenant(("a", 10), ("b", 20)), "b@example.com", {}).addBoth(results.append)
    reactor.advance(30)
    assert results[0][0].peer == "b"
