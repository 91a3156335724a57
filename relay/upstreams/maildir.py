"""
The C{maildir:///absolute/path} upstream type: local delivery into a
Maildir, handy for trying the relay out and for tenants whose mail is read
on this host.

Each message is written to C{tmp/}, flushed to disk with fsync and only then
renamed into C{new/} (atomic), so a 250 means the message is on disk and
a crash never leaves a partial message in C{new/}.  A C{Return-Path} field
with the envelope sender is prepended, as local delivery agents do.
"""

from __future__ import annotations

import os
import socket
import time
from itertools import count
from typing import BinaryIO

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from relay.core.reply import Reply
from relay.core.urls import UpstreamURL
from relay.seams.interfaces import IUpstreamSession, IUpstreamType
from relay.seams.upstream import UpstreamContext, UpstreamError

__all__ = ["MaildirUpstreamType"]

_sequence = count()


def _prepare(root: str) -> None:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)


def _uniqueName() -> str:
    """A Maildir file name: time, pid and a sequence number, and the host."""
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_sequence)}.{socket.gethostname()}"


def _commit(file, root: str, name: str) -> None:
    """Flush, fsync, and move from tmp/ to new/ (runs on a thread)."""
    file.flush()
    os.fsync(file.fileno())
    file.close()
    os.rename(os.path.join(root, "tmp", name), os.path.join(root, "new", name))
    directory = os.open(os.path.join(root, "new"), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@implementer(IUpstreamSession)
class MaildirSession:
    """Messages written one at a time into the Maildir at C{root}."""

    alive = True

    def __init__(self, root: str, context: UpstreamContext):
        self._root = root
        self._context = context
        self._file: BinaryIO | None = None
        self._name = ""
        self._sender = ""

    def mailFrom(self, sender: str, parameters) -> Deferred[Reply]:
        self._sender = sender
        return succeed(Reply.of(250, "2.1.0", "Ok"))

    def rcptTo(self, recipient: str, parameters) -> Deferred[Reply]:
        return succeed(Reply.of(250, "2.1.5", "Ok"))

    def data(self) -> Deferred[Reply]:
        self._name = _uniqueName()
        self._file = file = open(os.path.join(self._root, "tmp", self._name), "xb")  # noqa: SIM115 (closed by _commit or abort)
        file.write(f"Return-Path: <{self._sender}>\r\n".encode("ascii"))
        return succeed(Reply.of(354, None, "Go ahead"))

    def write(self, data: bytes) -> None:
        assert self._file is not None, "writes follow data()"
        self._file.write(data)

    def registerProducer(self, producer, streaming: bool) -> None:
        """Writes go to the page cache at once; there is nothing to pause for."""

    def unregisterProducer(self) -> None:
        pass

    def end(self) -> Deferred[list[Reply]]:
        file, self._file = self._file, None
        d = deferToThreadPool(self._context.reactor, self._context.threadPool, _commit, file, self._root, self._name)

        def failed(failure):
            raise UpstreamError("lost", f"maildir delivery failed: {failure.getErrorMessage()}")

        return d.addCallbacks(lambda _: [Reply.of(250, "2.0.0", f"Ok: delivered as {self._name}")], failed)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            os.unlink(os.path.join(self._root, "tmp", self._name))
            self._file = None

    def reset(self) -> Deferred[None]:
        self.abort()
        return succeed(None)

    def close(self) -> Deferred[None]:
        self.abort()
        return succeed(None)


@implementer(IUpstreamType)
class MaildirUpstreamType:
    name = "maildir"
    schemes = ("maildir",)

    def validate(self, url: UpstreamURL) -> None:
        if url.host or not os.path.isabs(url.path):
            raise ValueError("a maildir URL names an absolute path: maildir:///var/mail/acme")
        if url.options or url.username:
            raise ValueError("a maildir URL takes no options or credentials")

    def open(self, url: UpstreamURL, context: UpstreamContext) -> Deferred[MaildirSession]:
        d = deferToThreadPool(context.reactor, context.threadPool, _prepare, url.path)

        def failed(failure):
            raise UpstreamError("connect", f"cannot use maildir {url.path}: {failure.getErrorMessage()}")

        return d.addCallbacks(lambda _: MaildirSession(url.path, context), failed)
