"""
Flow control towards the client: reading from the client's connection stops
while any part of the relay has a reason to wait (the upstream cannot keep
up, a policy is deciding, too much input is buffered) and resumes when none
has.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer

__all__ = ["Throttle"]


class Throttle:
    """
    Pauses a push producer (the client's transport) while any reason holds.

    A transport's C{pauseProducing} does not nest, so the reasons are
    counted here: the transport resumes only when the last one is released.
    """

    def __init__(self, producer: IPushProducer):
        self._producer = producer
        self._reasons: set[str] = set()

    def hold(self, reason: str) -> None:
        if not self._reasons:
            self._producer.pauseProducing()
        self._reasons.add(reason)

    def release(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons:
            self._producer.resumeProducing()
