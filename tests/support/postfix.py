"""
A throwaway Postfix instance for interoperability tests and benchmarks: its
own configuration and queue directories under a fresh directory in /tmp
(Postfix's daemons run as the postfix user, who must reach every file
they read: keys and CA files go into L{Postfix.directory}, not into
pytest's private temporary tree), listening on 127.0.0.1 only, started
with C{postfix -c DIR start} and stopped and removed at the end.
Debian's C{postfix} package ("No configuration") provides the binaries;
the system's own instance is never touched.

    with Postfix("client", port, {"relayhost": "[127.0.0.1]:2525"}) as postfix:
        ...  # talk SMTP to 127.0.0.1:port

Configuration errors only reach the instance's C{maillog}; L{Postfix.start}
quotes its first fatal line when the start fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["Postfix", "postfixAvailable", "requireAuth"]

BASE = {
    "compatibility_level": "3.6",
    "mail_owner": "postfix",
    "setgid_group": "postdrop",
    "inet_interfaces": "127.0.0.1",
    "inet_protocols": "ipv4",
    "mydestination": "",
    "mynetworks": "127.0.0.0/8",
    "smtpd_relay_restrictions": "permit_mynetworks, reject",
    "smtp_dns_support_level": "disabled",
    "alias_maps": "",
    "alias_database": "",
    "local_recipient_maps": "",
    "local_header_rewrite_clients": "",
    "biff": "no",
    "smtputf8_enable": "yes",
}


def postfixAvailable() -> bool:
    return shutil.which("postfix") is not None


def waitForPort(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Postfix:
    """
    @param name: names its directory (C{/tmp/smtprelay-postfix-NAME-*}),
        where its configuration, queue, data and log go.
    @param port: its smtpd listener on 127.0.0.1.
    @param settings: C{main.cf} parameters, over L{BASE}; more may be
        added to L{settings} before L{start} (paths under L{directory}).
    @param files: more files for the configuration directory, by name
        (SASL settings in C{sasl/smtpd.conf}, password tables, ...),
        likewise open to additions in L{files}.
    """

    def __init__(
        self, name: str, port: int, settings: dict[str, object] | None = None, files: dict[str, str] | None = None
    ) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=f"smtprelay-postfix-{name}-"))
        os.chmod(self.directory, 0o755)
        self.port = port
        self.config = self.directory / "etc"
        self.settings = dict(settings or {})
        self.files = dict(files or {})
        self._started = False

    def __enter__(self) -> Postfix:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def maillogPath(self) -> Path:
        return self.directory / "maillog"

    def maillog(self) -> str:
        return self.maillogPath.read_text(errors="replace") if self.maillogPath.exists() else ""

    def start(self, timeout: float = 30.0) -> None:
        d = self.directory
        self.config.mkdir(parents=True, exist_ok=True)
        for name in ("queue", "data"):
            (d / name).mkdir(exist_ok=True)
        shutil.chown(d / "data", "postfix")
        main = {
            **BASE,
            "queue_directory": d / "queue",
            "data_directory": d / "data",
            "maillog_file": self.maillogPath,
            "maillog_file_prefixes": f"/var, /dev/stdout, {d}",
            **self.settings,
        }
        (self.config / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.config / "master.cf").write_text(self._masterCf())
        for name, content in self.files.items():
            path = self.config / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        check = subprocess.run(["postfix", "-c", str(self.config), "check"], capture_output=True, text=True)
        if check.returncode != 0:
            raise AssertionError(f"postfix check: {check.stderr.strip()}")
        result = subprocess.run(["postfix", "-c", str(self.config), "start"], capture_output=True, text=True)
        if result.returncode != 0:
            log = self.maillog().strip().splitlines()
            why = [line for line in log if "fatal" in line][:1] or log[-1:] or [result.stderr.strip()]
            raise AssertionError(f"postfix start failed: {why[0]}")
        self._started = True
        waitForPort(self.port, timeout)

    def _masterCf(self) -> str:
        template = Path("/etc/postfix/master.cf")
        if not template.exists():
            template = Path("/usr/share/postfix/master.cf.dist")
        lines = []
        for line in template.read_text().splitlines():
            fields = line.split()
            if line[:1] in ("", "#", " ", "\t") or len(fields) < 8:
                lines.append(line)
                continue
            if fields[:2] == ["smtp", "inet"]:
                fields[0] = f"127.0.0.1:{self.port}"
            fields[4] = "n"  # no chroot: the instance lives in a temporary directory
            lines.append("  ".join(fields))
        return "\n".join(lines) + "\n"

    def pids(self) -> list[int]:
        try:
            return [int((self.directory / "queue" / "pid" / "master.pid").read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []

    def flush(self) -> None:
        """Ask the queue manager to try every deferred message now."""
        subprocess.run(["postqueue", "-c", str(self.config), "-f"], capture_output=True)

    def queued(self) -> str:
        """The queue listing (postqueue -p)."""
        return subprocess.run(["postqueue", "-c", str(self.config), "-p"], capture_output=True, text=True).stdout

    def stop(self) -> None:
        if not self._started:
            return
        subprocess.run(["postfix", "-c", str(self.config), "stop"], capture_output=True)
        deadline = time.monotonic() + 15
        while self.pids() and Path(f"/proc/{self.pids()[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._started = False
        shutil.rmtree(self.directory, ignore_errors=True)


def requireAuth(postfix: Postfix, cert, key, users: dict[str, str], realm: str) -> None:
    """
    Make C{postfix}'s smtpd offer STARTTLS with C{cert} (its chain) and
    C{key}, and AUTH PLAIN and LOGIN after it for C{users} (Cyrus SASL's
    sasldb, written with C{saslpasswd2}; log in as C{user@realm}); only
    authenticated clients may relay.  Call before L{Postfix.start}.
    """
    directory = postfix.directory
    keyCopy = directory / "smtpd.key"
    shutil.copy(key, keyCopy)
    shutil.chown(keyCopy, "postfix")
    os.chmod(keyCopy, 0o600)
    sasldb = directory / "sasldb2"
    for user, password in users.items():
        subprocess.run(
            ["saslpasswd2", "-c", "-p", "-f", str(sasldb), "-u", realm, user],
            input=password, text=True, check=True, capture_output=True,
        )  # fmt: skip
    shutil.chown(sasldb, "postfix")
    os.chmod(sasldb, 0o600)
    postfix.settings.update(
        {
            "mynetworks": "",
            "smtpd_tls_cert_file": cert,
            "smtpd_tls_key_file": keyCopy,
            "smtpd_tls_security_level": "may",
            "smtpd_tls_auth_only": "yes",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            "cyrus_sasl_config_path": postfix.config / "sasl",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
        }
    )
    postfix.files["sasl/smtpd.conf"] = (
        f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {sasldb}\n"
    )
