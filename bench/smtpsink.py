"""
Postfix's smtp-sink as the upstream of a system under test: a C process
that accepts and discards everything, fast enough not to be the bottleneck.

    with SmtpSink() as sink:        # listening on sink.port
        mark = sink.mark()
        ...                         # send N messages through the system
        sink.waitFor(mark, N)       # monotonic time the N-th message arrived
        sink.connectionsSince(mark) # upstream connections that carried them

Counters come from `smtp-sink -c` ("sess=S quit=Q mesg=M" after every
message and every session end); open connections are counted with
`ss -ti` (bytes received per established socket on the sink's port, so a
pooled connection that stayed idle is not counted), or from /proc/net/tcp
without ss.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.relay import freePort

__all__ = ["DelaySink", "Mark", "SmtpSink", "openConnections"]

_COUNTERS = re.compile(rb"sess=(\d+) quit=\d+ mesg=(\d+)")


def openConnections(port: int) -> int:
    """Established TCP connections whose local end is 127.0.0.1:port (or ::)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        count += 1
        except FileNotFoundError:
            pass
    return count


def receivedBytes(port: int) -> dict[str, int] | None:
    """
    Octets received so far on each established connection whose local end is
    127.0.0.1:port, keyed by the peer's address (from `ss -ti`); C{None}
    without a working ss.
    """
    try:
        out = subprocess.run(
            ["ss", "-tinH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found: dict[str, int] = {}
    peer = None
    for line in out.splitlines():
        if not line[:1].isspace():
            fields = line.split()
            peer = fields[-1] if len(fields) >= 2 else None
            if peer is not None:
                found[peer] = 0
        elif peer is not None:
            m = re.search(r"bytes_received:(\d+)", line)
            if m:
                found[peer] = int(m.group(1))
    return found


def waitForPort(port: int, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


@dataclass(frozen=True)
class Mark:
    """The sink's counters at one moment."""

    sessions: int  # sessions that have ended
    messages: int
    open: int  # connections open
    received: dict[str, int] | None = None  # octets received per open connection (by peer)


class SmtpSink:
    """
    One smtp-sink process on a free loopback port.

    @ivar messages: messages received so far.
    @ivar sessions: sessions ended so far.
    """

    def __init__(self, binary: str | None = None, backlog: int = 256):
        self.binary = binary or shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        self.port = freePort()
        self.messages = 0
        self.sessions = 0
        self._cond = threading.Condition()
        self._reached: dict[int, float] = {}  # message count -> when it was reached (waited for)
        self.process = subprocess.Popen(
            self._command(backlog), stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        waitForPort(self.port, process=self.process)

    def _command(self, backlog: int) -> list[str]:
        command = [self.binary, "-c", "-h", "sink.bench.invalid"]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        return command + [f"127.0.0.1:{self.port}", str(backlog)]

    def _read(self) -> None:
        tail = b""
        while True:
            chunk = self.process.stdout.read(65536)
            if not chunk:
                break
            now = time.monotonic()
            tail += chunk
            found = list(_COUNTERS.finditer(tail))
            if not found:
                continue
            last = found[-1]
            tail = tail[last.end() :]
            with self._cond:
                self.sessions = int(last.group(1))
                self.messages = int(last.group(2))
                for target in [t for t in self._reached if self._reached[t] == 0.0 and self.messages >= t]:
                    self._reached[target] = now
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def mark(self) -> Mark:
        # Connections first: one that ends right now is then counted as open,
        # not lost between the two readings.
        received = receivedBytes(self.port)
        open_ = len(received) if received is not None else openConnections(self.port)
        with self._cond:
            return Mark(self.sessions, self.messages, open_, received)

    def expect(self, mark: Mark, count: int) -> None:
        """Note the time the C{count}-th message since C{mark} arrives (call before sending)."""
        with self._cond:
            self._reached.setdefault(mark.messages + count, 0.0)

    def waitFor(self, mark: Mark, count: int, timeout: float) -> float | None:
        """
        Wait until C{count} messages arrived since C{mark}; return the
        monotonic time the last one was seen, or C{None} on time-out.
        """
        target = mark.messages + count
        deadline = time.monotonic() + timeout
        with self._cond:
            self._reached.setdefault(target, 0.0)
            while self.messages < target:
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    self._reached.pop(target, None)
                    return None
                self._cond.wait(left)
            return self._reached.pop(target) or time.monotonic()

    def connectionsSince(self, mark: Mark) -> int:
        """
        Connections that carried something since C{mark}: those that ended
        since, plus those open now that received octets since (without ss:
        every one open now, used or idle).
        """
        now = self.mark()
        if now.received is None or mark.received is None:
            return now.sessions - mark.sessions + now.open
        used = sum(1 for peer, octets in now.received.items() if octets > mark.received.get(peer, 0))
        return now.sessions - mark.sessions + used

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        self.process.stdout.close()
        self.process.stderr.close()

    def __enter__(self) -> SmtpSink:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class DelaySink(SmtpSink):
    """
    bench/delaysink.py instead of smtp-sink: every reply C{delay} ms after
    its command, as an upstream that far away; with C{chunking}, it offers
    CHUNKING as well as PIPELINING.
    """

    def __init__(self, delay: float, chunking: bool):
        self.delay, self.chunking = delay, chunking
        super().__init__()

    def _command(self, backlog: int) -> list[str]:
        command = [sys.executable, str(Path(__file__).with_name("delaysink.py")), "--port", str(self.port)]
        return command + ["--delay", str(self.delay)] + (["--chunking"] if self.chunking else [])
