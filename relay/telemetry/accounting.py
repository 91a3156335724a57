"""
Usage accounting while relaying: counts per tenant and UTC day, added up in
memory and written to the store in batches (one transaction every few
seconds, never one per message), on the store's thread pool.

A batch the store refuses is kept and added to the next one; the last batch
is written when the relay stops, so a clean shutdown loses nothing.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from relay.store.values import COUNTERS, UsageDelta

__all__ = ["UsageRecorder"]

_EPOCH = date(1970, 1, 1)


class UsageRecorder:
    """
    @param store: has C{recordUsage(deltas)} (blocking; run on C{threadPool}).
    @param interval: seconds between batches.
    """

    log = Logger()

    def __init__(self, store, reactor, threadPool, interval: float = 10.0):
        self._store = store
        self._reactor = reactor
        self._pool = threadPool
        self._interval = interval
        self._pending: dict[tuple[str, int], Counter] = {}
        self._loop = LoopingCall(self.flush)
        self._loop.clock = reactor
        self._writing: Deferred[None] = succeed(None)

    def count(self, tenant: str, result: str, recipients: int, size: int) -> None:
        """One transaction ended with C{result} (relayed, rejected, tempfailed or aborted)."""
        day = int(self._reactor.seconds() // 86400)  # UTC days since the epoch
        counts = self._pending.get((tenant, day))
        if counts is None:
            counts = self._pending[tenant, day] = Counter()
        if result == "relayed":
            counts["relayed"] += 1
            counts["recipients"] += recipients
            counts["bytes"] += size
        elif result == "rejected":
            counts["rejected"] += 1
        else:
            counts["failed"] += 1

    def start(self) -> None:
        self._loop.start(self._interval, now=False)

    def flush(self) -> Deferred[None]:
        """Write what was counted since the last batch (one batch at a time)."""
        self._writing.addCallback(lambda _: self._write())
        return self._writing

    def _write(self) -> Deferred[None] | None:
        batch, self._pending = self._pending, {}
        if not batch:
            return None
        deltas = [
            UsageDelta(tenant, _EPOCH + timedelta(days=day), **{name: counts[name] for name in COUNTERS})
            for (tenant, day), counts in batch.items()
        ]

        def failed(failure) -> None:
            self.log.failure("usage not written yet; kept for the next batch", failure)
            for key, counts in batch.items():
                self._pending.setdefault(key, Counter()).update(counts)

        return deferToThreadPool(self._reactor, self._pool, self._store.recordUsage, deltas).addErrback(failed)

    def stop(self) -> Deferred[None]:
        """Stop batching and write the last batch."""
        if self._loop.running:
            self._loop.stop()
        return self.flush()
