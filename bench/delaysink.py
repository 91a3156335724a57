"""
A distant upstream for the latency benchmark: an SMTP sink whose every
reply leaves DELAY milliseconds after the command that asked for it
arrived, as if the sink were DELAY ms of round trip away (Microsoft 365
and Google are 10-50 ms from most relays).  Pipelined commands that arrive
together are answered together, DELAY later, as over a real network; the
body's bytes are taken at once (the benchmark's messages are small).

    python bench/delaysink.py --port 2526 --delay 25 [--chunking] [--no-pipelining]

It accepts and discards every message, advertising PIPELINING (unless
--no-pipelining), SIZE, 8BITMIME, ENHANCEDSTATUSCODES and, with
--chunking, CHUNKING (BDAT, RFC 3030).  Like Postfix's smtp-sink -c it
prints "sess=S quit=Q mesg=M" on standard output after every message and
every session end, which is what bench.smtpsink.SmtpSink reads.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys


class Counters:
    def __init__(self) -> None:
        self.sessions = self.quits = self.messages = 0

    def show(self) -> None:
        sys.stdout.write(f"sess={self.sessions} quit={self.quits} mesg={self.messages}\n")
        sys.stdout.flush()


class DelayedSMTP(asyncio.Protocol):
    def __init__(self, options: argparse.Namespace, counters: Counters) -> None:
        self.options, self.counters = options, counters
        self.loop = asyncio.get_running_loop()
        self.delay = options.delay / 1000
        self.buffer = b""
        self.inData = False
        self.bdatLeft = 0  # octets of a BDAT chunk still to take
        self.bdatLast = False
        self.transport: asyncio.Transport | None = None
        self.due: collections.deque = collections.deque()  # replies in order, with when
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.reply(b"220 sink.bench.invalid ESMTP")

    def reply(self, line: bytes, then=None) -> None:
        """Send C{line} DELAY after now (when its command completed), after every earlier reply; then C{then()}."""
        self.due.append((self.loop.time() + self.delay, line + b"\r\n", then))
        if self.timer is None:
            self.timer = self.loop.call_at(self.due[0][0], self._flush)

    def _flush(self) -> None:
        self.timer, now, out, after = None, self.loop.time(), [], []
        while self.due and self.due[0][0] <= now:
            _, data, then = self.due.popleft()
            out.append(data)
            if then is not None:
                after.append(then)
        if out and not self.transport.is_closing():
            self.transport.write(b"".join(out))
        for then in after:
            then()
        if self.due:
            self.timer = self.loop.call_at(self.due[0][0], self._flush)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.buffer:
            if self.bdatLeft:
                taken = min(self.bdatLeft, len(self.buffer))
                self.buffer, self.bdatLeft = self.buffer[taken:], self.bdatLeft - taken
                if not self.bdatLeft:
                    self._chunkDone()
                continue
            if self.inData:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    self.buffer = self.buffer[-4:]
                    return
                self.buffer, self.inData = self.buffer[end + 5 :], False
                self._message()
                continue
            line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                return
            self.buffer = rest
            self.command(line)

    def command(self, line: bytes) -> None:
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        if verb in (b"EHLO", b"LHLO"):
            extensions = [b"sink.bench.invalid", b"SIZE 104857600", b"8BITMIME", b"ENHANCEDSTATUSCODES"]
            if self.options.pipelining:
                extensions.append(b"PIPELINING")
            if self.options.chunking:
                extensions.append(b"CHUNKING")
            self.reply(b"\r\n".join(b"250-" + e for e in extensions[:-1]) + b"\r\n250 " + extensions[-1])
        elif verb == b"HELO":
            self.reply(b"250 sink.bench.invalid")
        elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            self.reply(b"250 2.0.0 Ok")
        elif verb == b"DATA":
            self.reply(b"354 End data with <CR><LF>.<CR><LF>")
            self.inData = True
            self.buffer = b"\r\n" + self.buffer  # the end marker may follow at once
        elif verb == b"BDAT" and self.options.chunking:
            size, _, last = argument.partition(b" ")
            self.bdatLeft, self.bdatLast = int(size), last.strip().upper() == b"LAST"
            if not self.bdatLeft:
                self._chunkDone()
        elif verb == b"QUIT":
            self.counters.quits += 1
            self.reply(b"221 2.0.0 Bye", then=self.transport.close)
        else:
            self.reply(b"502 5.5.2 Not implemented")

    def _chunkDone(self) -> None:
        if self.bdatLast:
            self._message()
        else:
            self.reply(b"250 2.0.0 Chunk ok")

    def _message(self) -> None:
        self.counters.messages += 1
        self.counters.show()
        self.reply(b"250 2.0.0 Ok: queued")

    def connection_lost(self, exc) -> None:
        self.counters.sessions += 1
        self.counters.show()


async def serve(options: argparse.Namespace) -> None:
    counters = Counters()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: DelayedSMTP(options, counters), "127.0.0.1", options.port, backlog=256)
    async with server:
        await server.serve_forever()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    p.add_argument("--delay", type=float, default=25.0, help="milliseconds between a command and its reply")
    p.add_argument("--chunking", action="store_true", help="advertise CHUNKING (BDAT)")
    p.add_argument("--no-pipelining", dest="pipelining", action="store_false", help="do not advertise PIPELINING")
    try:
        asyncio.run(serve(p.parse_args(argv)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
