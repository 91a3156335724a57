"""
New STARTTLS + AUTH connections, as Salesforce makes them (a handful of
messages per connection, a new connection each time): smtprelay (one
process), Postfix (smtpd with Cyrus SASL) and Haraka (tls, auth/flat_file)
with the same client, with and without TLS session resumption.

    python -m bench.handshakes [--quick] [--seconds 10] [--clients 8]

Each connection: greeting, EHLO, STARTTLS, the TLS handshake (the client
offering the session of its previous connection when resuming), EHLO,
AUTH PLAIN, QUIT.  CLIENTS processes connect in a loop for SECONDS.  The
server's CPU time comes from /proc (bench.procstat), so "per core" is
connections per CPU second of the server's processes.  Prints one table,
also written to bench/results/<timestamp>-handshakes.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import multiprocessing
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import install  # noqa: E402
from bench.compare import fmt, log  # noqa: E402
from bench.procstat import Usage  # noqa: E402
from bench.smtpsink import waitForPort  # noqa: E402
from tests.support.certs import makeCA  # noqa: E402
from tests.support.postfix import Postfix, requireAuth  # noqa: E402
from tests.support.relay import RelayProcess, freePort  # noqa: E402

BENCH = Path(__file__).resolve().parent
USER, PASSWORD, REALM = "bench", "bench-secret-1", "bench.invalid"


class Server:
    """One server under test on 127.0.0.1:port, STARTTLS and AUTH PLAIN for (username, password)."""

    label = ""
    port = 0
    username = ""
    roots: list[int] = []

    def stop(self) -> None:
        raise NotImplementedError


class Relay(Server):
    label = "smtprelay (1 process)"

    def __init__(self, work: Path, ca) -> None:
        self.relay = RelayProcess(work / "relay", ca, "--max-connections-per-ip=1000", "--max-auth-failures=1000")
        account = self.relay.addTenant("bench", "smtp://127.0.0.1:9", domains=("example.com",))
        self.port, self.username, self.password = self.relay.port, account.username, account.password
        self.roots = [self.relay.process.pid]

    def stop(self) -> None:
        self.relay.stop()


class PostfixServer(Server):
    label = "Postfix smtpd"

    def __init__(self, work: Path, ca) -> None:
        self.postfix = Postfix("handshakes", freePort(), {"myhostname": "postfix.bench.invalid"})
        cert = ca.issue(self.postfix.directory, "postfix", hostnames=["localhost"], ips=["127.0.0.1"])
        requireAuth(self.postfix, cert.chain, cert.key, {USER: PASSWORD}, REALM)
        self.postfix.settings["smtpd_client_connection_rate_limit"] = "0"
        self.postfix.start()
        self.port, self.username, self.password = self.postfix.port, f"{USER}@{REALM}", PASSWORD
        self.roots = self.postfix.pids()

    def stop(self) -> None:
        self.postfix.stop()


HARAKA_PLUGIN = """\
'use strict'
exports.hook_lookup_rdns = function (next, connection) { next(OK, 'localhost') }
"""


class Haraka(Server):
    label = "Haraka"

    def __init__(self, work: Path, ca) -> None:
        d = work / "haraka"
        subprocess.run(["node", str(install.harakaBinary()), "-i", str(d)], check=True, capture_output=True)
        config = d / "config"
        cert = ca.issue(config, "tls", hostnames=["localhost"], ips=["127.0.0.1"])
        shutil.copy(cert.chain, config / "tls_cert.pem")
        shutil.copy(cert.key, config / "tls_key.pem")
        self.port = freePort()
        (config / "smtp.ini").write_text(f"listen=127.0.0.1:{self.port}\npublic_ip=127.0.0.1\n")
        (config / "tls.ini").write_text("key=tls_key.pem\ncert=tls_cert.pem\n")
        (config / "auth_flat_file.ini").write_text(f"[core]\nmethods=PLAIN,LOGIN\n\n[users]\n{USER}={PASSWORD}\n")
        (config / "plugins").write_text("bench_rdns\ntls\nauth/flat_file\n")
        (config / "me").write_text("haraka.bench.invalid\n")
        (d / "plugins").mkdir(exist_ok=True)
        (d / "plugins" / "bench_rdns.js").write_text(HARAKA_PLUGIN)
        self.log = open(d / "haraka.log", "ab")
        self.process = subprocess.Popen(
            ["node", str(install.harakaBinary()), "-c", str(d)], stdout=self.log, stderr=subprocess.STDOUT
        )
        waitForPort(self.port, process=self.process)
        self.username, self.password = USER, PASSWORD
        self.roots = [self.process.pid]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


SERVERS = {"smtprelay": Relay, "postfix": PostfixServer, "haraka": Haraka}


def _reply(f) -> bytes:
    line = f.readline()
    while line[3:4] == b"-":
        line = f.readline()
    if not line[:1].isdigit():
        raise OSError(f"connection closed ({line!r})")
    return line


def _say(sock, f, line: bytes, expect: bytes) -> None:
    sock.sendall(line + b"\r\n")
    got = _reply(f)
    if not got.startswith(expect):
        raise OSError(f"{line[:10]!r}: {got.strip()!r}")


def connections(port: int, ca: str, username: str, password: str, seconds: float, resume: bool) -> tuple[int, int, int]:
    """One client process: (connections completed, of them resumed, errors)."""
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False  # the peers' certificates name localhost, ours relay.test
    plain = base64.b64encode(f"\0{username}\0{password}".encode())
    done = resumed = errors = 0
    session = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                f = raw.makefile("rb")
                _reply(f)
                _say(raw, f, b"EHLO client.bench.invalid", b"250")
                _say(raw, f, b"STARTTLS", b"220")
                sock = context.wrap_socket(raw, session=session if resume else None)
                f = sock.makefile("rb")
                _say(sock, f, b"EHLO client.bench.invalid", b"250")
                _say(sock, f, b"AUTH PLAIN " + plain, b"235")
                _say(sock, f, b"QUIT", b"221")
                resumed += sock.session_reused
                session = sock.session
                done += 1
        except OSError:
            errors += 1
    return done, resumed, errors


def measure(server: Server, ca: str, clients: int, seconds: float, resume: bool) -> dict:
    usage = Usage(server.roots)
    usage.start()
    started = time.monotonic()
    with multiprocessing.Pool(clients) as pool:
        args = (server.port, ca, server.username, server.password, seconds, resume)
        results = pool.starmap(connections, [args] * clients)
    elapsed = time.monotonic() - started
    usage.stop()
    done = sum(r[0] for r in results)
    return {
        "connections": done,
        "resumed": sum(r[1] for r in results),
        "errors": sum(r[2] for r in results),
        "perSecond": done / elapsed,
        "cpuPerConnection": usage.cpu / done if done else None,
        "perCoreSecond": done / usage.cpu if usage.cpu else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See docs/performance.md.")
    p.add_argument("--quick", action="store_true", help="3 seconds per measurement")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--clients", type=int, default=8, help="client processes")
    p.add_argument("--servers", help=f"comma-separated subset of {','.join(SERVERS)}")
    p.add_argument("--no-install", dest="install", action="store_false", help="do not install peers")
    p.add_argument("--results", type=Path, default=BENCH / "results", help="where to write the report")
    options = p.parse_args(argv)
    seconds = 3.0 if options.quick else options.seconds
    if options.install:
        install.ensure()
    started = datetime.datetime.now()
    work = Path(tempfile.mkdtemp(prefix="smtprelay-handshakes-"))
    work.chmod(0o755)
    ca = makeCA(work)
    header = "| server | resumption | connections/s | server CPU ms/connection | connections per CPU second | resumed |"
    lines = [
        f"# New STARTTLS + AUTH connections, {started:%Y-%m-%d %H:%M}",
        "",
        f"{os.cpu_count()} CPUs; {options.clients} client processes, {seconds:g} s per row; "
        "each connection: EHLO, STARTTLS, EHLO, AUTH PLAIN, QUIT.",
        "",
        header,
        "|" + "---|" * header.count(" | ") + "---|",
    ]
    failed = False
    try:
        for key in options.servers.split(",") if options.servers else SERVERS:
            log(f"starting {key}")
            try:
                server = SERVERS[key](work, ca)
            except Exception as e:  # noqa: BLE001 - the others are still measured
                lines.append(f"| {key} | | FAILED to start: {e} | | | |")
                failed = True
                continue
            try:
                measure(server, str(ca.cert), 2, 1.0, False)  # warm-up
                for resume in (False, True):
                    r = measure(server, str(ca.cert), options.clients, seconds, resume)
                    log(f"  {key} resume={resume}: {r}")
                    failed |= bool(r["errors"]) or not r["connections"]
                    lines.append(
                        f"| {server.label} | {'offered' if resume else 'no'} | {fmt(r['perSecond'], 0)} "
                        f"| {fmt(r['cpuPerConnection'], 2, 1000)} | {fmt(r['perCoreSecond'], 0)} "
                        f"| {r['resumed'] / max(1, r['connections']):.0%}"
                        + (f" ({r['errors']} errors)" if r["errors"] else "")
                        + " |"
                    )
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    options.results.mkdir(parents=True, exist_ok=True)
    stem = options.results / f"{started:%Y%m%d-%H%M%S}-handshakes"
    stem.with_suffix(".md").write_text(text)
    log(f"written to {stem}.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
