"""
Relay one big message (100 MB by default) and print the relay's peak RSS
growth: streaming means memory per session stays bounded whatever the size.

    .venv/bin/python bench/memory.py [--megabytes 100] [--limit-mb 16]

The relay runs as `twistd smtprelay` with its real store; the upstream is a
sink that discards what it reads.  Peak RSS is the kernel's high-water mark
(VmHWM) of the relay process, reset once the transaction reached DATA and
compared with its RSS at that moment.
Exit status 1 when the growth reaches the limit.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from base64 import b64encode
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procstat import status  # noqa: E402
from bench.sink import Sink  # noqa: E402
from tests.support.certs import makeCA  # noqa: E402
from tests.support.relay import RelayProcess  # noqa: E402


class Client:
    """A minimal SMTP client that streams the message body from a generator."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.file = self.sock.makefile("rb")
        self.expect(220)

    def expect(self, code: int) -> bytes:
        while True:
            line = self.file.readline()
            if line[3:4] != b"-":
                break
        if int(line[:3]) != code:
            raise RuntimeError(f"expected {code}, got {line!r}")
        return line

    def command(self, line: bytes, code: int) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.expect(code)

    def start(self, username: str, password: str) -> None:
        """Everything up to our 354."""
        self.command(b"EHLO bench.test", 250)
        self.command(b"AUTH PLAIN " + b64encode(f"\0{username}\0{password}".encode()), 235)
        self.command(b"MAIL FROM:<bench@example.com>", 250)
        self.command(b"RCPT TO:<sink@example.net>", 250)
        self.command(b"DATA", 354)

    def send(self, chunks) -> bytes:
        for chunk in chunks:
            self.sock.sendall(chunk)
        self.sock.sendall(b".\r\n")
        return self.expect(250)


def body(megabytes: int):
    line = b"x" * 76 + b"\r\n"
    block = b"From: <bench@example.com>\r\nTo: <sink@example.net>\r\nSubject: big\r\n\r\n" + line * (65536 // len(line))
    yield block
    block = line * (65536 // len(line))
    for _ in range(megabytes * 1024 * 1024 // len(block)):
        yield block


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--limit-mb", type=float, default=16.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Sink() as sink:
        relay = RelayProcess(
            Path(tmp), makeCA(Path(tmp)), "--allow-insecure-auth", f"--max-message-size={(args.megabytes + 1) << 20}"
        )
        try:
            account = relay.addTenant("bench", f"smtp://127.0.0.1:{sink.port}")
            pid = relay.process.pid
            warmUp = Client(relay.port)
            warmUp.start(account.username, account.password)
            warmUp.send(body(1))
            client = Client(relay.port)
            client.start(account.username, account.password)
            # Only the message counts: forget the peak of start-up and of
            # hashing the password (scrypt takes 32 MiB while it runs).
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            baseline = status(pid, "VmRSS")
            started = time.monotonic()
            reply = client.send(body(args.megabytes))
            elapsed = time.monotonic() - started
            growth = (status(pid, "VmHWM") - baseline) / 1024
        finally:
            relay.stop()
        print(
            f"relayed {args.megabytes} MB in {elapsed:.1f} s ({args.megabytes / elapsed:.1f} MB/s); "
            f"upstream received {sink.received / 1e6:.1f} MB; reply {reply.decode().strip()}"
        )
        print(
            f"relay RSS before: {baseline / 1024:.1f} MB; peak RSS growth: {growth:.1f} MB (limit {args.limit_mb} MB)"
        )
        return 0 if growth < args.limit_mb else 1


if __name__ == "__main__":
    sys.exit(main())
