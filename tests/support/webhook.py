"""
The test side of L{tests.support.webhookserver}: start the recording web hook
as a subprocess on loopback and read what it recorded.

    hook = WebhookServer(tmp_path, cert=ca.issue(tmp_path, "webhook"))
    url = hook.url("/t1/200", ca=str(ca.cert))
    ...
    [request] = hook.waitForRequests("/t1/", 1)
    hook.stop()
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.certs import CertPaths
from tests.support.process import stopProcess

__all__ = ["HookRequest", "WebhookServer"]

SCRIPT = Path(__file__).with_name("webhookserver.py")


@dataclass(frozen=True)
class HookRequest:
    """
    One request the hook received.

    @ivar headers: the raw header fields in order, names as sent.
    @ivar bodyComplete: the whole body arrived (the terminating chunk).
    @ivar answered: the status it was answered with, or C{None}.
    """

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    bodyComplete: bool
    answered: int | None

    def header(self, name: str) -> list[str]:
        """Every value of one header field, in order (names compared without case)."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


class WebhookServer:
    """
    The recording hook, running.

    @ivar port: its port on 127.0.0.1.
    @ivar scheme: C{"https"} when started with a certificate, else C{"http"}.
    """

    def __init__(self, directory: Path, cert: CertPaths | None = None, timeout: float = 20.0):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(SCRIPT), "--record", str(directory)]
        if cert is not None:
            command += ["--tls-cert", str(cert.chain or cert.cert), "--tls-key", str(cert.key)]
        self.scheme = "https" if cert is not None else "http"
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        portFile = directory / "port"
        deadline = time.monotonic() + timeout
        while not portFile.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"webhook server did not start: {self.process.communicate()[1].decode()}")
            time.sleep(0.05)
        self.port = int(portFile.read_text())

    def url(self, path: str, credentials: str = "", **options: str) -> str:
        """The hook's URL for C{path}, with C{user:pass@} and query options."""
        query = "&".join(f"{key}={value}" for key, value in options.items())
        return f"{self.scheme}://{credentials}127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    def requests(self, prefix: str = "/") -> list[HookRequest]:
        """The requests recorded so far whose path starts with C{prefix}, in order."""
        found = []
        for name in sorted(self.directory.glob("*.json")):
            entry = json.loads(name.read_text())
            if entry["path"].startswith(prefix):
                entry["headers"] = tuple(tuple(pair) for pair in entry["headers"])
                entry["body"] = base64.b64decode(entry["body"])
                found.append(HookRequest(**entry))
        return found

    def bodiesStarted(self, prefix: str = "/") -> int:
        """How many requests under C{prefix} began to receive a body."""
        return sum(path.read_text().startswith(prefix) for path in self.directory.glob("started-*[0-9]"))

    def waitForRequests(self, prefix: str, n: int, timeout: float = 10.0) -> list[HookRequest]:
        """
        Wait until at least C{n} requests under C{prefix} were recorded.

        @raise AssertionError: they were not within C{timeout} seconds.
        """
        _waitUntil(lambda: len(self.requests(prefix)) >= n, timeout, f"{n} request(s) recorded under {prefix}")
        return self.requests(prefix)

    def waitForBodyStarted(self, prefix: str, timeout: float = 10.0) -> None:
        """Wait until a request under C{prefix} began to receive its body."""
        _waitUntil(lambda: self.bodiesStarted(prefix) > 0, timeout, f"a body under {prefix}")

    def stop(self, timeout: float = 10.0) -> None:
        stopProcess(self.process, timeout)
        self.process.stderr.close()


def _waitUntil(condition, timeout: float, what: str) -> None:
    """Poll C{condition} until it holds; raise C{AssertionError} after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"webhook: no {what} after {timeout}s")
        time.sleep(0.05)
