"""
An SMTP load client: N concurrent sessions share M messages of S octets,
each session reusing its connection (MAIL, RCPT, DATA per message), and it
prints throughput and per-message latency.

    python bench/load.py --server host:port --user U --password P \\
        --sessions 20 --messages 2000 --size 1024 [--no-tls] [--insecure]

Each session: connect, EHLO, STARTTLS (unless --no-tls), EHLO again, AUTH
PLAIN (unless no --user), then messages until none is left.  A message's
latency runs from sending MAIL FROM to reading the reply to the final dot:
for a relay that streams (like smtprelay) it includes the upstream's work.
Commands are sent one at a time (no pipelining), like Postfix's smtp-source.

Safe to point at your own deployment: it sends only the messages asked for,
to --to (default sink@example.net), from --sender (default
bench@example.com), and stops.  --json prints one machine-readable line
(used by bench/compare.py).

Exit status: 0 when every message got 250, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import ssl
import sys
import time
from base64 import b64encode
from dataclasses import asdict, dataclass, field

__all__ = ["LoadResult", "makeMessage", "percentile", "run"]

LINE = 78  # payload line length, before CRLF


class SMTPError(Exception):
    def __init__(self, step: str, reply: str):
        super().__init__(f"{step}: {reply}")
        self.step = step
        self.reply = reply


def makeMessage(size: int, sender: str, recipient: str) -> bytes:
    """
    Headers and a payload of C{size} octets of CRLF-terminated lines (like
    smtp-source's -l: the headers are extra), already dot-stuffed and
    followed by the end-of-data marker.
    """
    headers = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: smtprelay load test\r\n"
        f"Message-ID: <{os.urandom(8).hex()}@bench.invalid>\r\n\r\n"
    ).encode()
    line = b"X" * LINE + b"\r\n"
    count, rest = divmod(size, len(line))
    payload = line * count
    if rest == 1 and count:  # no room for a CRLF of its own: lengthen the last line
        payload = payload[:-2] + b"X\r\n"
    elif rest >= 2:
        payload += b"X" * (rest - 2) + b"\r\n"
    return headers + payload + b".\r\n"


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (C{fraction} in 0..1) of unsorted values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


@dataclass
class LoadResult:
    """
    What one run did; times in seconds (C{started}/C{finished} are
    C{time.monotonic()}, the system-wide CLOCK_MONOTONIC, so another process
    on the host can line them up with its own clock).
    """

    sessions: int
    messages: int
    size: int
    sent: int = 0
    errors: int = 0
    started: float = 0.0
    finished: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    firstErrors: list[str] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return self.finished - self.started

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "latencies"}
        elapsed = self.elapsed or float("nan")
        d.update(
            elapsed=elapsed,
            msgPerSecond=self.sent / elapsed,
            mbPerSecond=self.sent * self.size / elapsed / 2**20,
            p50=percentile(self.latencies, 0.50),
            p99=percentile(self.latencies, 0.99),
        )
        return d


class Session:
    def __init__(self, options: argparse.Namespace, result: LoadResult):
        self.options = options
        self.result = result
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def reply(self, step: str, expect: int) -> str:
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise SMTPError(step, "connection closed")
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                break
        if not lines[-1][:3].isdigit() or int(lines[-1][:3]) != expect:
            raise SMTPError(step, " / ".join(lines))
        return "\n".join(lines)

    async def command(self, line: str, expect: int) -> str:
        self.writer.write(line.encode() + b"\r\n")
        return await self.reply(line.split(" ", 1)[0], expect)

    async def open(self) -> None:
        o = self.options
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(o.host, o.port, limit=1 << 20), o.timeout
        )
        await self.reply("greeting", 220)
        ehlo = await self.command(f"EHLO {o.helo}", 250)
        if o.tls:
            if "STARTTLS" not in ehlo.upper():
                raise SMTPError("STARTTLS", "not offered by the server")
            await self.command("STARTTLS", 220)
            await self.writer.start_tls(o.sslContext, server_hostname=o.tlsName)
            await self.command(f"EHLO {o.helo}", 250)
        if o.user is not None:
            token = b64encode(f"\0{o.user}\0{o.password}".encode()).decode()
            await self.command(f"AUTH PLAIN {token}", 235)

    async def close(self) -> None:
        if self.writer is None:
            return
        try:
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.reply("QUIT", 221), 5)
        except (TimeoutError, OSError, SMTPError, ssl.SSLError):
            pass
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (TimeoutError, OSError, ssl.SSLError):
            pass
        self.writer = None

    async def send(self, message: bytes) -> None:
        o = self.options
        started = time.monotonic()
        await self.command(f"MAIL FROM:<{o.sender}>", 250)
        await self.command(f"RCPT TO:<{o.to}>", 250)
        await self.command("DATA", 354)
        self.writer.write(message)
        await self.writer.drain()
        await self.reply("end of data", 250)
        self.result.latencies.append(time.monotonic() - started)
        self.result.sent += 1


def _error(result: LoadResult, error: BaseException) -> None:
    result.errors += 1
    if len(result.firstErrors) < 5:
        result.firstErrors.append(str(error) or type(error).__name__)


async def _worker(options: argparse.Namespace, result: LoadResult, remaining: list[int], message: bytes) -> None:
    session = Session(options, result)
    failures = 0
    while remaining[0] > 0:
        remaining[0] -= 1  # claim a message before any await: no other session can take it
        try:
            if session.writer is None:
                try:
                    await session.open()
                except BaseException:
                    remaining[0] += 1  # not attempted: give it back
                    raise
            try:
                await asyncio.wait_for(session.send(message), options.timeout)
            except SMTPError as e:
                _error(result, e)  # refused: count it, reset, go on with the next
                if e.reply == "connection closed":
                    e.counted = True
                    raise
                await session.command("RSET", 250)
        except (TimeoutError, OSError, SMTPError, ssl.SSLError) as e:
            # The connection (or its set-up) failed: start a new one, a few times.
            if not getattr(e, "counted", False):
                _error(result, e)
            failures += 1
            if session.writer is not None:
                session.writer.close()
                session.writer = None
            if failures > options.max_reconnects:
                return
    await session.close()


async def run(options: argparse.Namespace) -> LoadResult:
    """Run the load described by parsed command-line options."""
    result = LoadResult(options.sessions, options.messages, options.size)
    message = makeMessage(options.size, options.sender, options.to)
    remaining = [options.messages]
    result.started = time.monotonic()
    await asyncio.gather(*(_worker(options, result, remaining, message) for _ in range(options.sessions)))
    result.finished = time.monotonic()
    result.errors += max(0, remaining[0])  # never attempted: every session gave up
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--server", required=True, help="host:port")
    p.add_argument("--user", help="AUTH PLAIN user name (no AUTH without it)")
    p.add_argument("--password", default=os.environ.get("LOAD_PASSWORD"), help="or env LOAD_PASSWORD")
    p.add_argument("--sessions", type=int, default=1, help="concurrent sessions (default 1)")
    p.add_argument("--messages", type=int, default=100, help="messages in all (default 100)")
    p.add_argument("--size", type=int, default=1024, help="payload octets per message, headers extra (default 1024)")
    p.add_argument("--no-tls", dest="tls", action="store_false", help="do not STARTTLS")
    p.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    p.add_argument("--ca", help="trust this CA file instead of the system's")
    p.add_argument("--tls-name", dest="tlsName", help="the certificate's expected name (default: the host)")
    p.add_argument("--sender", default="bench@example.com")
    p.add_argument("--to", default="sink@example.net")
    p.add_argument("--helo", default="load.bench.invalid")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per message and per connect")
    p.add_argument("--max-reconnects", type=int, default=3, help="per session, after a broken connection")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    return p


def parseArguments(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    o = p.parse_args(argv)
    host, sep, port = o.server.rpartition(":")
    if not sep or not port.isdigit():
        p.error("--server must be host:port")
    o.host, o.port = host.strip("[]"), int(port)
    if o.user is not None and o.password is None:
        p.error("--user needs --password (or LOAD_PASSWORD)")
    if o.sessions < 1 or o.messages < 0 or o.size < 0:
        p.error("--sessions must be positive; --messages and --size not negative")
    o.tlsName = o.tlsName or o.host
    if o.tls:
        context = ssl.create_default_context(cafile=o.ca)
        if o.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        o.sslContext = context
    return o


def main(argv: list[str] | None = None) -> int:
    options = parseArguments(argv)
    result = asyncio.run(run(options))
    s = result.summary()
    if options.json:
        print(json.dumps(s))
    else:
        ms = lambda v: "-" if v is None else f"{v * 1000:.1f} ms"  # noqa: E731
        print(
            f"{s['sent']}/{s['messages']} messages of {s['size']} octets over {s['sessions']} sessions "
            f"in {s['elapsed']:.2f} s: {s['msgPerSecond']:.1f} msg/s, {s['mbPerSecond']:.2f} MB/s; "
            f"latency p50 {ms(s['p50'])}, p99 {ms(s['p99'])}; errors {s['errors']}"
        )
        for e in s["firstErrors"]:
            print(f"  error: {e}", file=sys.stderr)
    return 0 if result.errors == 0 and result.sent == options.messages else 1


if __name__ == "__main__":
    sys.exit(main())
