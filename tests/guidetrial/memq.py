"""The memq://NAME upstream type: each message is appended to QUEUES[NAME]."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from relay.plugin import IUpstreamSession, IUpstreamType, Reply, UpstreamError


@dataclass
class QueuedMessage:
    sender: str
    recipients: list[str]
    data: bytes


QUEUES: dict[str, list[QueuedMessage]] = {}


@implementer(IUpstreamSession)
class MemqSession:
    """Delivers into an in-process list; one transaction at a time."""

    def __init__(self, queue: list[QueuedMessage]):
        self._queue = queue
        self.alive = True
        self._sender = ""
        self._recipients: list[str] = []
        self._chunks: list[bytes] = []
        self._producer = None

    def mailFrom(self, sender, parameters):
        self._sender = sender
        return succeed(Reply.of(250, "2.1.0", "Ok"))

    def rcptTo(self, recipient, parameters):
        self._recipients.append(recipient)
        return succeed(Reply.of(250, "2.1.5", "Ok"))

    def data(self):
        return succeed(Reply.of(354, None, "Go ahead"))

    def write(self, data: bytes) -> None:
        self._chunks.append(data)

    def registerProducer(self, producer, streaming: bool) -> None:
        # Appending to a list never falls behind: no need to pause.
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    def end(self):
        if not self.alive:
            return fail(UpstreamError("lost", "memq session was closed"))
        self._queue.append(QueuedMessage(self._sender, list(self._recipients), b"".join(self._chunks)))
        return succeed([Reply.of(250, "2.0.0", "Queued")])

    def abort(self) -> None:
        # Nothing is appended before end(), so an aborted message never lands.
        self.alive = False

    def reset(self):
        """Before every reuse: forget the last transaction's envelope and bytes."""
        self._sender, self._recipients, self._chunks = "", [], []
        self._producer = None
        return succeed(None)

    def close(self):
        self.alive = False
        return succeed(None)


@implementer(IUpstreamType)
class MemqUpstreamType:
    name = "memq"
    schemes = ("memq",)

    def __init__(self) -> None:
        self.sessions: list[MemqSession] = []

    def validate(self, url) -> None:
        if not url.host:
            raise ValueError("a memq URL names its queue: memq://NAME")
        if url.port is not None or url.path not in ("", "/") or url.options or url.username:
            raise ValueError("a memq URL is only memq://NAME (no port, path, user or options)")

    def open(self, url, context):
        try:
            self.validate(url)
        except ValueError as e:
            return fail(UpstreamError("connect", str(e)))
        session = MemqSession(QUEUES.setdefault(url.host, []))
        self.sessions.append(session)
        return succeed(session)
