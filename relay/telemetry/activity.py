"""
The relay's side of the activity log: each transaction's outcome, one row
per recipient, kept in memory and written to the store in batches on its
thread pool (every few seconds, and at shutdown), so no message waits on the
database.  A batch the store refuses is kept for the next one, up to a
bound past which the oldest rows are dropped (and the drop logged): the log
must never hold the relay's memory hostage.
"""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from relay.store.activity import ActivityRow

__all__ = ["ActivityRecorder"]

MAX_PENDING = 100_000


class ActivityRecorder:
    """
    @param log: has C{record(rows)} (blocking; run on C{threadPool}), a
        L{relay.store.activity.ActivityLog}.
    @param interval: seconds between batches.
    """

    log = Logger()

    def __init__(self, log, reactor, threadPool, interval: float = 2.0, maxPending: int = MAX_PENDING):
        self._store = log
        self._reactor = reactor
        self._pool = threadPool
        self._maxPending = maxPending
        self._pending: list[ActivityRow] = []
        self._loop = LoopingCall(self.flush)
        self._loop.clock = reactor
        self._interval = interval
        self._writing: Deferred[None] = succeed(None)

    def transaction(
        self,
        tenant: str,
        queueId: str,
        messageId: str | None,
        sender: str,
        recipients: list[str],
        size: int,
        upstream: str | None,
        reply: str,
        result: str,
    ) -> None:
        """One transaction's outcome, a row for each of its recipients."""
        at = datetime.fromtimestamp(self._reactor.seconds(), UTC)
        for recipient in recipients:
            self._pending.append(
                ActivityRow(tenant, at, queueId, messageId, sender, recipient, size, upstream, reply, result)
            )
        if len(self._pending) > self._maxPending:
            dropped = len(self._pending) - self._maxPending
            del self._pending[:dropped]
            self.log.error("activity log: the store is not taking rows; {dropped} oldest dropped", dropped=dropped)

    def start(self) -> None:
        self._loop.start(self._interval, now=False)

    def flush(self) -> Deferred[None]:
        """Write what arrived since the last batch (one batch at a time)."""
        self._writing.addCallback(lambda _: self._write())
        return self._writing

    def _write(self) -> Deferred[None] | None:
        batch, self._pending = self._pending, []
        if not batch:
            return None

        def failed(failure) -> None:
            self.log.failure("activity not written yet; kept for the next batch", failure)
            self._pending[:0] = batch

        d = deferToThreadPool(self._reactor, self._pool, self._store.record, batch)
        return d.addCallbacks(lambda _: None, failed)

    def stop(self) -> Deferred[None]:
        """Stop batching and write the last batch."""
        if self._loop.running:
            self._loop.stop()
        return self.flush()
