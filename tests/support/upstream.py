"""
A real, scriptable upstream SMTP server for end-to-end tests.

L{UpstreamServer} listens on 127.0.0.1 (ephemeral port), speaks minimal but
correct ESMTP (PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, STARTTLS,
AUTH PLAIN/LOGIN), records exactly what it receives and injects faults on
request.  It uses only the standard library (one thread per connection), so
it shares no code with the Twisted relay under test.

    with UpstreamServer(tls=certs, auth=("user", "secret")) as up:
        up.setReply("RCPT", "550 5.1.1 no such user", match="bad@example.com")
        ...  # point the relay at ("127.0.0.1", up.port)
        [message] = up.waitForMessages(1)

Faults attach to a I{reply point}, named by a verb: C{CONNECT} (the
greeting), a command verb (C{EHLO}, C{HELO}, C{STARTTLS}, C{AUTH} (the final
reply after the credentials), C{MAIL}, C{RCPT}, C{DATA} (the 354),
C{RSET}, C{NOOP}, C{QUIT}, ...) or C{EOD} (the reply after the final dot).
At a reply point the server waits out any delay, hangs if asked, sends the
scripted reply or its own, applies the reply's effect on the session only
when the reply sent is 2xx (354 for DATA, 220 for STARTTLS), then drops the
connection if asked.  Any 421 reply closes the connection after it is sent.

With C{lmtp=True} it speaks LMTP (RFC 2033) instead: C{LHLO} replaces
C{EHLO} and C{HELO} (which get 500), and after the final dot there is one
C{EOD} reply point per accepted recipient, in RCPT order, whose C{match}
compares to that recipient.  With C{unix=PATH} it listens on that local
socket instead of a loopback port.

Every fault setter takes the same selectors: C{match} (compared without case
to the address for MAIL and RCPT, to the sender for DATA and EOD, to the
mechanism for AUTH, to the argument otherwise), C{nth} (only the Nth time
this server reaches that reply point, counting from 1 over all
connections) and C{times} (expire after being applied that many times).  When
several rules of one kind match, the last one set wins.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import selectors
import socket
import ssl
import struct
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from tests.support.certs import CertPaths

__all__ = ["Received", "UpstreamServer", "closedPort"]

HOST = "127.0.0.1"
MAX_COMMAND_LINE = 4096
JOIN_TIMEOUT = 5.0
GARBAGE = b"HTTP/1.1 400 Bad Request"
VERBS = frozenset("CONNECT EHLO HELO LHLO STARTTLS AUTH MAIL RCPT DATA EOD RSET NOOP QUIT VRFY EXPN HELP BDAT".split())
_OTHER_GREETINGS = {False: frozenset({"LHLO"}), True: frozenset({"EHLO", "HELO"})}  # by lmtp
_PATH = re.compile(r"(?i)^(?:FROM|TO):\s*<([^<>]*)>(?:\s+(.*))?$")
_STUFFED_DOT = re.compile(rb"(^|\r\n)\.")


@dataclass(frozen=True)
class Received:
    """
    One mail transaction whose DATA phase began.

    @ivar sender: the MAIL FROM address (C{""} for the null sender).
    @ivar recipients: the RCPT TO addresses the server accepted, in order.
    @ivar raw: the bytes between the 354 and the terminating C{.CRLF},
        exactly as on the wire (still dot-stuffed, ends with CRLF).
    @ivar data: C{raw} with the dot-stuffing removed.
    @ivar tls: the transaction ran over TLS.
    @ivar user: the authenticated user name, or C{None}.
    @ivar connection: the 0-based index of the connection it came on.
    @ivar completed: the final dot arrived (C{False}: the connection ended
        mid-DATA and C{raw} holds what had arrived).
    @ivar reply: the end-of-data reply sent (lines joined by CRLF), C{None}
        if none was sent.
    @ivar mailOptions: the MAIL FROM parameters, such as C{"SIZE=123"}.
    @ivar helo: the EHLO/HELO name given for this transaction.
    @ivar delivered: the recipients whose end-of-data reply was 2xx (LMTP
        answers each recipient; SMTP all or none).
    @ivar rcptOptions: the RCPT parameters of each accepted recipient.
    @ivar via: C{"DATA"} or C{"BDAT"} (then C{raw} is the chunks joined, not stuffed).
    """

    sender: str
    recipients: tuple[str, ...]
    raw: bytes
    data: bytes
    tls: bool
    user: str | None
    connection: int
    completed: bool = True
    reply: str | None = None
    mailOptions: tuple[str, ...] = ()
    helo: str | None = None
    delivered: tuple[str, ...] = ()
    rcptOptions: tuple[tuple[str, ...], ...] = ()
    via: str = "DATA"


@dataclass
class _Rule:
    """One scripted fault: C{kind} is reply, delay, hang or drop."""

    kind: str
    verb: str
    value: object
    match: str | None
    nth: int | None
    times: int | None

    def applies(self, verb: str, key: str, count: int) -> bool:
        return (
            self.verb == verb
            and (self.times is None or self.times > 0)
            and (self.nth is None or self.nth == count)
            and (self.match is None or self.match.lower() == key.lower())
        )


class _Closed(Exception):
    """End this connection now (quietly)."""


class UpstreamServer:
    """
    A threaded ESMTP server on 127.0.0.1 that records what it receives.

    Use as a context manager, or call L{start} and L{close}.  All recorded
    state is read through properties that return snapshots, safe to use from
    the test thread while connections run.
    """

    def __init__(
        self,
        *,
        tls: CertPaths | None = None,
        implicitTLS: bool = False,
        requireTLS: bool = False,
        auth: tuple[str, str] | None = None,
        requireAuth: bool | None = None,
        allowInsecureAuth: bool = False,
        maxSize: int = 10 * 1024 * 1024,
        timeout: float = 10.0,
        hostname: str = "upstream.test",
        lmtp: bool = False,
        unix: str | os.PathLike[str] | None = None,
        laxEndOfData: bool = False,
        extensions: tuple[str, ...] = (),
        bearer: Callable[[str, str], bool] | None = None,
        clientCA: str | os.PathLike[str] | None = None,
    ):
        """
        @param tls: certificate to present; enables STARTTLS.
        @param implicitTLS: TLS from connect (smtps); needs C{tls}.
        @param requireTLS: refuse MAIL (530) before STARTTLS; needs C{tls}.
        @param auth: the one C{(username, password)} AUTH accepts.
        @param requireAuth: refuse MAIL (530) before AUTH; defaults to
            whether C{auth} is given.
        @param allowInsecureAuth: offer and accept AUTH without TLS.
        @param maxSize: the SIZE limit advertised and enforced (552).
        @param timeout: seconds any socket operation may block and the
            longest a hang lasts; the connection is closed after that.
        @param hostname: the name in the greeting and EHLO reply.
        @param lmtp: speak LMTP (RFC 2033) rather than SMTP.
        @param unix: listen on this local socket path, not on loopback TCP.
        @param extensions: more EHLO keywords to offer and honour:
            C{SMTPUTF8} and C{DSN} (their parameters accepted and recorded),
            C{CHUNKING} (BDAT, RFC 3030).
        @param bearer: offer AUTH XOAUTH2 and accept C{(user, token)} when
            this says so (a refused token gets the 334 error challenge, then
            C{535 5.7.3}).
        @param clientCA: ask for a client certificate in the TLS handshake,
            verified against this CA file; the subjects seen are in
            L{clientCertificates}.
        @param laxEndOfData: behave like a server open to SMTP smuggling:
            C{<CR>.<CR>} also ends the message, and what follows is read as
            commands, bare CRs ending lines.
        """
        if (implicitTLS or requireTLS) and tls is None:
            raise ValueError("implicitTLS and requireTLS need tls=CertPaths")
        self.tls = tls
        self.implicitTLS = implicitTLS
        self.requireTLS = requireTLS
        self.auth = auth
        self.requireAuth = (auth is not None or bearer is not None) if requireAuth is None else requireAuth
        self.allowInsecureAuth = allowInsecureAuth
        self.maxSize = maxSize
        self.timeout = timeout
        self.hostname = hostname
        self.lmtp = lmtp
        self.unix = None if unix is None else os.fspath(unix)
        self.laxEndOfData = laxEndOfData
        self.extensions = tuple(extensions)
        self.bearer = bearer
        self.host = HOST
        self.port: int = 0
        self._context = tls.serverContext() if tls else None
        if self._context:
            self._context.sni_callback = self._sni
            if clientCA is not None:
                self._context.verify_mode = ssl.CERT_OPTIONAL
                self._context.load_verify_locations(os.fspath(clientCA))
        self._clientCertificates: list[str] = []
        self._cond = threading.Condition(threading.RLock())
        self._stop = threading.Event()
        self._rules: list[_Rule] = []
        self._seen: Counter[str] = Counter()
        self._commands: list[list[str]] = []
        self._reads: list[list[int]] = []  # per connection: the read each command line came in
        self._transactions: list[Received] = []
        self._receiving: dict[int, bytes] = {}  # per connection: the last bytes of a DATA under way
        self._messages: list[Received] = []
        self._aborted = 0
        self._plaintext = b""
        self._tlsErrors: list[str] = []
        self._serverNames: list[str | None] = []
        self._errors: list[str] = []
        self._sockets: dict[int, socket.socket] = {}
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------

    def start(self) -> UpstreamServer:
        """Bind, listen and start accepting; C{port} is set on return."""
        if self._listener is not None:
            raise RuntimeError("already started")
        if self.unix is None:
            self._listener = socket.create_server((HOST, 0))
            self.port = self._listener.getsockname()[1]
        else:
            self._listener = socket.socket(socket.AF_UNIX)
            self._listener.bind(self.unix)
            self._listener.listen()
        self._listener.settimeout(self.timeout)
        self._wakeReader, self._wakeWriter = socket.socketpair()
        self._acceptor = threading.Thread(target=self._serve, name=f"upstream-{self.port}", daemon=True)
        self._acceptor.start()
        return self

    def close(self, check: bool = True) -> None:
        """
        Stop accepting, cut every connection and join every thread (bounded
        by L{JOIN_TIMEOUT} in all).

        @param check: raise if a thread would not stop (C{RuntimeError}) or
            a connection thread crashed (C{AssertionError}).
        """
        if self._listener is None or self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wakeWriter.send(b"\0")
        deadline = time.monotonic() + JOIN_TIMEOUT
        self._acceptor.join(JOIN_TIMEOUT)
        with self._cond:
            for sock in self._sockets.values():
                _hangUp(sock)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for sock in (self._listener, self._wakeReader, self._wakeWriter):
            sock.close()
        leaked = [t.name for t in (self._acceptor, *self._threads) if t.is_alive()]
        if check and leaked:
            raise RuntimeError(f"upstream threads did not stop: {leaked}")
        if check and self._errors:
            raise AssertionError("upstream server crashed:\n" + "\n".join(self._errors))

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(self, excType, exc, tb) -> None:
        self.close(check=excType is None)

    # -- fault scripting -------------------------------------------------

    def setReply(
        self,
        verb: str,
        reply: str | bytes,
        *,
        match: str | None = None,
        nth: int | None = None,
        times: int | None = None,
    ) -> None:
        """
        Send C{reply} instead of the normal reply at C{verb}'s reply point.
        Lines may be separated by C{\\n}; they are sent as given (so
        C{"220 go\\n250 injected"} for STARTTLS injects plaintext after 220).
        """
        self._addRule("reply", verb, _wire(reply), match, nth, times)

    def setGarbage(
        self,
        verb: str,
        line: str | bytes = GARBAGE,
        *,
        match: str | None = None,
        nth: int | None = None,
        times: int | None = None,
    ) -> None:
        """Answer C{verb} with a line that is not an SMTP reply."""
        self._addRule("reply", verb, _wire(line), match, nth, times)

    def setDelay(
        self,
        verb: str,
        seconds: float,
        *,
        match: str | None = None,
        nth: int | None = None,
        times: int | None = None,
    ) -> None:
        """Wait C{seconds} before replying at C{verb} (cut short by close)."""
        if seconds < 0:
            raise ValueError("negative delay")
        self._addRule("delay", verb, float(seconds), match, nth, times)

    def setHang(self, verb: str, *, match: str | None = None, nth: int | None = None, times: int | None = None) -> None:
        """Never reply at C{verb}: keep the connection open until close or
        C{timeout} seconds, then close it."""
        self._addRule("hang", verb, True, match, nth, times)

    def setDropAfter(
        self,
        verb: str,
        *,
        afterBytes: int | None = None,
        reset: bool = False,
        match: str | None = None,
        nth: int | None = None,
        times: int | None = None,
    ) -> None:
        """
        Close the connection right after sending the reply at C{verb}, or,
        with C{afterBytes} (DATA only), without replying once at least that
        many bytes of message content have arrived (checked at line ends).

        @param reset: close with a TCP RST instead of a FIN.
        """
        if afterBytes is not None and (verb.upper() != "DATA" or afterBytes < 0):
            raise ValueError("afterBytes needs verb DATA and a count >= 0")
        self._addRule("drop", verb, (afterBytes, reset), match, nth, times)

    def clearFaults(self) -> None:
        """Forget every scripted fault (occurrence counts for nth go on)."""
        with self._cond:
            self._rules.clear()

    # -- recorded state --------------------------------------------------

    @property
    def messages(self) -> list[Received]:
        """Transactions completed with the final dot and answered 2xx (LMTP:
        for at least one recipient)."""
        with self._cond:
            return list(self._messages)

    @property
    def receiving(self) -> bytes:
        """The last 2 KiB of the message whose DATA is under way (of any connection), b"" when none is."""
        with self._cond:
            return b"".join(self._receiving.values())

    @property
    def transactions(self) -> list[Received]:
        """Every DATA phase begun: accepted, rejected, unanswered or cut."""
        with self._cond:
            return list(self._transactions)

    @property
    def connections(self) -> int:
        """How many TCP connections were accepted."""
        with self._cond:
            return len(self._commands)

    @property
    def commands(self) -> list[list[str]]:
        """The command lines of each connection, in order, without CRLF
        (AUTH exchange responses and message content excluded)."""
        with self._cond:
            return [list(lines) for lines in self._commands]

    def batches(self, connection: int = -1) -> list[list[str]]:
        """The verbs of a connection grouped by the read they came in: commands the client sent together."""
        with self._cond:
            groups: dict[int, list[str]] = {}
            for line, read in zip(self._commands[connection], self._reads[connection], strict=True):
                groups.setdefault(read, []).append(line.partition(" ")[0].upper())
            return list(groups.values())

    def verbs(self, connection: int = -1) -> list[str]:
        """The upper-cased command verbs of one connection (default: the last)."""
        return [line.split(" ", 1)[0].upper() for line in self.commands[connection]]

    @property
    def aborted(self) -> int:
        """DATA phases the client ended (closed, reset, stalled) before the dot."""
        with self._cond:
            return self._aborted

    @property
    def plaintextAfterStartTLS(self) -> bytes:
        """Plaintext that followed a STARTTLS command before the handshake
        (discarded, over all connections); C{b""} when there was none."""
        with self._cond:
            return self._plaintext

    @property
    def tlsErrors(self) -> list[str]:
        """Failed TLS handshakes, one description each."""
        with self._cond:
            return list(self._tlsErrors)

    @property
    def clientCertificates(self) -> list[str]:
        """The subject (its common name) of each client certificate presented, in order."""
        with self._cond:
            return list(self._clientCertificates)

    @property
    def serverNames(self) -> list[str | None]:
        """The SNI name sent in each TLS handshake (C{None} if none)."""
        with self._cond:
            return list(self._serverNames)

    def waitUntil(self, predicate: Callable[[UpstreamServer], bool], timeout: float = 5.0, what: str = "") -> None:
        """
        Block until C{predicate(self)} holds, re-checking on every change.

        @raise AssertionError: it did not hold within C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"upstream: timed out after {timeout}s waiting for {what or predicate}; {self.describe()}"
                    )
                self._cond.wait(remaining)

    def waitForMessages(self, n: int, timeout: float = 5.0) -> list[Received]:
        """Wait until at least C{n} messages were accepted; return them all."""
        self.waitUntil(lambda up: len(up._messages) >= n, timeout, f"{n} message(s)")
        return self.messages

    def describe(self) -> str:
        """A summary of what happened, for failure messages."""
        with self._cond:
            return (
                f"connections={len(self._commands)} messages={len(self._messages)} "
                f"transactions={[(t.completed, t.reply) for t in self._transactions]} aborted={self._aborted} "
                f"tlsErrors={self._tlsErrors} errors={len(self._errors)} commands={self._commands}"
            )

    # -- internals shared with sessions ----------------------------------

    def _addRule(self, kind, verb, value, match, nth, times) -> None:
        verb = verb.upper()
        if verb not in VERBS:
            raise ValueError(f"unknown reply point {verb!r}; use one of {sorted(VERBS)}")
        if (nth is not None and nth < 1) or (times is not None and times < 1):
            raise ValueError("nth and times count from 1")
        with self._cond:
            self._rules.append(_Rule(kind, verb, value, match, nth, times))

    def _faults(self, verb: str, key: str) -> dict[str, object]:
        """Count one arrival at C{verb}'s reply point; take the faults for it."""
        with self._cond:
            self._seen[verb] += 1
            chosen: dict[str, _Rule] = {}
            for rule in reversed(self._rules):
                if rule.kind not in chosen and rule.applies(verb, key, self._seen[verb]):
                    chosen[rule.kind] = rule
            for rule in chosen.values():
                if rule.times is not None:
                    rule.times -= 1
            return {kind: rule.value for kind, rule in chosen.items()}

    def _update(self, change: Callable[[], object]) -> object:
        """Apply C{change} to the recorded state under the lock; wake waiters."""
        with self._cond:
            result = change()
            self._cond.notify_all()
            return result

    def _recordTransaction(self, transaction: Received, aborted: bool = False) -> int:
        def change():
            self._transactions.append(transaction)
            self._aborted += aborted
            return len(self._transactions) - 1

        return self._update(change)

    def _settle(self, index: int, reply: bytes, delivered: tuple[str, ...]) -> None:
        def change():
            text = reply.decode("utf-8", "replace").rstrip("\r\n")
            settled = replace(self._transactions[index], reply=text, delivered=delivered)
            self._transactions[index] = settled
            if delivered:
                self._messages.append(settled)

        self._update(change)

    def _track(self, index: int, sock: socket.socket) -> None:
        """Note a connection's new (TLS) socket, so that L{close} can cut it."""
        with self._cond:
            if self._stop.is_set():
                raise _Closed()
            self._sockets[index] = sock

    def _untrack(self, index: int, sock: socket.socket) -> None:
        """Close a connection's socket and forget it."""
        with self._cond:
            self._sockets.pop(index, None)
            sock.close()

    def _notePlaintext(self, data: bytes) -> None:
        def change():
            self._plaintext += data

        self._update(change)

    def _sni(self, sslSocket, name, context) -> None:
        self._update(lambda: self._serverNames.append(name))

    def _serve(self) -> None:
        """Accept connections until closed, one thread each."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wakeReader, selectors.EVENT_READ)
            while not self._stop.is_set():
                events = selector.select(timeout=1.0)
                if not self._stop.is_set() and any(key.fileobj is self._listener for key, _ in events):
                    self._accept()

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        sock.settimeout(self.timeout)

        def change():
            self._commands.append([])
            self._reads.append([])
            self._sockets[len(self._commands) - 1] = sock
            return len(self._commands) - 1

        index = self._update(change)
        thread = threading.Thread(
            target=_Session(self, sock, index).run, name=f"upstream-{self.port}-{index}", daemon=True
        )
        self._threads.append(thread)
        thread.start()


class _Session:
    """One SMTP connection, run by its own thread."""

    def __init__(self, server: UpstreamServer, sock: socket.socket, index: int):
        self.server = server
        self.sock = sock
        self.index = index
        self.reader = _Reader(lambda: self.sock.recv(65536))
        self.tls = False
        self.helo: str | None = None
        self.user: str | None = None
        self.refused = False
        self.dropPending: bool | None = None  # close after this reply: True = with RST
        self.dropAt: tuple[int, bool] | None = None  # (afterBytes, reset) for the DATA under way
        self.resetTransaction()

    def resetTransaction(self) -> None:
        self.sender: str | None = None
        self.mailOptions: tuple[str, ...] = ()
        self.recipients: list[str] = []
        self.rcptOptions: list[tuple[str, ...]] = []
        self.chunks: list[bytes] = []

    def run(self) -> None:
        try:
            if self.server.implicitTLS:
                self.startTLS()
            service = "LMTP" if self.server.lmtp else "ESMTP"
            greeting = self.reply("CONNECT", "", f"220 {self.server.hostname} {service}")
            self.refused = not greeting.startswith(b"2")
            while self.dropPending is None:
                line = self.readCommand()
                if line is None:
                    return
                self.dispatch(line)
        except (_Closed, OSError):
            pass
        except Exception:
            self.server._update(lambda: self.server._errors.append(traceback.format_exc()))
        finally:
            if self.dropPending:
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            self.server._untrack(self.index, self.sock)

    # -- I/O -------------------------------------------------------------

    def readCommand(self) -> bytes | None:
        """The next line (with its line end), C{None} at end of stream."""
        try:
            return self.reader.line(MAX_COMMAND_LINE)
        except _LineTooLong:
            self.send(b"500 5.5.2 Line too long\r\n")
            raise _Closed() from None

    def send(self, reply: bytes) -> None:
        self.sock.sendall(reply)

    def decide(self, verb: str, key: str, default: str) -> bytes:
        """
        Reach C{verb}'s reply point: apply delay and hang, choose the reply
        (scripted or C{default}) and note any drop that is to follow it.
        """
        faults = self.server._faults(verb, key)
        if "delay" in faults and self.server._stop.wait(faults["delay"]):
            raise _Closed()
        if "hang" in faults:
            self.server._stop.wait(self.server.timeout)
            raise _Closed()
        reply = faults.get("reply") or _wire(default)
        if "drop" in faults:
            afterBytes, reset = faults["drop"]
            if afterBytes is None:
                self.dropPending = reset
            else:
                self.dropAt = (afterBytes, reset)
        if reply.startswith(b"421") and self.dropPending is None:
            self.dropPending = False
        return reply

    def reply(self, verb: str, key: str, default: str) -> bytes:
        """L{decide} and send, for replies with no effect to apply."""
        reply = self.decide(verb, key, default)
        self.send(reply)
        return reply

    # -- commands --------------------------------------------------------

    def dispatch(self, line: bytes) -> None:
        text = line.rstrip(b"\r\n").decode("utf-8", "replace")
        read = self.reader.reads

        def record() -> None:
            self.server._commands[self.index].append(text)
            self.server._reads[self.index].append(read)

        self.server._update(record)
        if not line.endswith(b"\r\n"):
            self.send(b"500 5.5.2 Bare LF in command line\r\n")
            return
        word, _, arg = text.partition(" ")
        verb, arg = word.upper(), arg.strip()
        handler = None if verb in _OTHER_GREETINGS[self.server.lmtp] else getattr(self, f"smtp_{verb}", None)
        if self.refused and verb != "QUIT":
            self.reply(verb, arg, "503 5.5.1 No SMTP service here")
        elif handler is None:
            self.reply(verb, arg, "500 5.5.2 Command unrecognized")
        else:
            handler(arg)

    def smtp_LHLO(self, arg: str) -> None:
        self.smtp_EHLO(arg, "LHLO")

    def smtp_EHLO(self, arg: str, verb: str = "EHLO") -> None:
        lines = [self.server.hostname, "PIPELINING", f"SIZE {self.server.maxSize}", "8BITMIME", "ENHANCEDSTATUSCODES"]
        lines += self.server.extensions
        if self.server.tls and not self.tls:
            lines.append("STARTTLS")
        if (self.server.auth or self.server.bearer) and (self.tls or self.server.allowInsecureAuth):
            lines.append("AUTH PLAIN LOGIN" + (" XOAUTH2" if self.server.bearer else ""))
        self.greet(verb, arg, "\n".join(f"250-{line}" for line in lines[:-1]) + f"\n250 {lines[-1]}")

    def smtp_HELO(self, arg: str) -> None:
        self.greet("HELO", arg, f"250 {self.server.hostname}")

    def greet(self, verb: str, arg: str, default: str) -> None:
        reply = self.decide(verb, arg, default if arg else f"501 5.5.4 Syntax: {verb} domain")
        if _positive(reply):
            self.helo = arg
            self.resetTransaction()
        self.send(reply)

    def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            default = "501 5.5.4 Syntax: STARTTLS"
        elif self.server.tls is None:
            default = "502 5.5.1 STARTTLS not available"
        elif self.tls:
            default = "503 5.5.1 Already in TLS"
        else:
            default = "220 2.0.0 Ready to start TLS"
        if self.reply("STARTTLS", arg, default).startswith(b"220") and self.dropPending is None:
            leftover = self.reader.take()
            if leftover:
                self.server._notePlaintext(leftover)
            self.startTLS()
            self.helo = self.user = None
            self.resetTransaction()

    def startTLS(self) -> None:
        """Upgrade the connection (server side); close it if that fails."""
        if self.server._context is None:
            raise _Closed()
        self.sock = self.server._context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        self.server._track(self.index, self.sock)
        try:
            self.sock.do_handshake()
        except OSError as e:
            if not self.server._stop.is_set():
                error = f"connection {self.index}: {e}"
                self.server._update(lambda: self.server._tlsErrors.append(error))
            raise _Closed() from e
        self.tls = True
        presented = self.sock.getpeercert()
        if presented:
            subject = dict(part for rdn in presented["subject"] for part in rdn).get("commonName", "?")
            self.server._update(lambda: self.server._clientCertificates.append(subject))

    def smtp_AUTH(self, arg: str) -> None:
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        default = self.authRefusal(mechanism)
        user = None
        if default is None and mechanism == "XOAUTH2":
            user, default = self.xoauth2(initial.strip())
        elif default is None:
            try:
                user, password = self.authExchange(mechanism, initial.strip())
            except _AuthFailed as e:
                default = str(e)
            else:
                good = self.server.auth is not None and (user, password) == tuple(self.server.auth)
                default = (
                    "235 2.7.0 Authentication successful" if good else "535 5.7.8 Authentication credentials invalid"
                )
        reply = self.decide("AUTH", mechanism, default)
        if _positive(reply):
            self.user = user
        self.send(reply)

    def xoauth2(self, initial: str) -> tuple[str | None, str]:
        """
        SASL XOAUTH2 as Google and Microsoft run it: a good bearer token is
        235; a bad one gets the 334 error challenge, and after the client's
        empty line, 535.
        """
        fields = dict(
            part.split("=", 1) for part in _decode64(initial or self.challenge("")).split("\x01") if "=" in part
        )
        user, bearer = fields.get("user"), fields.get("auth", "")
        token = bearer[len("Bearer ") :] if bearer.startswith("Bearer ") else ""
        if user is not None and self.server.bearer(user, token):
            return user, "235 2.7.0 Authentication successful"
        error = base64.b64encode(b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}')
        self.challenge(error.decode("ascii"))
        return None, "535 5.7.3 Authentication unsuccessful"

    def authRefusal(self, mechanism: str) -> str | None:
        """Why AUTH may not start now, as a reply; C{None} if it may."""
        if self.server.auth is None and self.server.bearer is None:
            return "502 5.5.1 AUTH not available"
        if self.helo is None:
            return "503 5.5.1 Error: send EHLO first"
        if self.user is not None:
            return "503 5.5.1 Already authenticated"
        if self.sender is not None:
            return "503 5.5.1 AUTH not permitted during a mail transaction"
        if not (self.tls or self.server.allowInsecureAuth):
            return "538 5.7.11 Encryption required for requested authentication mechanism"
        if mechanism not in ("PLAIN", "LOGIN") + (("XOAUTH2",) if self.server.bearer else ()):
            return "504 5.5.4 Unrecognized authentication type"
        return None

    def authExchange(self, mechanism: str, initial: str) -> tuple[str, str]:
        """Run the SASL exchange; return the user name and password given."""
        if mechanism == "PLAIN":
            parts = _decode64(initial or self.challenge("")).split("\0")
            if len(parts) != 3:
                raise _AuthFailed("501 5.5.2 Malformed PLAIN response")
            return parts[1], parts[2]
        user = _decode64(initial or self.challenge("VXNlcm5hbWU6"))
        return user, _decode64(self.challenge("UGFzc3dvcmQ6"))

    def challenge(self, text: str) -> str:
        self.send(f"334 {text}\r\n".encode())
        line = self.readCommand()
        if line is None:
            raise _Closed()
        return line.decode("utf-8", "replace").strip()

    def smtp_MAIL(self, arg: str) -> None:
        match = _PATH.match(arg)
        address, options = (match.group(1), tuple((match.group(2) or "").split())) if match else ("", ())
        default = self.mailRefusal(match, options) or "250 2.1.0 Ok"
        reply = self.decide("MAIL", address, default)
        if _positive(reply):
            self.sender, self.mailOptions, self.recipients = address, options, []
        self.send(reply)

    def mailRefusal(self, match: re.Match | None, options: tuple[str, ...]) -> str | None:
        """Why this MAIL is refused, as a reply; C{None} if it is not."""
        if self.helo is None:
            return "503 5.5.1 Error: send HELO/EHLO first"
        if self.server.requireTLS and not self.tls:
            return "530 5.7.0 Must issue a STARTTLS command first"
        if self.server.requireAuth and self.user is None:
            return "530 5.7.0 Authentication required"
        if self.sender is not None:
            return "503 5.5.1 Error: nested MAIL command"
        if match is None:
            return "501 5.5.4 Syntax: MAIL FROM:<address>"
        for option in options:
            name, _, value = option.upper().partition("=")
            if name == "SIZE" and value.isdigit():
                if int(value) > self.server.maxSize:
                    return "552 5.3.4 Message size exceeds fixed maximum message size"
            elif name == "BODY" and value in ("7BIT", "8BITMIME"):
                continue
            elif name == "SMTPUTF8" and "SMTPUTF8" in self.server.extensions:
                continue
            elif name in ("RET", "ENVID") and "DSN" in self.server.extensions:
                continue
            else:
                return f"555 5.5.4 Unsupported option: {option}"
        return None

    def smtp_RCPT(self, arg: str) -> None:
        match = _PATH.match(arg)
        address = match.group(1) if match else ""
        if self.sender is None:
            default = "503 5.5.1 Error: need MAIL command"
        elif not address:
            default = "501 5.5.4 Syntax: RCPT TO:<address>"
        elif match.group(2) and not (
            "DSN" in self.server.extensions
            and all(o.upper().partition("=")[0] in ("NOTIFY", "ORCPT") for o in match.group(2).split())
        ):
            default = f"555 5.5.4 Unsupported option: {match.group(2)}"
        else:
            default = "250 2.1.5 Ok"
        reply = self.decide("RCPT", address, default)
        if _positive(reply):
            self.recipients.append(address)
            self.rcptOptions.append(tuple((match.group(2) or "").split()) if match else ())
        self.send(reply)

    def smtp_BDAT(self, arg: str) -> None:
        """A chunk (RFC 3030): read its octets, answer it; the LAST one ends the message like the final dot."""
        size, _, last = arg.partition(" ")
        if "CHUNKING" not in self.server.extensions or not size.isdigit() or last.upper() not in ("", "LAST"):
            self.send(b"501 5.5.4 Syntax: BDAT size [LAST]\r\n")
            return
        chunk = self.reader.read(int(size))
        if self.sender is None or not self.recipients:
            self.send(b"503 5.5.1 Error: need MAIL and RCPT\r\n")
            return
        self.chunks.append(chunk)
        if last:
            raw, self.chunks = b"".join(self.chunks), []
            self.deliver(raw, raw, "BDAT")
        else:
            self.send(self.decide("BDAT", self.sender or "", f"250 2.0.0 {len(chunk)} octets received"))

    def smtp_DATA(self, arg: str) -> None:
        if arg:
            default = "501 5.5.4 Syntax: DATA"
        elif self.sender is None:
            default = "503 5.5.1 Error: need MAIL command"
        elif not self.recipients:
            default = "554 5.5.1 Error: no valid recipients"
        else:
            default = "354 End data with <CR><LF>.<CR><LF>"
        reply = self.decide("DATA", self.sender or "", default)
        try:
            self.send(reply)
        except OSError:  # the client went away before our 354 reached it: its transaction ends here
            if reply.startswith(b"354"):
                self.server._recordTransaction(self.transaction(b"", False), aborted=True)
            raise
        if reply.startswith(b"354") and self.dropPending is None:
            self.receiveMessage()

    def receiveMessage(self) -> None:
        """Read the message up to the final dot, record it and answer it."""
        dropAt, self.dropAt = self.dropAt, None
        raw, lineStart, complete, dropped = bytearray(), True, False, False
        try:
            while not (complete or dropped):
                dropped = dropAt is not None and len(raw) >= dropAt[0]
                line = None if dropped else self.reader.line()
                if line is None:
                    break
                complete = lineStart and line == b".\r\n"
                if not complete:
                    raw += line
                    lineStart = line.endswith(b"\r\n")
                    tail = bytes(raw[-2048:])
                    self.server._update(lambda tail=tail: self.server._receiving.__setitem__(self.index, tail))
                    lax = raw.find(b"\r.\r") if self.server.laxEndOfData else -1
                    if lax >= 0:  # the smuggling-prone reading: what follows is commands
                        rest = bytes(raw[lax + 3 :]).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                        self.reader.unread(rest.replace(b"\n", b"\r\n"))
                        del raw[lax:]
                        raw += b"\r\n"
                        complete = True
        except OSError:  # reset or stalled past the timeout: the client's doing
            pass
        self.server._update(lambda: self.server._receiving.pop(self.index, None))
        if not complete:
            raw += self.reader.take()
            clientEnded = not dropped and not self.server._stop.is_set()
            self.server._recordTransaction(self.transaction(bytes(raw), False), aborted=clientEnded)
            if dropped:
                self.dropPending = dropAt[1]
                return
            raise _Closed()
        self.deliver(bytes(raw), _STUFFED_DOT.sub(rb"\1", bytes(raw)), "DATA")

    def deliver(self, raw: bytes, data: bytes, via: str) -> None:
        """A whole message arrived (after the dot, or the last BDAT chunk): record it and answer it."""
        transaction = replace(self.transaction(raw, True), data=data, via=via)
        index = self.server._recordTransaction(transaction)
        if len(transaction.data) > self.server.maxSize:
            default = "552 5.3.4 Message size exceeds fixed maximum message size"
        else:
            default = f"250 2.0.0 Ok: queued as {index}"
        replies = []
        for key in self.recipients if self.server.lmtp else [self.sender or ""]:
            replies.append(self.decide("EOD", key, default))
            if self.dropPending is not None:
                break
        if self.server.lmtp:
            # replies stop early at a drop
            delivered = tuple(r for r, reply in zip(self.recipients, replies, strict=False) if _positive(reply))
        else:
            delivered = tuple(self.recipients) if _positive(replies[0]) else ()
        self.server._settle(index, b"".join(replies), delivered)
        self.resetTransaction()
        self.send(b"".join(replies))

    def transaction(self, raw: bytes, completed: bool) -> Received:
        return Received(
            sender=self.sender or "",
            recipients=tuple(self.recipients),
            raw=raw,
            data=_STUFFED_DOT.sub(rb"\1", raw),
            tls=self.tls,
            user=self.user,
            connection=self.index,
            completed=completed,
            mailOptions=self.mailOptions,
            helo=self.helo,
            rcptOptions=tuple(self.rcptOptions),
        )

    def smtp_RSET(self, arg: str) -> None:
        reply = self.decide("RSET", arg, "250 2.0.0 Ok")
        if _positive(reply):
            self.resetTransaction()
        self.send(reply)

    def smtp_NOOP(self, arg: str) -> None:
        self.reply("NOOP", arg, "250 2.0.0 Ok")

    def smtp_QUIT(self, arg: str) -> None:
        self.reply("QUIT", arg, "221 2.0.0 Bye")
        raise _Closed()


class _AuthFailed(Exception):
    """The SASL exchange failed; the argument is the reply to send."""


class _LineTooLong(Exception):
    """A line went on past the limit."""


class _Reader:
    """Buffered line reads from a socket that may be replaced (STARTTLS)."""

    def __init__(self, recv: Callable[[], bytes]):
        self._recv = self._counted(recv)
        self._buffer = bytearray()
        self._position = 0
        self.reads = 0  # how many reads from the socket so far

    def _counted(self, recv: Callable[[], bytes]) -> Callable[[], bytes]:
        def counted() -> bytes:
            self.reads += 1
            return recv()

        return counted

    def line(self, limit: int | None = None) -> bytes | None:
        """
        The next line, ended by LF (normally CRLF) and including it, or
        C{None} at end of stream.

        @raise _LineTooLong: more than C{limit} bytes came without a line end.
        """
        while True:
            end = self._buffer.find(b"\n", self._position)
            if end >= 0:
                line = bytes(self._buffer[self._position : end + 1])
                self._position = end + 1
                return line
            if limit is not None and len(self._buffer) - self._position > limit:
                raise _LineTooLong()
            chunk = self._recv()
            if not chunk:
                return None
            del self._buffer[: self._position]
            self._position = 0
            self._buffer += chunk

    def read(self, size: int) -> bytes:
        """Exactly C{size} octets (fewer at end of stream)."""
        while len(self._buffer) - self._position < size:
            chunk = self._recv()
            if not chunk:
                break
            del self._buffer[: self._position]
            self._position = 0
            self._buffer += chunk
        data = bytes(self._buffer[self._position : self._position + size])
        self._position += len(data)
        return data

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of what is buffered, to be read next."""
        self._buffer[self._position : self._position] = data

    def take(self) -> bytes:
        """Remove and return everything buffered but not yet read."""
        rest = bytes(self._buffer[self._position :])
        self._buffer.clear()
        self._position = 0
        return rest


def _wire(reply: str | bytes) -> bytes:
    """A reply as sent: its lines (split on LF) each ended by CRLF."""
    if isinstance(reply, str):
        reply = reply.encode("utf-8")
    return b"".join(line.rstrip(b"\r") + b"\r\n" for line in reply.rstrip(b"\r\n").split(b"\n"))


def _positive(reply: bytes) -> bool:
    return reply.startswith(b"2")


def _decode64(text: str) -> str:
    """Decode one SASL response (C{=} is empty, C{*} cancels)."""
    if text == "*":
        raise _AuthFailed("501 5.0.0 Authentication cancelled")
    try:
        return base64.b64decode(b"" if text == "=" else text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _AuthFailed("501 5.5.2 Cannot decode response") from None


def _hangUp(sock: socket.socket) -> None:
    """Wake any thread blocked on C{sock} (works for TLS sockets too)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def closedPort() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]
