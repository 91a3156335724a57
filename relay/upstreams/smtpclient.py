"""
Our SMTP client: the protocol that talks to an upstream, and the
L{IUpstreamSession} built on it.

Not C{twisted.mail.smtp.ESMTPClient}: that client dot-stuffs wrongly at
chunk boundaries and keeps plaintext buffered across STARTTLS.  This one
matches replies to commands in order (so commands may be pipelined), discards
whatever follows the upstream's C{220} to STARTTLS (CVE-2011-0411 class) and
stuffs dots correctly however the message is split.

Round trips to a distant upstream dominate a message's time (docs/design.md
§2), so the session spends as few as the upstream's extensions allow:

 - with PIPELINING (RFC 2920), MAIL is held and written with the first
   RCPT, in one write;
 - with CHUNKING (RFC 3030), the body goes as C{BDAT} chunks, un-stuffed,
   pipelined (never waiting for a chunk's reply), the last one
   C{BDAT n LAST}; there is no C{DATA} and no 354 to wait for.  A chunk the
   upstream refuses ends the transaction: later chunks are not sent, and
   its refusal is the final reply;
 - otherwise C{DATA}, the 354, then the dot-stuffed body.

SMTPUTF8 (RFC 6531) and DSN (RFC 3461) parameters are passed on when the
upstream offers them.  A transaction that needs SMTPUTF8 towards an upstream
without it is refused here (C{553 5.6.7}), before anything is sent; DSN
parameters towards an upstream without DSN are dropped, and logged.
"""

from __future__ import annotations

from collections import deque

from OpenSSL.SSL import Error as TLSError
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relay.core.reply import Reply
from relay.core.twistedprivate import noDelay, writeNow
from relay.seams.interfaces import IUpstreamSession, IUpstreamTLS
from relay.seams.types import IStreamTransport
from relay.seams.upstream import UpstreamError

__all__ = ["SMTPClientProtocol", "SMTPSession"]

MAX_REPLY_LINE = 2048  # generous: RFC 5321 §4.5.3.1.5 allows 512
MAX_REPLY_LINES = 100
MAIL_DSN = ("RET", "ENVID")  # RFC 3461 §4.3, §4.4
RCPT_DSN = ("NOTIFY", "ORCPT")  # RFC 3461 §4.1, §4.2
NEEDS_SMTPUTF8 = Reply.of(553, "5.6.7", "The upstream does not accept internationalised mail (no SMTPUTF8)")
CHUNK_GO_AHEAD = Reply.of(354, None, "Go ahead (sent as BDAT chunks)")


class SMTPClientProtocol(Protocol):
    """
    Sends command lines and fires one Deferred per reply, in order.

    The server has C{timeout} seconds for each reply (or the timeout given
    with it), counted from the command, or from the reply before it when
    commands are pipelined.  One timer per connection keeps that deadline:
    it is moved, not re-created, as replies come in.

    @ivar greeting: fires with the server's greeting reply.
    """

    transport: IStreamTransport

    def __init__(self, clock: IReactorTime, timeout: float):
        self._clock = clock
        self._timeout = timeout
        self._buffer = b""
        self._lines: list[bytes] = []
        self._waiting: deque[tuple[Deferred[Reply], bool, float]] = deque()
        self._held: list[bytes] = []  # commands written with the next one
        self._since = 0.0  # when the oldest waiting reply's time started
        self._timer: IDelayedCall | None = None
        self._error: UpstreamError | None = None
        self.lost = False
        self.greeting = self._expect(False, timeout)

    @property
    def alive(self) -> bool:
        return self._error is None and bool(self.connected)

    def connectionMade(self) -> None:
        noDelay(self.transport)

    def send(self, line: bytes, discardAfter: bool = False, payload: bytes = b"") -> Deferred[Reply]:
        """
        Send one command line (without CRLF), after any held ones, in one write.

        @param discardAfter: drop any bytes the server sent after this
            command's reply (STARTTLS).
        @param payload: bytes that follow the line (a BDAT chunk).
        @return: a Deferred firing with the reply or failing with
            L{UpstreamError}.
        """
        if self._error is not None:
            return fail(self._error)
        self.write(line + b"\r\n" + payload)
        return self._expect(discardAfter, self._timeout)

    def hold(self, line: bytes) -> Deferred[Reply]:
        """A command written with the next one (PIPELINING); its reply comes first."""
        if self._error is not None:
            return fail(self._error)
        self._held.append(line + b"\r\n")
        return self._expect(False, self._timeout)

    def write(self, data: bytes) -> None:
        """Raw bytes (message data), after any held commands."""
        if self._held:
            data, self._held = b"".join(self._held) + data, []
        writeNow(self.transport, data)

    def expectReply(self, timeout: float | None = None) -> Deferred[Reply]:
        """Wait for one more reply without sending a command (end of data)."""
        if self._error is not None:
            return fail(self._error)
        return self._expect(False, self._timeout if timeout is None else timeout)

    def abort(self, message: str) -> None:
        """Drop the connection at once; waiting commands fail."""
        self._failAll(UpstreamError("lost", message))
        self.transport.abortConnection()

    def _expect(self, discardAfter: bool, timeout: float) -> Deferred[Reply]:
        d: Deferred[Reply] = Deferred()
        if not self._waiting:
            self._since = self._clock.seconds()
        self._waiting.append((d, discardAfter, timeout))
        if self._timer is None:
            self._timer = self._clock.callLater(self._waiting[0][2], self._checkDeadline)
        return d

    def _checkDeadline(self) -> None:
        """The timer fired: fail if the oldest reply is overdue, else wait on."""
        self._timer = None
        if not self._waiting:
            return
        timeout = self._waiting[0][2]
        left = self._since + timeout - self._clock.seconds()
        if left > 0:
            self._timer = self._clock.callLater(left, self._checkDeadline)
        else:
            self._broken("timeout", f"no reply within {timeout:g}s")

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while self._error is None:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    self._broken("protocol", "reply line too long")
                return
            line = self._buffer[:end].rstrip(b"\r")
            self._buffer = self._buffer[end + 1 :]
            self._lines.append(line)
            if line[3:4] == b"-":
                if len(self._lines) > MAX_REPLY_LINES:
                    self._broken("protocol", "reply too long")
                continue
            lines, self._lines = self._lines, []
            try:
                reply = Reply.parse(lines)
            except ValueError as e:
                self._broken("protocol", f"garbage from upstream: {e}")
                return
            if not self._waiting:
                self._broken("protocol", "reply without a command")
                return
            d, discardAfter, _ = self._waiting.popleft()
            if self._waiting:
                self._since = self._clock.seconds()
            if discardAfter:
                self._buffer = b""
            d.callback(reply)

    def _broken(self, kind: str, message: str) -> None:
        """The conversation cannot go on: fail every waiting command, drop."""
        self._failAll(UpstreamError(kind, message))
        self.transport.abortConnection()

    def _failAll(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held = []
        while self._waiting:
            d, _, _ = self._waiting.popleft()
            d.errback(Failure(self._error))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        if reason.check(TLSError):
            self._failAll(UpstreamError("tls", f"TLS failed: {reason.getErrorMessage()}"))
        else:
            self._failAll(UpstreamError("lost", "upstream closed the connection"))


def _consumed(failure: Failure) -> None:
    """The reply of a command whose outcome no longer matters (it was answered otherwise)."""


@implementer(IUpstreamSession, IUpstreamTLS)
class SMTPSession:
    """
    One SMTP (or LMTP) connection ready for transactions.

    @ivar extensions: the EHLO keywords the upstream offered, upper case,
        mapped to their parameters.
    @ivar tlsVersion: the TLS version in use, or C{None}.
    @param finalTimeout: seconds to wait for the reply to the end of data.
    """

    log = Logger()

    def __init__(
        self,
        protocol: SMTPClientProtocol,
        extensions: dict[str, str],
        tlsVersion: str | None = None,
        finalTimeout: float = 540.0,
        peer: str = "",
    ):
        self._protocol = protocol
        self.extensions = extensions
        self.tlsVersion = tlsVersion
        self._finalTimeout = finalTimeout
        self._peer = peer
        self._pipelining = "PIPELINING" in extensions
        self._chunking = "CHUNKING" in extensions
        self.reusableUntil: float | None = None  # an XOAUTH2 session's token expires then: not reused after
        self._forget()

    def _forget(self) -> None:
        """The state of one transaction, cleared by reset()."""
        self._inTransaction = False  # the server holds a transaction: RSET before the next one
        self._refusal: Reply | None = None  # refused here, before anything was sent
        self._utf8 = False
        self._atLineStart = True
        self._bdat = False  # this message goes as BDAT chunks
        self._chunk = b""  # the last chunk, held until it is known whether it is the last
        self._chunkReplies: list[Deferred[Reply]] = []
        self._chunkRefusal: Reply | None = None

    @property
    def alive(self) -> bool:
        return self._protocol.alive

    def _mailParameters(self, parameters: dict[str, str | None]) -> bytes:
        """The MAIL parameters this upstream understands."""
        passed = []
        size, body = parameters.get("SIZE"), parameters.get("BODY")
        if size is not None and "SIZE" in self.extensions:
            passed.append(b" SIZE=" + size.encode("ascii"))
        if body is not None and "8BITMIME" in self.extensions:
            passed.append(b" BODY=" + body.encode("ascii"))
        if "SMTPUTF8" in parameters:
            passed.append(b" SMTPUTF8")
        passed += self._dsn(parameters, MAIL_DSN)
        return b"".join(passed)

    def _dsn(self, parameters: dict[str, str | None], keys: tuple[str, ...]) -> list[bytes]:
        given = [key for key in keys if key in parameters]
        if not given:
            return []
        if "DSN" not in self.extensions:
            self.log.info("{peer} does not offer DSN: {keys} not passed on", peer=self._peer, keys=",".join(given))
            return []
        return [f" {key}={parameters[key]}".encode("ascii") for key in given]

    def mailFrom(self, sender: str, parameters: dict[str, str | None]) -> Deferred[Reply]:
        self._utf8 = "SMTPUTF8" in parameters
        if self._utf8 and "SMTPUTF8" not in self.extensions:
            self._refusal = NEEDS_SMTPUTF8
            return succeed(NEEDS_SMTPUTF8)
        self._inTransaction = True
        line = b"MAIL FROM:<" + sender.encode("utf-8") + b">" + self._mailParameters(parameters)
        return self._protocol.hold(line) if self._pipelining else self._protocol.send(line)

    def rcptTo(self, recipient: str, parameters: dict[str, str | None]) -> Deferred[Reply]:
        if self._refusal is not None:
            return succeed(self._refusal)
        line = b"RCPT TO:<" + recipient.encode("utf-8") + b">" + b"".join(self._dsn(parameters, RCPT_DSN))
        return self._protocol.send(line)

    def data(self) -> Deferred[Reply]:
        if self._refusal is not None:
            return succeed(self._refusal)
        self._atLineStart = True
        if self._chunking:
            self._bdat = True
            return succeed(CHUNK_GO_AHEAD)
        return self._protocol.send(b"DATA")

    def write(self, data: bytes) -> None:
        """Send message bytes: as BDAT chunks, or dot-stuffed (RFC 5321 §4.5.2)."""
        if not data:
            return
        if self._bdat:
            self._sendChunk()
            self._chunk = data
            return
        if self._atLineStart and data[:1] == b".":
            data = b"." + data
        data = data.replace(b"\n.", b"\n..")
        self._atLineStart = data[-1:] == b"\n"
        self._protocol.write(data)

    def _sendChunk(self) -> None:
        """The chunk held is not the last: send it, without waiting for its reply."""
        chunk, self._chunk = self._chunk, b""
        if not chunk or self._chunkRefusal is not None:
            return
        d = self._protocol.send(b"BDAT %d" % len(chunk), payload=chunk)
        self._chunkReplies.append(d.addCallback(self._chunkAnswered))

    def _chunkAnswered(self, reply: Reply) -> Reply:
        if not reply.positive and self._chunkRefusal is None:
            self._chunkRefusal = reply  # the transaction is over: nothing more is sent
        return reply

    def registerProducer(self, producer, streaming: bool) -> None:
        self._protocol.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if not self._protocol.lost:  # a closed TLS transport has nothing to unregister from
            self._protocol.transport.unregisterProducer()

    def end(self) -> Deferred[list[Reply]]:
        if not self._bdat:
            self._protocol.write(b".\r\n" if self._atLineStart else b"\r\n.\r\n")
            return self._endReplies().addCallback(self._ended)
        earlier: list[Deferred] = list(self._chunkReplies)
        last: Deferred[list[Reply]]
        if self._chunkRefusal is None:
            chunk, self._chunk = self._chunk, b""
            self._protocol.write(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
            last = self._endReplies()
        else:
            last = succeed([])

        def final(results: list) -> list[Reply]:
            *_, replies = results
            self._inTransaction = False
            return [self._chunkRefusal] if self._chunkRefusal is not None else replies

        d: Deferred[list] = gatherResults([*earlier, last], consumeErrors=True)
        return d.addCallbacks(final, lambda failure: failure.value.subFailure)

    def _endReplies(self) -> Deferred[list[Reply]]:
        """
        Wait for the replies to the end of the message: one for the whole
        message (LMTP overrides this: one per accepted recipient), within
        the final timeout.
        """
        return self._protocol.expectReply(self._finalTimeout).addCallback(lambda reply: [reply])

    def _ended(self, replies: list[Reply]) -> list[Reply]:
        self._inTransaction = False  # answered: the server has forgotten the transaction (RFC 5321 §4.1.1.4)
        return replies

    def abort(self) -> None:
        self._protocol.abort("transaction aborted")

    def reset(self) -> Deferred[None]:
        """
        C{RSET} when the server still holds part of a transaction (MAIL or
        RCPT accepted, DATA refused, ...); after an answered final reply it
        holds nothing, and no round trip is spent.
        """
        for reply in self._chunkReplies:
            reply.addErrback(_consumed)
        held = self._inTransaction
        self._forget()
        if not held:
            return succeed(None)

        def checked(reply: Reply) -> None:
            if reply.code != 250:
                raise UpstreamError("protocol", f"RSET refused: {reply.text}", reply)

        return self._protocol.send(b"RSET").addCallback(checked)

    def close(self) -> Deferred[None]:
        if not self.alive:
            return succeed(None)
        d = self._protocol.send(b"QUIT")
        d.addBoth(lambda _: self._protocol.transport.loseConnection())
        return d.addBoth(lambda _: None)
