"""
A raw SMTP client for hostile-input tests: exact bytes out, replies in,
optional STARTTLS, every wait bounded.
"""

from __future__ import annotations

import socket
import ssl
from base64 import b64encode


class RawClient:
    """
    @param context: the TLS client context (trusting the test CA).
    """

    def __init__(
        self, port: int, context: ssl.SSLContext, timeout: float = 15.0, source: str | None = None, header: bytes = b""
    ):
        """
        @param source: the local address to connect from (C{127.0.0.2}: any
            address of 127/8 is loopback), when not the default.
        @param header: sent first, before the greeting is read (a PROXY header).
        """
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=None if source is None else (source, 0)
        )
        self.context = context
        self.buffer = b""
        try:
            if header:
                self.sock.sendall(header)
            self.greeting = self.reply()
            assert self.greeting.startswith("220 "), self.greeting
        except BaseException:
            self.sock.close()
            raise

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"connection closed; unread: {self.buffer!r}")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.rstrip(b"\r")

    def reply(self) -> str:
        """One whole reply, its lines joined by newlines."""
        lines = [self._line()]
        while lines[-1][3:4] == b"-":
            lines.append(self._line())
        return b"\n".join(lines).decode("ascii", "replace")

    def command(self, line: bytes) -> str:
        self.send(line + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """The relay closed the connection (and sent nothing more)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True

    def startTLS(self) -> None:
        assert self.command(b"EHLO raw.test").startswith("250")
        assert self.command(b"STARTTLS").startswith("220")
        self.sock = self.context.wrap_socket(self.sock, server_hostname="127.0.0.1")
        assert self.command(b"EHLO raw.test").startswith("250")

    def login(self, username: str, password: str) -> None:
        self.startTLS()
        credentials = b64encode(f"\0{username}\0{password}".encode())
        assert self.command(b"AUTH PLAIN " + credentials).startswith("235")

    def close(self) -> None:
        self.sock.close()
