"""
The load clients of the comparison and the loads they send.

- `smtp-source` (Postfix's, C): `-d` (each session reuses its connection),
  `-s` sessions, `-m` messages in all, `-l` payload octets; HELO, no AUTH,
  no TLS, one command at a time.  It reports no per-message latency.
- `bench/load.py` (ours, asyncio): the same shape of load, timing each
  message from MAIL FROM to the reply to the final dot; three ways in:
  STARTTLS + AUTH PLAIN, AUTH PLAIN in clear (--allow-insecure-auth), and
  neither (for the peers, which are not set up for AUTH).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CLIENTS", "Client", "Load", "Outcome", "fullLoads", "quickLoads"]

BENCH = Path(__file__).resolve().parent
SENDER = "bench@example.com"
RECIPIENT = "sink@example.net"
KIB = 1024
MB = 1 << 20


@dataclass(frozen=True)
class Load:
    messages: int
    size: int
    sessions: int

    @property
    def key(self) -> str:
        return f"{self.messages}x{self.size}/{self.sessions}"

    @property
    def label(self) -> str:
        size = f"{self.size // MB} MB" if self.size >= MB else f"{self.size // KIB} KiB"
        return f"{self.messages} × {size}, {self.sessions} session{'s' if self.sessions > 1 else ''}"


def fullLoads() -> list[Load]:
    return [Load(2000, KIB, 1), Load(2000, KIB, 20), Load(200, MB, 1), Load(200, MB, 20)]


def quickLoads() -> list[Load]:
    return [Load(200, KIB, 1), Load(400, KIB, 20), Load(20, MB, 1), Load(40, MB, 20)]


@dataclass
class Outcome:
    """What the client saw; times are time.monotonic()."""

    started: float
    finished: float
    sent: int | None = None  # messages that got 250 (None: the client does not say)
    errors: int = 0
    p50: float | None = None
    p99: float | None = None
    error: str | None = None


class Client:
    key = ""
    label = ""
    tls = False
    auth = False

    def run(self, port: int, load: Load, timeout: float, account=None, ca: Path | None = None) -> Outcome:
        raise NotImplementedError


class SmtpSource(Client):
    key = "smtp-source"
    label = "smtp-source"

    def run(self, port, load, timeout, account=None, ca=None):
        binary = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
        command = [
            binary, "-d", "-s", str(load.sessions), "-m", str(load.messages), "-l", str(load.size),
            "-f", SENDER, "-t", RECIPIENT, "-M", "source.bench.invalid", f"127.0.0.1:{port}",
        ]  # fmt: skip
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            return Outcome(started, time.monotonic(), error=f"smtp-source timed out after {timeout:.0f} s")
        finished = time.monotonic()
        if process.returncode != 0:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {process.returncode}"]
            return Outcome(started, finished, errors=1, error=last[0])
        return Outcome(started, finished)


class LoadPy(Client):
    def __init__(self, key: str, label: str, tls: bool, auth: bool):
        self.key, self.label, self.tls, self.auth = key, label, tls, auth

    def run(self, port, load, timeout, account=None, ca=None):
        command = [
            sys.executable, str(BENCH / "load.py"), "--json", "--server", f"127.0.0.1:{port}",
            "--sessions", str(load.sessions), "--messages", str(load.messages), "--size", str(load.size),
            "--sender", SENDER, "--to", RECIPIENT,
        ]  # fmt: skip
        command += ["--ca", str(ca)] if self.tls else ["--no-tls"]
        env = dict(os.environ)
        if self.auth:
            command += ["--user", account.username]
            env["LOAD_PASSWORD"] = account.password
        launched = time.monotonic()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return Outcome(launched, time.monotonic(), error=f"load.py timed out after {timeout:.0f} s")
        try:
            s = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return Outcome(launched, time.monotonic(), error=f"load.py: {done.stderr.strip()[-300:]}")
        outcome = Outcome(s["started"], s["finished"], s["sent"], s["errors"], s["p50"], s["p99"])
        if s["errors"] or s["sent"] != load.messages:
            outcome.error = f"{s['errors']} errors, {s['sent']}/{load.messages} sent: " + "; ".join(
                s["firstErrors"][:2]
            )
        return outcome


CLIENTS: dict[str, Client] = {
    c.key: c
    for c in (
        SmtpSource(),
        LoadPy("load-tls", "load.py STARTTLS+AUTH", tls=True, auth=True),
        LoadPy("load-auth", "load.py AUTH, no TLS", tls=False, auth=True),
        LoadPy("load", "load.py, no AUTH/TLS", tls=False, auth=False),
    )
}
