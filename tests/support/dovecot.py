"""
A throwaway Dovecot LMTP server for interoperability tests: its own
configuration, state and mail under a fresh directory in /tmp, an LMTP
listener on 127.0.0.1 only, users from a passwd-file with a quota each,
started with C{dovecot -c FILE} and stopped and removed at the end.
Debian's C{dovecot-lmtpd} provides the binaries; the system's own instance
is never touched.

    with Dovecot(port, {"alice": "100M", "full": "1"}) as dovecot:
        ...  # LMTP to 127.0.0.1:port; RCPT TO:<alice@any.domain>
        dovecot.delivered("alice")  # the messages in alice's INBOX

The quota is Dovecot's C{count} backend checked at delivery (after the
dot, not at RCPT), so an over-quota mailbox gets its C{552 5.2.2} in the
per-recipient replies that follow the end of data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.postfix import waitForPort

__all__ = ["Dovecot"]

CONFIG = """\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
first_valid_uid = 1
default_internal_user = dovecot
default_login_user = dovenull
auth_username_format = %Ln
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
  default_fields = uid=dovecot gid=dovecot home={d}/mail/%n
}}
mail_location = maildir:~/Maildir
mail_plugins = quota
plugin {{
  quota = count:User quota
  quota_vsizes = yes
}}
lmtp_rcpt_check_quota = no
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0600
  }}
}}
"""


class Dovecot:
    """
    @param port: its LMTP listener on 127.0.0.1.
    @param quotas: the users and their storage quota (Dovecot's units:
        C{"100M"}; a bare number is in kilobytes).
    """

    def __init__(self, port: int, quotas: dict[str, str]) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="smtprelay-dovecot-"))
        os.chmod(self.directory, 0o755)
        self.port = port
        self.config = self.directory / "dovecot.conf"
        self._quotas = quotas
        self._started = False

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        path = self.directory / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 30.0) -> None:
        d = self.directory
        self.config.write_text(CONFIG.format(d=d, port=self.port))
        (d / "users").write_text(
            "".join(
                f"{user}:{{PLAIN}}unused::::::userdb_quota_rule=*:storage={q}\n" for user, q in self._quotas.items()
            )
        )
        (d / "mail").mkdir()
        shutil.chown(d / "mail", "dovecot", "dovecot")
        errors = d / "start.err"
        with errors.open("w") as stderr:  # not a pipe: the daemon would hold it open
            result = subprocess.run(["dovecot", "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=stderr)
        if result.returncode != 0:
            raise AssertionError(f"dovecot start failed: {(errors.read_text() or self.log()).strip()}")
        self._started = True
        waitForPort(self.port, timeout)

    def delivered(self, user: str) -> list[bytes]:
        """The messages in C{user}'s INBOX, oldest first."""
        new = self.directory / "mail" / user / "Maildir" / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []

    def stop(self) -> None:
        if self._started:
            subprocess.run(
                ["doveadm", "-c", str(self.config), "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            master = self.directory / "run" / "master.pid"
            deadline = time.monotonic() + 15
            while master.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            self._started = False
        shutil.rmtree(self.directory, ignore_errors=True)
