"""
The C{pipe:///path/to/program?arg=ARG} upstream type: each message is
streamed into the standard input of a new process, like Postfix's C{pipe}.

The envelope is passed in the environment (C{SENDER}, C{RECIPIENTS},
space-separated); the exit status decides the reply: 0 → 250, 75
(C{EX_TEMPFAIL}) → 451, anything else → 554.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from zope.interface import implementer

from relay.plugin import IUpstreamSession, IUpstreamType, Reply, UpstreamError

EX_TEMPFAIL = 75


class _Delivery(ProcessProtocol):
    """Collects the exit status of one delivery process."""

    def __init__(self) -> None:
        self.ended: Deferred[int] = Deferred()

    def processEnded(self, reason) -> None:
        self.ended.callback(0 if reason.check(ProcessDone) else reason.value.exitCode)


@implementer(IUpstreamSession)
class PipeSession:
    """One program run per message; the session itself holds no connection."""

    alive = True

    def __init__(self, program: str, arg: str | None, reactor):
        self._argv = [program] + ([arg] if arg else [])
        self._reactor = reactor
        self._sender = ""
        self._recipients: list[str] = []
        self._process = None
        self._delivery: _Delivery | None = None

    def mailFrom(self, sender, parameters):
        self._sender = sender
        return succeed(Reply.of(250, "2.1.0", "Ok"))

    def rcptTo(self, recipient, parameters):
        self._recipients.append(recipient)
        return succeed(Reply.of(250, "2.1.5", "Ok"))

    def data(self):
        """Start the program; the message goes to its standard input."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SENDER": self._sender,
               "RECIPIENTS": " ".join(self._recipients)}  # fmt: skip
        self._delivery = _Delivery()
        self._process = self._reactor.spawnProcess(self._delivery, self._argv[0], self._argv, env=env)
        return succeed(Reply.of(354, None, "Go ahead"))

    def write(self, data: bytes) -> None:
        self._process.write(data)

    def registerProducer(self, producer, streaming: bool) -> None:
        # The pipe to the child's stdin pauses the client when the child is slow.
        self._process.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._process.unregisterProducer()

    def end(self):
        self._process.closeStdin()

        def replied(status: int) -> list[Reply]:
            if status == 0:
                return [Reply.of(250, "2.0.0", "Delivered")]
            if status == EX_TEMPFAIL:
                return [Reply.of(451, "4.3.0", "Program asked to try again later")]
            return [Reply.of(554, "5.3.0", f"Program failed with status {status}")]

        return self._delivery.ended.addCallback(replied)

    def abort(self) -> None:
        """Kill the program before it sees the end of its input."""
        if self._process is not None and self._process.pid is not None:
            self._process.signalProcess("KILL")

    def reset(self):
        """Called before every reuse: forget the last message's envelope and process."""
        self._sender, self._recipients = "", []
        self._process = self._delivery = None
        return succeed(None)

    def close(self):
        return succeed(None)


@implementer(IUpstreamType)
class PipeUpstreamType:
    name = "pipe"
    schemes = ("pipe",)

    def validate(self, url) -> None:
        if url.host or not os.path.isabs(url.path):
            raise ValueError("a pipe URL names an absolute program path: pipe:///usr/local/bin/deliver")
        if set(url.options) - {"arg"}:
            raise ValueError("the only pipe option is arg=")
        if not os.access(url.path, os.X_OK):
            raise ValueError(f"{url.path} is not an executable program")

    def open(self, url, context):
        try:
            self.validate(url)
        except ValueError as e:
            return fail(UpstreamError("connect", str(e)))
        return succeed(PipeSession(url.path, url.options.get("arg"), context.reactor))
