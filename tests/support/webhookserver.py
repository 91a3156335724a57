"""
A recording web hook for end-to-end tests, run as its own process (Twisted's
reactor cannot run twice in the test process)::

    python tests/support/webhookserver.py --record DIR [--tls-cert CHAIN --tls-key KEY]

It listens on 127.0.0.1 (an ephemeral port, written to C{DIR/port}) and
answers every request by the last segment of its path: three digits are the
status to answer (C{/t1/503}), C{stall} never answers (C{/t1/stall}),
anything else is answered 200.

Every request is recorded as C{DIR/NNNN.json} (written whole, then renamed
into place): method, path, raw headers, the body received (base64) and
whether it was complete (the terminating chunk arrived), whether it was
answered and with what status.  An answered request is recorded before the
answer is sent; any other request when its connection is lost.  When the
first piece of a request's body arrives, its path is written to
C{DIR/started-N}, so a test can act while a body is under way.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


class Recorder:
    """Writes one JSON file per request into a directory."""

    def __init__(self, directory: str):
        self.directory = directory
        self._numbers = itertools.count()
        self._started = itertools.count()

    def write(self, name: str, text: str) -> None:
        """Write a file whole, then rename it into place."""
        path = os.path.join(self.directory, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.rename(path + ".tmp", path)

    def started(self, request: RecordingRequest) -> None:
        self.write(f"started-{next(self._started)}", request.target())

    def record(self, request: RecordingRequest, body: bytes, answered: int | None) -> None:
        entry = {
            "method": request.method.decode("ascii"),
            "path": request.target(),
            "headers": [
                [key.decode("latin-1"), value.decode("latin-1")]
                for key, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ],
            "body": base64.b64encode(body).decode("ascii"),
            "bodyComplete": request.bodyComplete,
            "answered": answered,
        }
        self.write(f"{next(self._numbers):04d}.json", json.dumps(entry))


class RecordingRequest(Request):
    """A request that is recorded however it ends."""

    recorder: Recorder
    bodyComplete = False
    recorded = False

    def target(self) -> str:
        """
        The request's path and query.  Twisted sets C{uri} only once the
        body is complete; until then its channel holds the request line.
        """
        return (self.uri if self.bodyComplete else self.channel._path).decode("ascii")

    def handleContentChunk(self, data: bytes) -> None:
        if self.content.tell() == 0:
            self.recorder.started(self)
        super().handleContentChunk(data)

    def process(self) -> None:
        self.bodyComplete = True
        super().process()

    def record(self, answered: int | None) -> None:
        if not self.recorded:
            self.recorded = True
            self.content.seek(0)
            self.recorder.record(self, self.content.read(), answered)

    def connectionLost(self, reason) -> None:
        if self.content is not None:  # the request line and headers had arrived
            self.record(None)
        super().connectionLost(reason)


class Hook(Resource):
    isLeaf = True

    def render_POST(self, request: RecordingRequest):
        last = request.path.rsplit(b"/", 1)[-1]
        if last == b"stall":
            return NOT_DONE_YET
        code = int(last) if last.isdigit() and len(last) == 3 else 200
        request.record(code)
        request.setResponseCode(code)
        return b"recorded\n"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True, help="directory for the records and the port file")
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve https")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = parser.parse_args(argv)
    RecordingRequest.recorder = Recorder(args.record)
    description = "tcp:0:interface=127.0.0.1"
    if args.tls_cert:
        description = f"ssl:0:interface=127.0.0.1:certKey={args.tls_cert}:privateKey={args.tls_key}"
    site = Site(Hook(), requestFactory=RecordingRequest)
    site.noisy = False

    def listening(port) -> None:
        RecordingRequest.recorder.write("port", str(port.getHost().port))

    def failed(failure) -> None:
        print(failure.getErrorMessage(), file=sys.stderr)
        reactor.stop()

    serverFromString(reactor, description).listen(site).addCallbacks(listening, failed)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
