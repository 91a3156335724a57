"""
The SMTP server protocol: framing, ordering and flow control on the wire.

Input is read as it comes.  In the command phase lines are cut out of the
buffer and answered strictly in order; while one command waits (on a
policy, the credential checker or the upstream), later pipelined commands
wait in the buffer, and replies produced together go out in one write.
After our 354 the connection is read raw: each read goes through the
L{DataScanner} and straight on to the session, without a Python call per
line.

What each command means is the business of L{RelaySession}; this class
only knows which replies change the mode of the connection (STARTTLS,
DATA, AUTH challenges, QUIT, 421).
"""

from __future__ import annotations

import enum
from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relay.core.envelope import ClientInfo, newQueueId
from relay.core.reply import Reply
from relay.core.tls import tlsVersion
from relay.core.twistedprivate import noDelay, writeNow
from relay.seams.types import IStreamTransport
from relay.server.context import ServerContext
from relay.server.dataframe import DataScanner
from relay.server.session import RelaySession
from relay.server.throttle import Throttle

__all__ = ["SMTPServerFactory", "SMTPServerProtocol"]

MAX_COMMAND_LINE = 512  # octets including CRLF, RFC 5321 §4.5.3.1.4
MAX_AUTH_LINE = 12288  # octets, RFC 4954 §4
MAX_BUFFERED_INPUT = 64 * 1024  # pipelined input held while a command waits
MAX_UNSENT_OUTPUT = 64 * 1024  # replies made for a client that does not read them, before it is no longer read
CLOSE_GRACE = 5.0  # seconds a closing TLS connection may wait for the client's close_notify

LINE_TOO_LONG = Reply.of(500, "5.5.2", "Error: line too long")
LINE_NOT_ASCII = Reply.of(500, "5.5.2", "Error: 8-bit characters in command")
RUNAWAY_LINE = Reply.of(421, "4.5.2", "Error: line too long, closing connection")
EARLY_DATA = Reply.of(554, "5.5.0", "Error: message sent before our 354 reply (improper pipelining), closing")
IDLE = Reply.of(421, "4.4.2", "Error: timeout exceeded, closing connection")
LINE_TOO_SLOW = Reply.of(421, "4.4.2", "Error: command line not completed in time, closing connection")
INTERNAL = Reply.of(421, "4.3.0", "Error: internal error, closing connection")
TOO_MANY_ERRORS = Reply.of(421, "4.7.0", "Error: too many errors, closing connection")
DATA_TOO_SLOW = Reply.of(421, "4.4.2", "Error: message transfer took too long, closing connection")
SHUTTING_DOWN = Reply.of(421, "4.3.2", "Service shutting down, try again later")
# Every reply carries an enhanced status code (RFC 3463), whether or not the
# client said EHLO (as Postfix does), except a successful greeting and the
# answer to EHLO or HELO (RFC 2034 §3).
_NO_ENHANCED_CODE = ("EHLO", "HELO")


def _cancel(timer) -> None:
    if timer is not None and timer.active():
        timer.cancel()


class Mode(enum.Enum):
    """How the next bytes from the client are read."""

    COMMAND = "command"  # command lines, answered in order
    AUTH = "auth"  # the next line answers a 334 challenge
    DATA = "data"  # raw message bytes until CRLF . CRLF
    CLOSED = "closed"  # nothing more is read


# Which mode may follow which; anything else is a bug and raises.  AUTH may
# follow itself (LOGIN asks twice); CLOSED is final.
_TRANSITIONS: dict[Mode, frozenset[Mode]] = {
    Mode.COMMAND: frozenset({Mode.AUTH, Mode.DATA, Mode.CLOSED}),
    Mode.AUTH: frozenset({Mode.AUTH, Mode.COMMAND, Mode.CLOSED}),
    Mode.DATA: frozenset({Mode.COMMAND, Mode.CLOSED}),
    Mode.CLOSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """The protocol was asked for a mode change its table does not have: a bug."""


@implementer(IPushProducer)
class _OutputFlow:
    """
    Registered on the client's transport as its producer: the transport
    says when the replies it could not send yet pile up past its buffer
    (the client does not read them), and when they are gone.
    """

    def __init__(self, protocol: SMTPServerProtocol):
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol.holdOutput(True)

    def resumeProducing(self) -> None:
        self._protocol.holdOutput(False)

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost follows."""


@implementer(IHandshakeListener)
class SMTPServerProtocol(Protocol):
    """One client connection."""

    transport: IStreamTransport
    factory: SMTPServerFactory

    log = Logger()

    def __init__(self, context: ServerContext, implicitTLS: bool):
        self._ctx = context
        self._clock = context.reactor
        self._implicitTLS = implicitTLS
        self._mode = Mode.COMMAND
        self._input = b""
        self._output: list[bytes] = []
        self._outputSize = 0  # octets in _output
        self._outputHeld = False  # the client does not read its replies: stop making more
        # Commands whose replies are not sent yet, in order: [verb, reply or None while it is awaited].
        self._pending: deque[list] = deque()
        self._running = False  # inside _run: do not re-enter
        self._scanner: DataScanner | None = None
        self._lastActivity = 0.0
        self._timer = None
        self._lineTimer = None  # runs while an unfinished command line is buffered
        self._errors = 0
        self._admitted = False
        self._handshakeTimer = None
        self._dataTimer = None
        self._draining = False
        self._closing = None

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        noDelay(self.transport)
        peer = self.transport.getPeer()
        self.client = ClientInfo(newQueueId(), getattr(peer, "host", "local"), getattr(peer, "port", 0))
        self._throttle = Throttle(self.transport)
        self.transport.registerProducer(_OutputFlow(self), True)
        self.session = RelaySession(self._ctx, self.client, self._throttle, secure=self._implicitTLS)
        self._connected = self._lastActivity = self._clock.seconds()
        self._ctx.reporter.connectionOpened()
        refusal = self._ctx.guard.admit(self.client.address)
        if refusal is not None:
            self._ctx.reporter.refused("connections", self.client, refusal)
            self._answer(refusal, "CONNECT")
            return
        self._admitted = True
        self._timer = self._clock.callLater(self._ctx.idleTimeout, self._idleCheck)
        if self._implicitTLS:
            self._awaitHandshake()
        self._step("CONNECT", self.session.greeting())
        self._flush()

    def _awaitHandshake(self) -> None:
        """A client that does not complete the TLS handshake in time is dropped."""
        self._handshakeTimer = self._clock.callLater(self._ctx.handshakeTimeout, self.transport.abortConnection)

    def handshakeCompleted(self) -> None:
        _cancel(self._handshakeTimer)
        self.client.tls = tlsVersion(self.transport)
        self._ctx.reporter.tls("inbound", self.client.tls)

    @property
    def _waiting(self) -> bool:
        """A command's reply is not sent yet."""
        return bool(self._pending)

    def _mayOverlap(self) -> bool:
        """
        Whether the next buffered command may be handled while replies are
        awaited: an RCPT after RCPTs (the client pipelines its recipients,
        and they go upstream together, RFC 2920).  Everything else waits,
        and every reply goes out in order.
        """
        if self._mode is not Mode.COMMAND or any(verb != "RCPT" for verb, _ in self._pending):
            return False
        end = self._input.find(b"\n", 0, MAX_COMMAND_LINE)
        return end >= 0 and self._input[:5].upper() == b"RCPT "

    def _enter(self, mode: Mode) -> None:
        """Change mode, as L{_TRANSITIONS} allows."""
        if mode not in _TRANSITIONS[self._mode]:
            raise IllegalTransition(f"SMTP server: {self._mode.value} -> {mode.value}")
        self._mode = mode

    def dataReceived(self, data: bytes) -> None:
        if self._mode is Mode.CLOSED:
            return
        if self._mode is Mode.DATA:
            self._lastActivity = self._clock.seconds()
        self._input += data
        if (self._waiting or self._outputHeld) and len(self._input) > MAX_BUFFERED_INPUT:
            self._throttle.hold("input")
        self._watchLine(b"\n" in data)
        self._run()

    def _watchLine(self, lineEnded: bool) -> None:
        """
        Keep the deadline of the unfinished command line at the end of the
        input, if there is one: it runs from the line's first byte, and
        further bytes of it do not move it (RFC 5321 §4.5.3.2 counts whole
        commands; a byte now and then must not hold a connection).
        """
        if lineEnded:
            _cancel(self._lineTimer)
            self._lineTimer = None
        unfinished = self._mode in (Mode.COMMAND, Mode.AUTH) and self._input[-1:] not in (b"", b"\n")
        if not unfinished:
            _cancel(self._lineTimer)
            self._lineTimer = None
        elif self._lineTimer is None:
            self._lineTimer = self._clock.callLater(self._ctx.lineTimeout, self._lineTooSlow)

    def _lineTooSlow(self) -> None:
        self._lineTimer = None
        self._answer(LINE_TOO_SLOW, "TIMEOUT")
        self._flush()

    def holdOutput(self, held: bool) -> None:
        """
        The client stopped reading its replies (C{True}): stop answering
        its commands, so what is queued for it stays bounded (and stop
        reading it once L{MAX_BUFFERED_INPUT} waits); or it caught up.
        Reading goes on below that bound: a TLS handshake, whose own
        output is held this way, needs it.
        """
        if held == self._outputHeld:
            return
        self._outputHeld = held
        if not held:
            self._clock.callLater(0, self._run)

    def _run(self) -> None:
        """Work through buffered input until it is used up or a reply must be waited for."""
        if self._running:
            return
        self._running = True
        try:
            while not self._outputHeld and self._input and self._mode is not Mode.CLOSED:
                if self._pending and not self._mayOverlap():
                    break
                if self._mode is Mode.DATA:
                    data, self._input = self._input, b""
                    self._dataChunk(data)
                elif not self._line():
                    break
                if self._outputSize > MAX_UNSENT_OUTPUT:
                    self._flush()  # the transport tells (holdOutput) if the client is not reading
        finally:
            self._running = False
        if not self._waiting and not self._outputHeld:
            self._throttle.release("input")
        if not self._waiting:
            if self._draining:
                self._closeIfIdle()
        self._flush()

    def _line(self) -> bool:
        """Handle one complete line; C{False} when there is none yet."""
        end = self._input.find(b"\n")
        if end < 0:
            if len(self._input) > MAX_AUTH_LINE:
                self._answer(RUNAWAY_LINE, "LINE")
            return False
        line, self._input = self._input[:end], self._input[end + 1 :]
        self._lastActivity = self._clock.seconds()
        if line[-1:] == b"\r":
            line = line[:-1]
        if len(line) + 2 > MAX_AUTH_LINE:
            self._step("LINE", LINE_TOO_LONG)
        elif self._mode is Mode.AUTH:
            self._step("AUTH", self.session.authResponse(line))
        elif len(line) + 2 > MAX_COMMAND_LINE and line[:5].upper() != b"AUTH ":
            self._step("LINE", LINE_TOO_LONG)
        else:
            try:
                text = line.decode("utf-8")  # UTF-8 only where SMTPUTF8 allows it (RFC 6531): the session decides
            except UnicodeDecodeError:
                self._step("LINE", LINE_NOT_ASCII)
                return True
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            try:
                result = self.session.command(verb, arg.strip())
            except Exception:
                result = self._failed(Failure(), verb)
            self._step(verb, result)
        return True

    def _dataChunk(self, data: bytes) -> None:
        scanner = self._scanner
        assert scanner is not None, "DATA mode has a scanner"
        content, rest = scanner.feed(data)
        if content:
            self.session.messageData(content)
        if rest is not None:
            error, self._scanner = scanner.error, None
            _cancel(self._dataTimer)
            self._enter(Mode.COMMAND)
            self._input = rest
            self._watchLine(False)
            self._step("EOD", self.session.endOfData(error))

    def _step(self, verb: str, result: Reply | Deferred[Reply]) -> None:
        """Answer now, or once the replies before this one are out and this one is ready."""
        if not isinstance(result, Deferred):
            if not self._pending:
                self._answer(result, verb)
                return
            self._pending.append([verb, result])
            return
        slot = [verb, None]
        self._pending.append(slot)
        result.addErrback(self._failed, verb).addCallback(self._ready, slot)

    def _ready(self, reply: Reply, slot: list) -> None:
        """A reply is ready: send it, and those after it that are ready too, in order."""
        slot[1] = reply
        while self._pending and self._pending[0][1] is not None:
            verb, reply = self._pending.popleft()
            self._answer(reply, verb)
        if not self._pending:
            self._lastActivity = self._clock.seconds()  # the client had to wait for us: its idle time starts now
            self._run()

    def _failed(self, failure: Failure, verb: str) -> Reply:
        self.log.failure("session {session}: error handling {verb}", failure, session=self.client.sessionId, verb=verb)
        self.session.abortTransaction()  # the upstream may be anywhere, even in DATA: never reset, never reuse
        return INTERNAL

    def _answer(self, reply: Reply, verb: str) -> None:
        """Queue a reply and apply what it means for the connection."""
        if self._mode is Mode.CLOSED:  # a late answer (a policy, a timer): nobody to tell
            return
        if verb == "DATA" and reply.code == 354 and self._input:
            # RFC 2920 §3.1: the message may only follow our 354.
            self.session.abortTransaction()
            reply = EARLY_DATA
        greeting = verb == "CONNECT" and reply.code == 220
        self._queue(reply.toBytes(verb not in _NO_ENHANCED_CODE and not greeting))
        code = reply.code
        if code >= 500 and verb != "EOD":
            self._errors += 1
            if self._errors >= self._ctx.maxErrors:
                self._ctx.reporter.refused("errors", self.client, TOO_MANY_ERRORS)
                reply = TOO_MANY_ERRORS
                self._queue(reply.toBytes())
                code = reply.code
        if (
            code == 421
            or reply is EARLY_DATA
            or (verb == "QUIT" and code == 221)
            or (verb == "CONNECT" and code != 220)
        ):
            self._close()
        elif verb == "STARTTLS" and code == 220:
            self._startTLS()
        elif verb == "DATA" and code == 354:
            self._enter(Mode.DATA)
            _cancel(self._lineTimer)
            self._lineTimer = None
            self._scanner = DataScanner(self.session.maxMessageSize)
            self._dataTimer = self._clock.callLater(self._ctx.dataTimeout, self._answer, DATA_TOO_SLOW, "TIMEOUT")
        elif code == 334:
            self._enter(Mode.AUTH)
        elif self._mode is Mode.AUTH:
            self._enter(Mode.COMMAND)

    def drain(self) -> None:
        """
        The relay is shutting down: close now if between transactions,
        otherwise as soon as the transaction in flight has ended.
        """
        self._draining = True
        if not self._waiting:
            self._closeIfIdle()
            self._flush()

    def _closeIfIdle(self) -> None:
        if self._mode is Mode.COMMAND and not self.session.inTransaction:
            self._answer(SHUTTING_DOWN, "DRAIN")

    def shutDown(self) -> None:
        """Close now with 421, aborting any transaction in flight."""
        if self._mode is not Mode.CLOSED:
            self._answer(SHUTTING_DOWN, "DRAIN")

    def _startTLS(self) -> None:
        # CVE-2011-0411: nothing the client sent before the handshake counts.
        self._input = b""
        self._flush()
        self.transport.startTLS(self._ctx.tls)
        self.session.tlsStarted()
        self._awaitHandshake()

    def _queue(self, data: bytes) -> None:
        self._output.append(data)
        self._outputSize += len(data)

    def _flush(self) -> None:
        if self._output:
            data = b"".join(self._output)
            self._output.clear()
            self._outputSize = 0
            writeNow(self.transport, data)

    def _close(self) -> None:
        self._enter(Mode.CLOSED)
        self._flush()
        # ITransport.loseConnection: a transport with a producer closes only once it is unregistered.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        # A TLS close waits for the client's close_notify: not for ever.
        self._closing = self._clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def _idleCheck(self) -> None:
        idle = self._clock.seconds() - self._lastActivity
        if self._waiting or idle < self._ctx.idleTimeout:
            delay = self._ctx.idleTimeout - (0 if self._waiting else idle)
            self._timer = self._clock.callLater(delay, self._idleCheck)
            return
        self._answer(IDLE, "TIMEOUT")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections.discard(self)
        if self._mode is not Mode.CLOSED:
            self._enter(Mode.CLOSED)
        for timer in (self._timer, self._lineTimer, self._handshakeTimer, self._dataTimer, self._closing):
            _cancel(timer)
        self.session.connectionLost()
        if self._admitted:
            self._ctx.guard.leave(self.client.address)
        seconds = self._clock.seconds() - self._connected
        self._ctx.reporter.connectionClosed(self.client, seconds, self.session.transactions)


class SMTPServerFactory(Factory):
    """
    Builds the protocol for one listener.

    @ivar connections: the connections open now.
    @param implicitTLS: the listener wraps connections in TLS from the start
        (C{--smtps}); STARTTLS is then not offered.
    """

    noisy = False

    def __init__(self, context: ServerContext, implicitTLS: bool):
        self.context = context
        self.implicitTLS = implicitTLS
        self.connections: set[SMTPServerProtocol] = set()

    def buildProtocol(self, addr):
        protocol = SMTPServerProtocol(self.context, self.implicitTLS)
        protocol.factory = self
        return protocol
