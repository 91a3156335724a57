"""
The security rules through a running relay, over real sockets: PROXY
headers only from trusted proxies, strictly parsed; a client that does not
read its replies holds no memory; the AUTH lock-out holds for sessions
already open and across relays sharing Redis; a trickled command line is
closed at its deadline; nothing a client chooses breaks a log line.
"""

from __future__ import annotations

import secrets
import socket
import struct
import threading
import time
from base64 import b64encode
from pathlib import Path

import pytest

from tests.support.raw import RawClient
from tests.support.redisserver import REDIS, requireRedis
from tests.support.relay import RelayProcess, freePort, upstreamURL
from tests.support.upstream import UpstreamServer

UNTRUSTED_REPLY = b"421 4.7.0 relay.test PROXY protocol accepted only from trusted proxies\r\n"
PROXY_V1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n"
PROXY_V2 = (
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([203, 0, 113, 9, 127, 0, 0, 1]) + struct.pack("!HH", 40000, 25)
)
MESSAGE = b"From: a@example.com\r\nSubject: proxied\r\n\r\nhello\r\n"


def waitFor(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def receiveAll(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the relay sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:  # closed with input unread: a reset
        pass
    return data


def auth(username: str, password: str) -> bytes:
    return b"AUTH PLAIN " + b64encode(f"\0{username}\0{password}".encode())


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def proxyRelay(ca, tmp_path):
    """A relay with a PROXY listener trusting only 127.0.0.2; C{relay.proxyPort} is that listener."""
    port = freePort()
    relay = RelayProcess(
        tmp_path / "relay", ca, f"--smtp=haproxy:tcp:{port}:interface=127.0.0.1", "--trusted-proxy=127.0.0.2/32"
    )
    relay.proxyPort = port
    yield relay
    relay.stop()


@pytest.mark.parametrize("header", [PROXY_V1, PROXY_V2], ids=["v1", "v2"])
def test_spoofed_header_from_untrusted_address(proxyRelay, header):
    """A PROXY header from outside --trusted-proxy is never read: 421, closed, logged."""
    with socket.create_connection(("127.0.0.1", proxyRelay.proxyPort), timeout=10) as sock:
        sock.sendall(header + b"EHLO spoofer\r\n")
        assert receiveAll(sock) == UNTRUSTED_REPLY
    waitFor(lambda: "PROXY listener refused a connection from 127.0.0.1" in proxyRelay.log(), "the refusal logged")


@pytest.mark.parametrize("header", [PROXY_V1, PROXY_V2], ids=["v1", "v2"])
def test_header_from_trusted_proxy(proxyRelay, upstreamCert, header):
    """From the trusted proxy, the header's address is the client's: greeting, EHLO and the Received: field show it."""
    with UpstreamServer(tls=upstreamCert) as up:
        account = proxyRelay.addTenant("proxied", upstreamURL(up, ca=str(proxyRelay.ca.cert)))
        client = RawClient(proxyRelay.proxyPort, proxyRelay.clientContext(), source="127.0.0.2", header=header)
        assert "Hello [203.0.113.9]" in client.command(b"EHLO raw.test")
        client.login(account.username, account.password)
        assert client.command(b"MAIL FROM:<a@example.com>").startswith("250")
        assert client.command(b"RCPT TO:<b@example.net>").startswith("250")
        assert client.command(b"DATA").startswith("354")
        assert client.command(MESSAGE + b".").startswith("250")
        client.close()
        [message] = up.waitForMessages(1)
        assert b"([203.0.113.9])" in message.data.split(b"\r\n\r\n")[0]


def test_cr_in_proxy_address(proxyRelay, upstreamCert):
    """
    A PROXY address carrying a bare CR (smuggling through our own Received:
    field) closes the connection before any greeting; an upstream that ends
    DATA on <CR>.<CR> never sees a second transaction.
    """
    smuggled = b"\r.\rMAIL FROM:<e@x.io>\rRCPT TO:<v@x.io>\rDATA\r\rpwned\r.\r"
    header = b"PROXY TCP4 1.2.3.4" + smuggled + b" 127.0.0.1 4 25\r\n"
    assert len(header) <= 107  # refused for its address, not its length
    with UpstreamServer(tls=upstreamCert, laxEndOfData=True) as up:
        account = proxyRelay.addTenant("lax", upstreamURL(up, ca=str(proxyRelay.ca.cert)))
        with socket.create_connection(
            ("127.0.0.1", proxyRelay.proxyPort), timeout=10, source_address=("127.0.0.2", 0)
        ) as sock:
            sock.sendall(header + b"EHLO raw.test\r\n")
            assert receiveAll(sock) == b""
        waitFor(lambda: "malformed PROXY header from 127.0.0.2" in proxyRelay.log(), "the refusal logged")
        assert "Traceback" not in proxyRelay.log()
        # The same listener still relays an honest client, and the lax upstream gets exactly that one message.
        client = RawClient(proxyRelay.proxyPort, proxyRelay.clientContext(), source="127.0.0.2", header=PROXY_V1)
        client.login(account.username, account.password)
        for line in (b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>", b"DATA", MESSAGE + b"."):
            assert client.command(line)[0] in "23", line
        client.close()
        up.waitForMessages(1)
        assert len(up.transactions) == 1 and up.transactions[0].sender == "a@example.com"


def test_client_not_reading_holds_no_memory(relay):
    """
    A client pipelining megabytes of commands without reading a reply is no
    longer read once a small amount of replies waits for it: the relay's
    memory stays flat, and once the client reads, every command is
    answered, in order.
    """
    pid = relay.process.pid
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    assert sock.recv(1024).startswith(b"220 ")
    before = rss(pid)
    chunk = b"NOOP\r\n" * 10_000
    sent = 0
    sock.settimeout(3)
    try:
        while sent < 256 * 2**20:
            sent += sock.send(chunk)
    except TimeoutError:
        pass
    grown = rss(pid) - before
    assert 2**20 < sent < 256 * 2**20, sent  # the client pushed megabytes, then the relay stopped reading it
    assert grown < 8 * 2**20, f"relay grew by {grown / 2**20:.1f} MB after {sent / 2**20:.1f} MB of unread pipelining"
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(receiveAll(sock, timeout=30)))
    reader.start()
    sock.settimeout(30)
    sock.sendall(chunk[sent % len(chunk) : sent % len(chunk) + (-sent) % 6] + b"QUIT\r\n")
    reader.join(60)
    sock.close()
    replies = received[0].split(b"\r\n")
    assert replies[-2:] == [b"221 2.0.0 Bye", b""]
    assert replies.count(b"250 2.0.0 Ok") == (sent + 5) // 6


def test_lockout_holds_for_sessions_already_open(ca, upstreamCert, tmp_path):
    """A session opened before its address was locked out is refused even with the right password."""
    relay = RelayProcess(tmp_path / "relay", ca, "--max-auth-failures=3")
    try:
        with UpstreamServer(tls=upstreamCert) as up:
            account = relay.addTenant("lockout", upstreamURL(up, ca=str(ca.cert)))
            patient = RawClient(relay.port, relay.clientContext())
            patient.startTLS()
            attacker = RawClient(relay.port, relay.clientContext())
            attacker.startTLS()
            wrong = auth(account.username, "wrong")
            assert attacker.command(wrong).startswith("535 5.7.8")
            assert attacker.command(wrong).startswith("535 5.7.8")
            assert attacker.command(wrong).startswith("421 4.7.0 Too many authentication failures")
            reply = patient.command(auth(account.username, account.password))
            assert reply == "421 4.7.0 Too many authentication failures from your address, try again later"
            assert patient.closed()
    finally:
        relay.stop()


def test_lockout_shared_through_redis(ca, upstreamCert, tmp_path):
    """With --rate-limit-store, failures at one relay lock the address out at another relay too."""
    server = requireRedis()
    for key in server.scan_iter("smtprelay:authfail:127.0.0.1"):
        server.delete(key)
    relays = [
        RelayProcess(tmp_path / f"relay{i}", ca, f"--rate-limit-store={REDIS}", "--max-auth-failures=2")
        for i in range(2)
    ]
    name = "lock" + secrets.token_hex(3)
    try:
        with UpstreamServer(tls=upstreamCert) as up:
            accounts = [relay.addTenant(name, upstreamURL(up, ca=str(ca.cert))) for relay in relays]
            attacker = RawClient(relays[0].port, relays[0].clientContext())
            attacker.startTLS()
            assert attacker.command(auth(accounts[0].username, "wrong")).startswith("535 5.7.8")
            assert attacker.command(auth(accounts[0].username, "wrong")).startswith("421 4.7.0")
            with pytest.raises(AssertionError, match="421 4.7.0 Too many authentication failures"):
                RawClient(relays[1].port, relays[1].clientContext())
    finally:
        for relay in relays:
            relay.stop()
        for key in server.scan_iter("smtprelay:authfail:127.0.0.1"):
            server.delete(key)


def test_trickled_command_line_closed(ca, tmp_path):
    """A command line sent a byte every two seconds is closed at its deadline, long before the idle timeout."""
    relay = RelayProcess(tmp_path / "relay", ca, "--line-timeout=5")
    try:
        sock = socket.create_connection(("127.0.0.1", relay.port), timeout=15)
        assert sock.recv(1024).startswith(b"220 ")
        started = time.monotonic()
        sock.setblocking(False)
        reply = b""
        for byte in b"EHLO slowloris.example":
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and not reply.endswith(b"\r\n"):
                try:
                    reply += sock.recv(1024)
                except BlockingIOError:
                    time.sleep(0.05)
            if reply:
                break
        assert reply == b"421 4.4.2 Error: command line not completed in time, closing connection\r\n"
        assert 5 <= time.monotonic() - started < 9
        sock.close()
    finally:
        relay.stop()


def test_username_cannot_break_the_log(relay, upstream, tenantName):
    """A user name with CR LF and a forged field is one escaped token of one log line."""
    relay.addTenant(tenantName, upstreamURL(upstream, ca=str(relay.ca.cert)))
    client = RawClient(relay.port, relay.clientContext(), source="127.0.0.5")  # its own AUTH failure count
    client.startTLS()
    forged = f"{tenantName}\r\nsmtprelay auth failed: client=6.6.6.6 user=victim reason=forged"
    assert client.command(auth(forged, "wrong")).startswith("535 5.7.8")
    client.close()
    escaped = f'user="{tenantName}\\r\\nsmtprelay auth failed: client=6.6.6.6 user=victim reason=forged" reason='
    waitFor(lambda: escaped in relay.log(), "the escaped user name in the log")
    assert not any(line.startswith("smtprelay auth failed: client=6.6.6.6") for line in relay.log().splitlines())
    assert "client=6.6.6.6" not in relay.log().replace(escaped, "")
