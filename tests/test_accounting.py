"""
The usage recorder: counts per tenant and day in memory, batches to the
store, keeps what the store refused, writes the rest at stop.
"""

from __future__ import annotations

from datetime import date

from relay.store.values import UsageDelta
from relay.telemetry.accounting import UsageRecorder
from relay.testing import InlineThreads

DAY = date(2026, 11, 28)


class Store:
    def __init__(self):
        self.batches = []
        self.down = False

    def recordUsage(self, deltas):
        if self.down:
            raise ConnectionError("store unreachable")
        self.batches.append(sorted(deltas, key=lambda d: (d.tenant, d.day)))


def recorder():
    reactor = InlineThreads()
    reactor.advance(1795824000 + 3600)  # 2026-11-28 01:00 UTC
    store = Store()
    usage = UsageRecorder(store, reactor, reactor, interval=10.0)
    usage.start()
    return usage, store, reactor


def test_batches_not_per_message():
    """Many transactions become one row per tenant and day, written once per interval."""
    usage, store, reactor = recorder()
    for _ in range(3):
        usage.count("acme", "relayed", 2, 100)
    usage.count("acme", "rejected", 1, 0)
    usage.count("acme", "tempfailed", 1, 0)
    usage.count("acme", "aborted", 1, 50)
    usage.count("beta", "relayed", 1, 10)
    assert store.batches == []
    reactor.advance(10)
    assert store.batches == [[
        UsageDelta("acme", DAY, relayed=3, recipients=6, bytes=300, rejected=1, failed=2),
        UsageDelta("beta", DAY, relayed=1, recipients=1, bytes=10),
    ]]  # fmt: skip
    reactor.advance(10)
    assert len(store.batches) == 1  # nothing new, nothing written


def test_refused_batch_kept():
    """A batch the store cannot take is added to the next one; nothing is lost."""
    usage, store, reactor = recorder()
    usage.count("acme", "relayed", 1, 10)
    store.down = True
    reactor.advance(10)
    usage.count("acme", "relayed", 1, 20)
    store.down = False
    reactor.advance(10)
    assert store.batches == [[UsageDelta("acme", DAY, relayed=2, recipients=2, bytes=30)]]


def test_stop_writes_the_rest():
    """Stopping writes what was counted since the last batch."""
    usage, store, reactor = recorder()
    usage.count("acme", "relayed", 1, 10)
    usage.stop()
    assert store.batches == [[UsageDelta("acme", DAY, relayed=1, recipients=1, bytes=10)]]
