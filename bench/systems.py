"""
The systems under comparison, each relaying to its own smtp-sink on loopback:

- `direct`: no relay at all, the client talks to the sink (the ceiling);
- `postfix`: a throwaway Postfix instance (store and forward: it queues to
  disk and answers 250 before delivering; the sink is its relayhost);
- `aiosmtpd`: bench/peers/aiosmtpd_proxy.py (buffers each message, answers
  after the upstream);
- `haraka`, `haraka-nodelay`: Haraka with queue/smtp_forward (answers after
  the upstream), stock, and with TCP_NODELAY forced on every socket;
- `smtprelay`: ours, `twistd -n smtprelay` with its real store.

Each C{start()}s in a work directory and has C{port} (where clients
connect), C{sink} and C{roots()} (the processes whose CPU and memory count).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from bench import install
from bench.clients import SENDER
from bench.smtpsink import SmtpSink, waitForPort
from tests.support.postfix import Postfix as PostfixInstance
from tests.support.relay import freePort

__all__ = ["SYSTEMS", "System"]

BENCH = Path(__file__).resolve().parent


def _stopProcess(process: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


class System:
    key = ""
    label = ""
    description = ""

    def __init__(self) -> None:
        self.sink: SmtpSink | None = None
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.directory: Path | None = None

    def start(self, directory: Path, sink: SmtpSink | None = None) -> None:
        """Start in C{directory}, relaying into C{sink} (by default a new smtp-sink, stopped with us)."""
        self.directory = directory / self.key
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sink = sink or SmtpSink()
        self.port = freePort()
        self._start()

    def _start(self) -> None:
        raise NotImplementedError

    def roots(self) -> list[int]:
        return [self.process.pid] if self.process and self.process.poll() is None else []

    def unavailable(self, client) -> str | None:
        """Why this client cannot drive this system, or C{None}."""
        return None

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def stop(self) -> None:
        _stopProcess(self.process)
        if self.sink is not None:
            self.sink.stop()

    def _spawn(self, command: list[str], logName: str, **kwargs) -> None:
        log = open(self.directory / logName, "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        log.close()
        try:
            waitForPort(self.port, process=self.process)
        except RuntimeError as e:
            raise RuntimeError(f"{self.label}: {e}; see {self.directory / logName}") from None


class Direct(System):
    key = "direct"
    label = "direct (no relay)"
    description = "smtp-sink alone: the ceiling of client and sink on this machine"

    def _start(self) -> None:
        self.port = self.sink.port

    def roots(self) -> list[int]:
        return []


class Postfix(System):
    key = "postfix"
    label = "Postfix"
    description = "throwaway Postfix instance, relayhost = the sink (queues to disk, 250 before delivery)"

    def _start(self) -> None:
        settings = {
            "myhostname": "postfix.bench.invalid",
            "mydomain": "bench.invalid",
            "relayhost": f"[127.0.0.1]:{self.sink.port}",
            "message_size_limit": str(64 << 20),
        }
        self.instance = PostfixInstance("bench", self.port, settings)
        self.instance.start()

    def roots(self) -> list[int]:
        instance = getattr(self, "instance", None)
        return instance.pids() if instance is not None else []

    def alive(self) -> bool:
        return bool(self.roots()) and Path(f"/proc/{self.roots()[0]}").exists()

    def stop(self) -> None:
        if getattr(self, "instance", None) is not None:
            self.instance.stop()
        super().stop()


class Aiosmtpd(System):
    key = "aiosmtpd"
    label = "aiosmtpd proxy"
    description = "bench/peers/aiosmtpd_proxy.py: buffers the message, pooled upstream, 250 after the upstream's"

    def _start(self) -> None:
        self._spawn(
            [
                str(install.VENV / "bin" / "python"), str(BENCH / "peers" / "aiosmtpd_proxy.py"),
                "--listen", f"127.0.0.1:{self.port}", "--upstream", f"127.0.0.1:{self.sink.port}",
            ],
            "aiosmtpd.log",
        )  # fmt: skip


_HARAKA_PLUGIN = """\
'use strict'
// Benchmark only: keep everything on loopback and accept every recipient.
exports.hook_lookup_rdns = function (next, connection) { next(OK, 'localhost') }
exports.hook_rcpt = function (next, connection, params) { next(OK) }
"""

_NODELAY = """\
'use strict'
// Force TCP_NODELAY on every socket Haraka opens or accepts (stock Haraka
// leaves Nagle's algorithm on).
const net = require('node:net')
const connect = net.Socket.prototype.connect
net.Socket.prototype.connect = function (...args) {
    this.once('connect', () => this.setNoDelay(true))
    return connect.apply(this, args)
}
const emit = net.Server.prototype.emit
net.Server.prototype.emit = function (event, socket, ...rest) {
    if (event === 'connection' && socket && typeof socket.setNoDelay === 'function') socket.setNoDelay(true)
    return emit.call(this, event, socket, ...rest)
}
"""


class Haraka(System):
    key = "haraka"
    label = "Haraka"
    description = "Haraka + queue/smtp_forward (250 after the upstream's), stock socket options"
    nodelay = False

    def _start(self) -> None:
        d = self.directory / "haraka"
        if not (d / "config").exists():
            subprocess.run(["node", str(install.harakaBinary()), "-i", str(d)], check=True, capture_output=True)
        config = d / "config"
        (config / "smtp.ini").write_text(f"listen=127.0.0.1:{self.port}\npublic_ip=127.0.0.1\n")
        (config / "plugins").write_text("bench_local\nqueue/smtp_forward\n")
        (config / "smtp_forward.ini").write_text(f"host=127.0.0.1\nport={self.sink.port}\n")
        (config / "me").write_text(f"{self.key}.bench.invalid\n")
        (d / "plugins").mkdir(exist_ok=True)
        (d / "plugins" / "bench_local.js").write_text(_HARAKA_PLUGIN)
        command = ["node"]
        if self.nodelay:
            (d / "nodelay.js").write_text(_NODELAY)
            command += ["--require", str(d / "nodelay.js")]
        self._spawn([*command, str(install.harakaBinary()), "-c", str(d)], "haraka.log")


class HarakaNoDelay(Haraka):
    key = "haraka-nodelay"
    label = "Haraka (NODELAY)"
    description = "the same Haraka with TCP_NODELAY forced on its sockets (a --require preload)"
    nodelay = True


class SmtpRelay(System):
    """
    Two instances run, one per way in: C{smtprelay} has a C{--no-auth}
    network for 127.0.0.1 (smtp-source has no AUTH), C{smtprelay-auth} has
    none, since a client from a no-auth network may not AUTH.
    """

    key = "smtprelay"
    label = "smtprelay"
    description = (
        "ours: twistd -n smtprelay, SQLite store, one tenant whose upstream is the sink; no-auth network 127.0.0.1/32"
    )
    noAuthNetwork = True

    def _start(self) -> None:
        sys.path.insert(0, str(BENCH.parent))
        from tests.support.certs import makeCA
        from tests.support.relay import RelayProcess

        self.ca = makeCA(self.directory)
        self.relay = RelayProcess(
            self.directory / "relay", self.ca,
            "--allow-insecure-auth",  # for the plain-text AUTH runs (load.py --no-tls)
            f"--max-message-size={64 << 20}",
            # RelayProcess is tuned for tests; back to the defaults an operator runs.
            "--refresh-interval=2", "--upstream-timeout=60", f"--workers={os.cpu_count()}",
        )  # fmt: skip
        self.process = self.relay.process
        self.port = self.relay.port
        self.account = self.relay.addTenant("bench", f"smtp://127.0.0.1:{self.sink.port}", domains=("example.com",))
        self.noAuth = self._addNoAuthNetwork() if self.noAuthNetwork else None

    def _addNoAuthNetwork(self) -> str | None:
        """Let smtp-source (no AUTH, no TLS) in from 127.0.0.1; the reason when it cannot be."""
        store = self.relay.store
        store.addNetwork("bench", "127.0.0.1/32", noAuth=True)
        self.relay.waitForGeneration(store.generation())
        # The store has it; does the server honour it?
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                f = s.makefile("rb")

                def say(line: bytes) -> bytes:
                    if line:
                        s.sendall(line + b"\r\n")
                    reply = f.readline()
                    while reply[3:4] == b"-":
                        reply = f.readline()
                    return reply

                say(b"")
                say(b"EHLO probe.bench.invalid")
                reply = say(f"MAIL FROM:<{SENDER}>".encode())
                say(b"RSET")
                say(b"QUIT")
        except OSError as e:
            return f"n/a (no-auth probe failed: {e})"
        if not reply.startswith(b"250"):
            return f"n/a (no-auth network not honoured: MAIL got {reply.decode(errors='replace').strip()})"
        return None

    def unavailable(self, client) -> str | None:
        return self.noAuth if client.key == "smtp-source" else None

    def stop(self) -> None:
        if getattr(self, "relay", None) is not None:
            self.relay.stop()
        super().stop()


class SmtpRelayAuth(SmtpRelay):
    key = "smtprelay-auth"
    description = "ours, as above, without the no-auth network: clients log in (AUTH PLAIN)"
    noAuthNetwork = False


SYSTEMS: dict[str, type[System]] = {
    cls.key: cls for cls in (Direct, Postfix, Aiosmtpd, Haraka, HarakaNoDelay, SmtpRelay, SmtpRelayAuth)
}
