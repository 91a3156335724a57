"""
A real relay for end-to-end tests: C{twistd -n smtprelay} in a subprocess,
with its own SQLite store, key file and certificate, listening on loopback.

Tenants are added through the store while the relay runs, exactly as
C{smtprelay-admin} would; L{RelayProcess.addTenant} waits until the relay's
log shows it loaded that store generation, so a test never sleeps blindly.
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from relay.admin.cli import validateUpstream
from relay.store.database import openEngine, upgrade
from relay.store.repository import Store
from relay.store.secrets import KeyRing
from tests.support.certs import CA
from tests.support.process import stopProcess

TWISTD = str(Path(sys.executable).with_name("twistd"))
_GENERATION = re.compile(r"(?:\[worker (\d+)\] )?tenant directory at generation (\d+)")


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Account:
    tenant: str
    username: str
    password: str


class RelayProcess:
    """
    One running relay.

    @ivar port: the C{--smtp} port (STARTTLS offered).
    @ivar smtpsPort: the C{--smtps} port (implicit TLS).
    @ivar metricsPort: the C{--metrics} port (/metrics, /healthz, /readyz).
    @param environment: added to the relay process's environment.
    @param reactor: twistd's C{-r} (the reactor), when not the default.
    """

    def __init__(
        self,
        directory: Path,
        ca: CA,
        *arguments: str,
        environment: dict[str, str] | None = None,
        reactor: str | None = None,
    ):
        self.directory = directory
        self.ca = ca
        directory.mkdir(parents=True, exist_ok=True)
        self.database = f"sqlite:///{directory}/relay.db"
        self.keyFile = directory / "secret.key"
        self.logFile = directory / "relay.log"
        engine = openEngine(self.database)
        upgrade(engine)
        self.store = Store(engine, KeyRing.fromFile(self.keyFile))
        self.cert = ca.issue(directory, "relay", hostnames=["relay.test", "localhost"])
        self.port = freePort()
        self.smtpsPort = freePort()
        self.metricsPort = freePort()
        command = [
            TWISTD, "-n", "--pidfile=", f"--logfile={self.logFile}", *(["-r", reactor] if reactor else []), "smtprelay",
            f"--database={self.database}",
            f"--secret-key-file={self.keyFile}",
            f"--smtp=tcp:{self.port}:interface=127.0.0.1",
            f"--smtps=tcp:{self.smtpsPort}:interface=127.0.0.1",
            f"--metrics=tcp:{self.metricsPort}:interface=127.0.0.1",
            f"--tls-cert={self.cert.chain}",
            f"--tls-key={self.cert.key}",
            "--hostname=relay.test",
            "--refresh-interval=0.1",
            "--upstream-timeout=5",
            "--upstream-final-timeout=6",
            "--workers=1",
            *arguments,
        ]  # fmt: skip
        self.stdoutFile = directory / "stdout.log"
        self.workers = int(([a.split("=", 1)[1] for a in command if a.startswith("--workers=")] or ["1"])[-1])
        with open(self.stdoutFile, "wb") as stdout:
            self.process = subprocess.Popen(
                command, stdout=stdout, stderr=subprocess.PIPE, env={**os.environ, **(environment or {})}
            )
        self._waitForPort()

    def _waitForPort(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"relay exited with {self.process.returncode}:\n{self.stderr()}\n{self.log()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"relay not listening after {timeout}s:\n{self.log()}")

    def stderr(self) -> str:
        return self.process.stderr.read().decode(errors="replace") if self.process.poll() is not None else ""

    def log(self) -> str:
        """The relay's log file (twistd's text lines)."""
        return self.logFile.read_text(errors="replace") if self.logFile.exists() else ""

    def stdout(self) -> str:
        """What the relay wrote to standard output (JSON lines with --log-format json)."""
        return self.stdoutFile.read_text(errors="replace")

    def waitForGeneration(self, generation: int, timeout: float = 10.0) -> None:
        """Wait until the relay (every worker of it) has loaded this store generation or a later one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loaded: dict[str, int] = {}
            for worker, seen in _GENERATION.findall(self.log() + self.stdout()):
                loaded[worker] = max(loaded.get(worker, 0), int(seen))
            if len(loaded) >= self.workers and all(seen >= generation for seen in loaded.values()):
                return
            time.sleep(0.05)
        raise AssertionError(f"relay did not load store generation {generation}:\n{self.log()}")

    def addTenant(
        self, name: str, *upstreams: str, domains: tuple[str, ...] = ("example.com",), validate=validateUpstream
    ) -> Account:
        """
        A tenant with one login and these upstream URLs (in priority order),
        loaded by the relay.  C{validate} checks the URLs in this process (a
        plugin on the relay's path only: C{lambda url: None}).
        """
        self.store.addTenant(name, f"ops@{name}.example", f"{name} Ltd")
        password = f"pw-{name}-secret"
        self.store.addLogin(name, f"{name}-user", password)
        for priority, url in enumerate(upstreams, start=1):
            self.store.addUpstream(name, url, priority * 10, validate=validate)
        for domain in domains:
            self.store.addDomain(name, domain)
        self.waitForGeneration(self.store.generation())
        return Account(name, f"{name}-user", password)

    def addUpstream(self, tenant: str, url: str, priority: int = 10, **credentials) -> int:
        """
        One more upstream for a tenant, with C{oauth=OAuthSettings(...)} or
        C{clientCertificate=(chain, key)} as the store takes them, loaded
        by the relay; its id.
        """
        info = self.store.addUpstream(tenant, url, priority, validate=validateUpstream, **credentials)
        self.waitForGeneration(self.store.generation())
        return info.id

    def clientContext(self) -> ssl.SSLContext:
        return self.ca.clientContext()

    def connect(self, account: Account | None = None, tls: bool = True) -> smtplib.SMTP:
        """An smtplib client on the --smtp port: EHLO, STARTTLS and AUTH as asked."""
        client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=15)
        client.ehlo()
        if tls:
            client.starttls(context=self.clientContext())
            client.ehlo()
        if account is not None:
            client.login(account.username, account.password)
        return client

    def stop(self, timeout: float = 15.0) -> int:
        stopProcess(self.process, timeout)
        self.process.stderr.close()
        return self.process.returncode


def splitTrace(data: bytes) -> tuple[bytes, bytes]:
    """Split the relay's C{Received:} trace header (folded) from the rest of a message."""
    assert data.startswith(b"Received: "), data[:60]
    end = data.index(b"\r\n")
    while data[end + 2 : end + 3] in (b"\t", b" "):
        end = data.index(b"\r\n", end + 2)
    return data[: end + 2], data[end + 2 :]


def upstreamURL(up, scheme: str = "smtp", credentials: str = "", **options: str) -> str:
    """The URL of a test upstream server, trusting the test CA for its certificate."""
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{scheme}://{credentials}{up.host}:{up.port}" + (f"?{query}" if query else "")
