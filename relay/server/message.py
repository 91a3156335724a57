"""
One message streaming from the client to the upstream.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from relay.core.envelope import ClientInfo, Transaction
from relay.core.headers import MAX_HEADER_BLOCK, HeaderBlock, splitHeaderBlock
from relay.core.reply import Reply
from relay.core.verdict import Verdict
from relay.policy.chain import PolicyChain
from relay.seams.upstream import UpstreamError
from relay.server.throttle import Throttle
from relay.upstreams.pool import Lease

__all__ = ["MessageStream"]

HEADER_TOO_BIG = Reply.of(552, "5.3.4", "Message header block exceeds 64 KiB")
# A first line starting with white space would continue our own Received: field (RFC 5322 §2.2.3).
FOLDED_START = Reply.of(550, "5.6.0", "Message refused: the header section starts with a continuation line")
UPSTREAM_LOST = Reply.of(451, "4.4.2", "Upstream connection lost; message not delivered, try again")
MAX_UNREADY = 256 * 1024  # message bytes held for an upstream that has not said 354 yet (docs/design.md §2)
UPSTREAM_STALLED = Reply.of(451, "4.4.2", "Upstream stopped reading; message not delivered, try again")


@implementer(IPushProducer)
class _UpstreamFlow:
    """
    What the upstream pauses when it cannot keep up: the client.  An upstream
    that stays paused longer than C{timeout} is given up (C{onStall}), so
    the client is read again, long before its own DATA timeout (RFC 5321
    §4.5.3.2.5: 3 minutes per block).
    """

    def __init__(self, throttle: Throttle, clock, timeout: float, onStall):
        self._throttle = throttle
        self._clock = clock
        self._timeout = timeout
        self._onStall = onStall
        self._timer = None

    def pauseProducing(self) -> None:
        self._throttle.hold("upstream")
        if self._timer is None:
            self._timer = self._clock.callLater(self._timeout, self._stalled)

    def resumeProducing(self) -> None:
        self._stop()
        self._throttle.release("upstream")

    def stopProducing(self) -> None:
        self.resumeProducing()

    def _stop(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        self._onStall()
        self._throttle.release("upstream")


class MessageStream:
    """
    Carries one message's content (already un-dot-stuffed) into the
    upstream session.

    The client got our 354 at once (docs/design.md §2), so the upstream
    may not be ready yet: until its answer to DATA (C{ready}) is in, what is
    to be forwarded is held, at most L{MAX_UNREADY} bytes before the client
    is paused.  A refusal there is the client's reply after its dot.

    The header block is held until it is complete (or too big) so the
    header policies see it whole; the trace header and the block are then
    written upstream, and every later chunk is shown to the body policies
    and written as it arrives.  While a policy answers with a Deferred, later
    chunks wait in order and the client is paused.

    @ivar refusal: the reply the client gets at the end of data instead of
        the upstream's, once a policy refused, the upstream refused DATA or
        went away.
    @ivar dataRefused: the refusal is the upstream's answer to DATA (its
        session is fine: it is reset and reused).
    @ivar upstreamFailure: the L{UpstreamError} kind when the upstream
        failed while the message streamed (C{"lost"}, C{"stall"}, ...), else
        C{None}.
    """

    def __init__(
        self,
        client: ClientInfo,
        transaction: Transaction,
        upstream: Lease,
        policies: PolicyChain,
        trace: bytes,
        throttle: Throttle,
        clock,
        stallTimeout: float,
        ready: Deferred[Reply],
    ):
        self._client = client
        self._transaction = transaction
        self._upstream = upstream
        self._policies = policies
        self._trace = trace
        self._throttle = throttle
        self._header: bytearray | None = bytearray()
        self._backlog: deque[bytes] = deque()
        self._deciding = False
        self._drained: Deferred[None] | None = None
        self._attached = True
        self.refusal: Reply | None = None
        self.dataRefused = False
        self.upstreamFailure: str | None = None
        self._ready: bool | None = None  # the upstream's answer to DATA: pending, go ahead, refused
        self._unready: list[bytes] = []
        self._unreadySize = 0
        self._flow = _UpstreamFlow(throttle, clock, stallTimeout, self._stalled)
        upstream.registerProducer(self._flow, True)
        ready.addCallbacks(self._readied, self._notReady)

    def _readied(self, reply: Reply) -> None:
        if reply.code // 100 == 3:
            self._ready = True
            held, self._unready = b"".join(self._unready), []
            if held and self.refusal is None:
                self._upstream.write(held)
        else:
            self._ready = False
            if self.refusal is None:
                self.refuse(reply)
                self.dataRefused = True
        self._unready, self._unreadySize = [], 0
        self._throttle.release("unready")
        self._maybeDrained()

    def _notReady(self, failure: Failure) -> None:
        self._ready = False
        error = failure.value
        if self.refusal is None:
            self.refuse(UPSTREAM_LOST)
            self.upstreamFailure = error.kind if isinstance(error, UpstreamError) else "protocol"
        self._unready, self._unreadySize = [], 0
        self._throttle.release("unready")
        self._maybeDrained()

    def _forward(self, data: bytes) -> None:
        """Write upstream, or hold until the upstream is ready (pausing the client past the bound)."""
        if self._ready:
            self._upstream.write(data)
        elif self._ready is None:
            self._unready.append(data)
            self._unreadySize += len(data)
            if self._unreadySize > MAX_UNREADY:
                self._throttle.hold("unready")

    def _stalled(self) -> None:
        """The upstream stopped reading: give it up, keep reading the client until its dot."""
        self.refusal, self.upstreamFailure = UPSTREAM_STALLED, "stall"
        self._backlog.clear()
        self._upstream.abort()

    def write(self, content: bytes) -> None:
        """More of the message, in order."""
        if self._deciding:
            self._backlog.append(content)
        elif self.refusal is None:
            self._take(content)

    def _take(self, content: bytes) -> None:
        if self._header is None:
            self._transaction.size += len(content)
            self._decide(self._policies.check("bodyChunk", self._client, self._transaction, content), content, b"")
            return
        if not self._header and content[:1] in (b" ", b"\t"):
            self.refusal = FOLDED_START
            return
        self._header += content
        end = splitHeaderBlock(self._header)
        if end < 0:
            if len(self._header) > MAX_HEADER_BLOCK:
                self.refusal = HEADER_TOO_BIG
            return
        self._headersComplete(self._header, end)

    def _headersComplete(self, header: bytearray, end: int) -> None:
        block, body = bytes(header[:end]), bytes(header[end:])
        self._header = None
        self._transaction.size += len(block)
        headers = HeaderBlock(block)
        verdict = self._policies.check("headers", self._client, self._transaction, headers)
        messageIds = headers.get("Message-ID")  # parsed once, by the policies already
        self._transaction.messageId = messageIds[0].strip()[:998] if messageIds else None
        self._decide(verdict, self._trace + block, body)

    def _decide(self, verdict: Verdict | Deferred[Verdict], forward: bytes, then: bytes) -> None:
        """Once the verdict is in, forward C{forward} and go on with C{then}."""
        if isinstance(verdict, Deferred):
            self._deciding = True
            self._throttle.hold("policy")
            verdict.addCallback(self._decided, forward, then)
        else:
            self._apply(verdict, forward, then)

    def _decided(self, verdict: Verdict, forward: bytes, then: bytes) -> None:
        self._deciding = False
        self._throttle.release("policy")
        self._apply(verdict, forward, then)
        while self._backlog and not self._deciding and self.refusal is None:
            self._take(self._backlog.popleft())
        self._maybeDrained()

    def _maybeDrained(self) -> None:
        """Tell L{finish}'s caller once every chunk is decided and the upstream's answer to DATA is in."""
        drained = self._drained
        if drained is not None and not self._deciding and self._ready is not None:
            self._drained = None
            drained.callback(None)

    def _apply(self, verdict: Verdict, forward: bytes, then: bytes) -> None:
        if self.refusal is not None:
            return
        if verdict.refuses:
            self.refusal = verdict.reply
        elif not self._upstream.alive:
            self.refusal, self.upstreamFailure = UPSTREAM_LOST, "lost"
        else:
            self._forward(forward)
            if then:
                self._take(then)

    def refuse(self, reply: Reply) -> None:
        """Refuse the message (unless already refused): nothing more is looked at or forwarded."""
        if self.refusal is None:
            self.refusal = reply
            self._backlog.clear()

    def finish(self) -> Deferred[None]:
        """
        The client sent the final dot: fires when every chunk has been
        through the policies and written upstream, and the upstream has
        answered DATA.  A message without an empty line after its header is
        all header.
        """
        if self._header is not None and self.refusal is None:
            self._headersComplete(self._header, len(self._header))
        if not self._deciding and self._ready is not None:
            return succeed(None)
        self._drained = Deferred()
        return self._drained

    def stop(self) -> None:
        """Detach from the upstream (it no longer pauses the client)."""
        if self._attached:
            self._attached = False
            self._upstream.unregisterProducer()
            self._flow.resumeProducing()
