"""
Hostile input and faults, over real sockets against a running relay: SMTP
smuggling, STARTTLS injection on both sides, limits, upstream faults, and
the relay killed or stopped mid-transfer.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest

from tests.support.raw import RawClient
from tests.support.relay import RelayProcess, upstreamURL
from tests.support.smuggling import SMUGGLING
from tests.support.upstream import UpstreamServer

HEADERS = b"From: a@example.com\r\nSubject: test\r\n\r\n"
SECOND = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nFrom: a@example.com\r\n\r\nsmuggled\r\n"


@pytest.fixture
def account(relay, upstream, tenantName):
    return relay.addTenant(tenantName, upstreamURL(upstream, ca=str(relay.ca.cert)))


def raw(relay: RelayProcess, account) -> RawClient:
    client = RawClient(relay.port, relay.clientContext())
    client.login(account.username, account.password)
    return client


def inData(client: RawClient) -> None:
    assert client.command(b"MAIL FROM:<a@example.com>").startswith("250")
    assert client.command(b"RCPT TO:<b@example.net>").startswith("250")
    assert client.command(b"DATA").startswith("354")


def metric(relay: RelayProcess, name: str, **labels: str) -> float:
    """A sample's value from the relay's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.metricsPort}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("marker", SMUGGLING, ids=[repr(m) for m in SMUGGLING])
def test_smuggling_refused(relay, upstream, account, marker):
    """
    A lax end-of-data marker with a second transaction behind it: refused
    after the real end (550 5.6.0), the upstream completes nothing and sees
    only CRLF lines.
    """
    client = raw(relay, account)
    inData(client)
    client.send(HEADERS + b"body" + marker + SECOND + b".\r\n")
    reply = client.reply()
    assert reply.startswith("550 5.6.0 Message refused"), reply
    assert client.command(b"NOOP").startswith("250")  # the connection stays healthy
    client.close()
    upstream.waitUntil(lambda up: all(not t.completed for t in up.transactions), what="no completed transaction")
    assert upstream.messages == []
    for transaction in upstream.transactions:
        assert transaction.raw.count(b"\n") == transaction.raw.count(b"\r\n")
        assert b"\r" not in transaction.raw.replace(b"\r\n", b"") and b"\x00" not in transaction.raw


def test_dot_stuffing_intact(relay, upstream, account):
    """Dot-stuffed lines reach the upstream stuffed exactly as they must be."""
    client = raw(relay, account)
    inData(client)
    client.send(HEADERS + b"..x\r\n...\r\n.\r\n")
    assert client.reply().startswith("250")
    [message] = upstream.waitForMessages(1)
    assert message.raw.endswith(b"\r\n..x\r\n...\r\n")
    assert message.data.endswith(b"\r\n.x\r\n..\r\n")


def test_starttls_injection_discarded(relay, account):
    """Commands pipelined after STARTTLS in plaintext are never executed (CVE-2011-0411)."""
    client = RawClient(relay.port, relay.clientContext())
    assert client.command(b"EHLO raw.test").startswith("250")
    client.send(b"STARTTLS\r\nAUTH PLAIN AGJvZ3VzAHh4\r\nMAIL FROM:<a@example.com>\r\n")
    assert client.reply().startswith("220")
    client.sock = client.context.wrap_socket(client.sock, server_hostname="127.0.0.1")
    # The first reply in TLS is EHLO's; nothing answers the injected commands.
    assert client.command(b"EHLO raw.test").startswith("250-relay.test")
    assert client.command(b"MAIL FROM:<a@example.com>").startswith("530 5.7.0")


def test_upstream_starttls_injection_discarded(relay, upstreamCert, tenantName):
    """Plaintext an upstream sends after its 220 to STARTTLS is discarded, not taken as a reply."""
    with UpstreamServer(tls=upstreamCert) as up:
        up.setReply("STARTTLS", "220 2.0.0 go ahead\n250 2.1.0 injected")
        account = relay.addTenant(tenantName, upstreamURL(up, ca=str(relay.ca.cert)))
        with relay.connect(account) as client:
            assert client.sendmail("a@example.com", ["b@example.net"], HEADERS + b"x\r\n") == {}
        [message] = up.waitForMessages(1)
        assert message.tls


def test_command_line_limit(relay, account):
    """Command lines over 512 octets get 500 5.5.2 and the session goes on."""
    client = raw(relay, account)
    assert client.command(b"NOOP " + b"x" * 600) == "500 5.5.2 Error: line too long"
    assert client.command(b"NOOP").startswith("250")


def test_text_line_limit(relay, upstream, account):
    """A text line over 1000 octets: the message is refused after the dot and not relayed."""
    client = raw(relay, account)
    inData(client)
    client.send(HEADERS + b"y" * 1200 + b"\r\n.\r\n")
    assert client.reply().startswith("550 5.6.0 Message refused: line longer than 1000 octets")
    upstream.waitUntil(lambda up: up.transactions and not up.transactions[-1].completed, what="an aborted transaction")
    assert upstream.messages == []


def test_runaway_line_closes(relay, account):
    """Megabytes without a line end get 421 and the connection is closed."""
    client = raw(relay, account)
    try:
        for _ in range(64):
            client.send(b"z" * 65536)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass  # the relay may close before all of it is sent
    assert client.reply().startswith("421 4.5.2")
    assert client.closed()


def test_early_data_refused(relay, upstream, account):
    """Message bytes pipelined before our 354 are refused and the connection closed."""
    client = raw(relay, account)
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n" + HEADERS + b"x\r\n.\r\n")
    replies = [client.reply() for _ in range(3)]
    assert replies[2].startswith("554 5.5.0")
    assert client.closed()
    assert upstream.messages == []


@pytest.mark.parametrize(
    "fault, expected, kind",
    [
        (lambda up: up.setGarbage("MAIL"), "451 4.4.1", "protocol"),
        (lambda up: up.setDropAfter("DATA", afterBytes=1000, reset=True), "451 4.4.2", "lost"),
        (lambda up: up.setDropAfter("DATA"), "451 4.4.2", "lost"),
        (lambda up: up.setHang("RCPT"), "451 4.4.2", "timeout"),
        (lambda up: up.setReply("CONNECT", "554 5.3.2 not today"), "451 4.4.1", "refused"),
        (lambda up: up.setDelay("EOD", 0.5), "250 2.0.0", None),
    ],
    ids=["garbage", "reset-mid-data", "close-after-354", "stall", "refuses", "slow"],
)
def test_upstream_faults(relay, upstreamCert, tenantName, fault, expected, kind):
    """Each upstream fault maps to a defined reply and an upstream_errors_total kind; never a false 250."""
    with UpstreamServer(tls=upstreamCert) as up:
        fault(up)
        account = relay.addTenant(tenantName, upstreamURL(up, ca=str(relay.ca.cert), timeout="2"))
        before = metric(relay, "smtprelay_upstream_errors_total", kind=kind) if kind else 0
        client = raw(relay, account)
        replies = [client.command(b"MAIL FROM:<a@example.com>")]
        if replies[-1].startswith("250"):
            replies.append(client.command(b"RCPT TO:<b@example.net>"))
        if replies[-1].startswith("250"):
            replies.append(client.command(b"DATA"))
        if replies[-1].startswith("354"):
            client.send(HEADERS + (b"x" * 70 + b"\r\n") * 300 + b".\r\n")
            replies.append(client.reply())
        assert replies[-1].startswith(expected), replies
        if kind:
            assert up.messages == []
            assert metric(relay, "smtprelay_upstream_errors_total", kind=kind) == before + 1
        else:
            assert len(up.waitForMessages(1)) == 1


def test_sigkill_mid_transfer(ca, upstreamCert, tmp_path):
    """A relay killed mid-message leaves the upstream with no completed message."""
    relay = RelayProcess(tmp_path / "relay", ca)
    try:
        with UpstreamServer(tls=upstreamCert) as up:
            account = relay.addTenant("killed", upstreamURL(up, ca=str(ca.cert)))
            client = raw(relay, account)
            inData(client)
            client.send(HEADERS + b"partial\r\n" * 1000)
            up.waitUntil(lambda u: "DATA" in u.verbs(), what="the message to start upstream")
            relay.process.send_signal(signal.SIGKILL)
            relay.process.wait(10)
            up.waitUntil(lambda u: u.aborted == 1, what="the upstream to see the connection drop")
            assert up.messages == []
    finally:
        relay.stop()


def waitUntilDraining(relay: RelayProcess, timeout: float = 10.0) -> None:
    """Until /readyz answers 503 draining."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{relay.metricsPort}/readyz", timeout=2)
        except urllib.error.HTTPError as e:
            if e.code == 503 and e.read() == b"draining\n":
                return
        time.sleep(0.05)
    raise AssertionError("the relay did not start draining")


def test_sigterm_drains(ca, upstreamCert, tmp_path):
    """
    SIGTERM: idle clients get 421 4.3.2 at once, a transaction in flight
    finishes (250) and is then closed with 421, the relay exits 0.
    """
    relay = RelayProcess(tmp_path / "relay", ca, "--drain-timeout=20")
    with UpstreamServer(tls=upstreamCert) as up:
        account = relay.addTenant("drained", upstreamURL(up, ca=str(ca.cert)))
        busy, idle = raw(relay, account), raw(relay, account)
        inData(busy)
        busy.send(HEADERS + b"first half\r\n")
        relay.process.send_signal(signal.SIGTERM)
        assert idle.reply() == "421 4.3.2 Service shutting down, try again later"
        assert idle.closed()
        waitUntilDraining(relay)  # and it keeps the busy client meanwhile
        busy.send(b"second half\r\n.\r\n")
        assert busy.reply().startswith("250 2.0.0")
        assert busy.reply() == "421 4.3.2 Service shutting down, try again later"
        assert relay.process.wait(20) == 0
        assert re.search(rb"first half\r\nsecond half\r\n$", up.waitForMessages(1)[0].data)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", relay.port), timeout=2)
    relay.stop()


def tlsVersion(relay: RelayProcess, maximum: ssl.TLSVersion) -> str | None:
    """The TLS version negotiated by a client capped at C{maximum}, or None when the handshake fails."""
    context = relay.clientContext()
    context.maximum_version = maximum
    try:
        with socket.create_connection(("127.0.0.1", relay.smtpsPort), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return tls.version()
    except (ssl.SSLError, ConnectionError):
        return None


def test_tls_profiles(relay, ca, tmp_path):
    """The intermediate profile (default) takes TLS 1.2; the modern profile takes TLS 1.3 only."""
    assert tlsVersion(relay, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    modern = RelayProcess(tmp_path / "modern", ca, "--tls-profile=modern")
    try:
        assert tlsVersion(modern, ssl.TLSVersion.TLSv1_2) is None
        assert tlsVersion(modern, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    finally:
        modern.stop()
