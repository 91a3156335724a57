"""
The relay end to end: real clients (smtplib, swaks) through a running
`twistd smtprelay` into real upstream SMTP servers on loopback, with real TLS.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import subprocess
import time

import pytest

from tests.support.relay import splitTrace, upstreamURL
from tests.support.upstream import UpstreamServer, closedPort

FROM = b"From: Sender <a@example.com>\r\n"
MESSAGE = (
    FROM + b""
    b"To: b@example.net\r\n"
    b"Subject: end to end\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line starting with a dot\r\n"
    b"..two dots\r\n"
    b"\xc3\xa9 8-bit text\r\n"
    b"last line\r\n"
)


def ca(relay) -> str:
    return str(relay.ca.cert)


def test_relay_byte_identical(relay, upstream, tenantName):
    """smtplib with STARTTLS and AUTH PLAIN: the upstream gets the message byte for byte, plus the trace header."""
    account = relay.addTenant(tenantName, upstreamURL(upstream, ca=ca(relay)))
    with relay.connect(account) as client:
        refused = client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
        assert refused == {}
    [message] = upstream.waitForMessages(1)
    trace, rest = splitTrace(message.data)
    assert rest == MESSAGE
    assert b"by relay.test (smtprelay) with ESMTPSA" in trace
    assert b"..a line starting with a dot\r\n...two dots\r\n" in message.raw
    assert message.tls
    assert message.sender == "a@example.com" and message.recipients == ("b@example.net",)


def test_auth_login(relay, upstream, tenantName):
    """AUTH LOGIN works as well as PLAIN."""
    account = relay.addTenant(tenantName, upstreamURL(upstream, ca=ca(relay)))
    with relay.connect() as client:
        client.user, client.password = account.username, account.password
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    assert splitTrace(upstream.waitForMessages(1)[0].data)[1] == MESSAGE


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks(relay, upstream, tenantName, mechanism):
    """swaks with STARTTLS and AUTH relays through to the upstream."""
    swaks = shutil.which("swaks")
    assert swaks, "swaks is not installed (apt-get install swaks libnet-ssleay-perl)"
    account = relay.addTenant(tenantName, upstreamURL(upstream, ca=ca(relay)))
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{relay.port}", "--tls", "--auth", mechanism,
         "--auth-user", account.username, "--auth-password", account.password,
         "--from", "a@example.com", "--to", "b@example.net", "--header", "Subject: swaks"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  250 2.0.0" in result.stdout
    [message] = upstream.waitForMessages(1)
    assert b"Subject: swaks" in message.data


def test_implicit_tls(relay, upstream, tenantName):
    """The --smtps listener speaks TLS from the start and does not offer STARTTLS."""
    account = relay.addTenant(tenantName, upstreamURL(upstream, ca=ca(relay)))
    with smtplib.SMTP_SSL("127.0.0.1", relay.smtpsPort, context=relay.clientContext(), timeout=15) as client:
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        client.login(account.username, account.password)
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    upstream.waitForMessages(1)


def test_tls_sessions_resume(relay):
    """A client that comes back offers its TLS session ticket and skips the full handshake, on both listeners."""
    context = relay.clientContext()

    def handshake(port: int, starttls: bool, session):
        with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
            if starttls:
                f = raw.makefile("rb")
                f.readline()
                raw.sendall(b"HELO client.test\r\nSTARTTLS\r\n")
                assert f.readline().startswith(b"250") and f.readline().startswith(b"220")
            with context.wrap_socket(raw, server_hostname="relay.test", session=session) as sock:
                f = sock.makefile("rb")
                if not starttls:
                    f.readline()  # the greeting; a TLS 1.3 ticket arrives after the handshake
                sock.sendall(b"NOOP\r\n")
                assert f.readline().startswith(b"250")
                return sock.session, sock.session_reused

    for port, starttls in ((relay.port, True), (relay.smtpsPort, False)):
        session, reused = handshake(port, starttls, None)
        assert not reused and session is not None and session.has_ticket
        assert handshake(port, starttls, session)[1], "the second connection resumed the first one's session"


def test_final_reply_waits_for_upstream(relay, upstream, tenantName):
    """An upstream that delays its final 250 by 2 s delays the client's 250 by at least that."""
    account = relay.addTenant(tenantName, upstreamURL(upstream, ca=ca(relay)))
    upstream.setDelay("EOD", 2.0)
    with relay.connect(account) as client:
        client.mail("a@example.com")
        client.rcpt("b@example.net")
        started = time.monotonic()
        code, text = client.data(MESSAGE)
        elapsed = time.monotonic() - started
    assert code == 250
    assert elapsed >= 2.0
    assert b"queue id" in text


def test_unauthenticated_mail_refused(relay):
    """MAIL without AUTH: 530 5.7.0; the relay is never open."""
    with relay.connect() as client:
        assert client.mail("a@example.com") == (530, b"5.7.0 Authentication required")


def test_auth_before_starttls_refused(relay, tenantName, upstream):
    """AUTH is neither offered nor accepted before STARTTLS."""
    account = relay.addTenant(tenantName, upstreamURL(upstream, ca=ca(relay)))
    with relay.connect(tls=False) as client:
        assert not client.has_extn("auth")
        client.user, client.password = account.username, account.password
        code, text = client.docmd("AUTH", "PLAIN " + client.auth_plain())
        assert (code, text) == (538, b"5.7.11 Encryption required for requested authentication mechanism")


def test_wrong_password(relay, tenantName, upstream):
    """A wrong password gets 535 5.7.8, and the failure is logged with the client address."""
    account = relay.addTenant(tenantName, upstreamURL(upstream, ca=ca(relay)))
    with relay.connect() as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as error:
            client.login(account.username, "wrong")
        assert error.value.smtp_code == 535
        assert error.value.smtp_error == b"5.7.8 Authentication credentials invalid"
    assert f"smtprelay auth failed: client=127.0.0.1 user={account.username}" in relay.log()


def test_upstream_refusals_mirrored(relay, upstream, tenantName):
    """Upstream 4xx/5xx at MAIL (seen at RCPT: MAIL is the relay's), per RCPT and at the end reach the client."""
    account = relay.addTenant(tenantName, upstreamURL(upstream, ca=ca(relay)))
    upstream.setReply("MAIL", "451 4.3.0 Sender check deferred", times=1)
    upstream.setReply("RCPT", "550 5.1.1 No such user here", match="nobody@example.net")
    upstream.setReply("EOD", "554 5.7.1 Content refused", times=1)
    with relay.connect(account) as client:
        assert client.mail("a@example.com") == (250, b"2.1.0 Ok")
        assert client.rcpt("b@example.net") == (451, b"4.3.0 Sender check deferred")
        client.rset()
        assert client.mail("a@example.com") == (250, b"2.1.0 Ok")
        assert client.rcpt("nobody@example.net") == (550, b"5.1.1 No such user here")
        assert client.rcpt("b@example.net")[0] == 250
        code, text = client.data(MESSAGE)
        assert code == 554 and text.startswith(b"5.7.1 Content refused (queue id ")
        # The session goes on: the next message is relayed.
        assert client.sendmail("a@example.com", ["nobody@example.net", "b@example.net"], MESSAGE) == {
            "nobody@example.net": (550, b"5.1.1 No such user here")
        }
    [message] = upstream.waitForMessages(1)
    assert message.recipients == ("b@example.net",)


def test_upstream_down(relay, tenantName):
    """No upstream reachable: 451 4.4.1 at every RCPT (MAIL is the relay's)."""
    account = relay.addTenant(tenantName, f"smtp://127.0.0.1:{closedPort()}")
    with relay.connect(account) as client:
        assert client.mail("a@example.com") == (250, b"2.1.0 Ok")
        assert client.rcpt("b@example.net") == (451, b"4.4.1 No upstream available, try again later")
        assert client.rcpt("c@example.net") == (451, b"4.4.1 No upstream available, try again later")


def test_upstream_hangs_past_timeout(relay, upstream, tenantName):
    """
    An upstream that never answers the final dot: after
    --upstream-final-timeout (6 s here; not the URL's 1 s reply timeout) the
    client gets 451 4.4.7, the outcome unknown, and the log says timeout.
    """
    account = relay.addTenant(tenantName, upstreamURL(upstream, ca=ca(relay), timeout="1"))
    upstream.setHang("EOD")
    with relay.connect(account) as client:
        client.mail("a@example.com")
        client.rcpt("b@example.net")
        started = time.monotonic()
        code, text = client.data(MESSAGE)
        waited = time.monotonic() - started
    assert 6 <= waited < 15
    assert code == 451 and text.startswith(b"4.4.7 The upstream did not answer the end of data in time")
    assert upstream.messages == []
    queueId = text.rsplit(b"queue id ", 1)[1].rstrip(b")").decode()
    assert re.search(rf"{queueId} timeout: no final reply from ", relay.log())


def test_upstream_drops_after_354(relay, upstream, tenantName):
    """An upstream that closes after its 354: 451 4.4.2 after the client's dot, nothing delivered."""
    account = relay.addTenant(tenantName, upstreamURL(upstream, ca=ca(relay)))
    upstream.setDropAfter("DATA")
    with relay.connect(account) as client:
        client.mail("a@example.com")
        client.rcpt("b@example.net")
        code, text = client.data(MESSAGE * 100)
    assert code == 451 and text.startswith(b"4.4.2 ")
    assert upstream.messages == []


def test_client_drops_mid_data(relay, upstream, tenantName):
    """A client that disconnects mid-DATA: the upstream is aborted and delivers nothing."""
    account = relay.addTenant(tenantName, upstreamURL(upstream, ca=ca(relay)))
    client = relay.connect(account)
    client.mail("a@example.com")
    client.rcpt("b@example.net")
    assert client.docmd("DATA")[0] == 354
    client.send(b"Subject: partial\r\n\r\n" + b"x" * 100000 + b"\r\n")
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()
    upstream.waitUntil(lambda up: up.aborted == 1, what="the upstream to see the transaction aborted")
    assert upstream.messages == []


def test_tenants_are_isolated(relay, upstreamCert, tenantName):
    """Two tenants with their own upstreams never see each other's mail."""
    with UpstreamServer(tls=upstreamCert) as first, UpstreamServer(tls=upstreamCert) as second:
        one = relay.addTenant(tenantName + "a", upstreamURL(first, ca=ca(relay)))
        two = relay.addTenant(tenantName + "b", upstreamURL(second, ca=ca(relay)))
        for account, subject in ((one, b"one"), (two, b"two"), (one, b"one")):
            with relay.connect(account) as client:
                client.sendmail("a@example.com", ["b@example.net"], FROM + b"Subject: " + subject + b"\r\n\r\nx\r\n")
        assert [splitTrace(m.data)[1] for m in first.waitForMessages(2)] == [FROM + b"Subject: one\r\n\r\nx\r\n"] * 2
        assert [splitTrace(m.data)[1] for m in second.waitForMessages(1)] == [FROM + b"Subject: two\r\n\r\nx\r\n"]


def test_upstream_auth_over_starttls(relay, upstreamCert, tenantName):
    """smtp+starttls with credentials: the relay authenticates upstream, only over TLS."""
    with UpstreamServer(tls=upstreamCert, auth=("up-user", "up-secret")) as up:
        account = relay.addTenant(tenantName, upstreamURL(up, "smtp+starttls", "up-user:up-secret@", ca=ca(relay)))
        with relay.connect(account) as client:
            client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
        [message] = up.waitForMessages(1)
        assert message.user == "up-user" and message.tls
    assert "up-secret" not in relay.log()


def test_upstream_opportunistic_tls(relay, tmp_path, ca, tenantName):
    """
    smtp:// without credentials encrypts even when the certificate does not
    verify (RFC 7435), and the log says why it did not.
    """
    from tests.support.certs import makeSelfSigned

    with UpstreamServer(tls=makeSelfSigned(tmp_path)) as up:
        account = relay.addTenant(tenantName, upstreamURL(up, ca=str(ca.cert)))
        with relay.connect(account) as client:
            assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
        [message] = up.waitForMessages(1)
        assert message.tls
    assert re.search(
        r"opportunistic TLS to 127\.0\.0\.1:\d+: certificate of 127\.0\.0\.1 does not verify: ", relay.log()
    )


@pytest.mark.parametrize(
    "hostnames, ips, reason",
    [
        (("localhost",), ("127.0.0.1",), r"certificate of 127\.0\.0\.1 does not verify: self.signed certificate"),
        (("wrong.example",), (), r"certificate for wrong\.example does not match 127\.0\.0\.1"),
    ],
    ids=["untrusted", "wrong-name"],
)
def test_upstream_certificate_must_verify(relay, tmp_path, ca, tenantName, hostnames, ips, reason):
    """
    With ?verify=yes (or credentials, smtp+starttls://, smtps://) a
    certificate that fails is not used: 451 4.4.1, nothing sent but EHLO, and
    the log names the certificate's problem, not a closed connection.
    """
    from tests.support.certs import makeSelfSigned

    cert = makeSelfSigned(tmp_path, hostnames=hostnames, ips=ips) if "localhost" in hostnames else None
    if cert is None:
        cert = ca.issue(tmp_path, "wrong", hostnames=hostnames, ips=ips)
    with UpstreamServer(tls=cert) as up:
        account = relay.addTenant(tenantName, upstreamURL(up, ca=str(ca.cert), verify="yes"))
        with relay.connect(account) as client:
            assert client.mail("a@example.com")[0] == 250
            assert client.rcpt("b@example.net") == (451, b"4.4.1 No upstream available, try again later")
        assert up.messages == []
        assert "MAIL" not in [verb for connection in range(up.connections) for verb in up.verbs(connection)]
    assert re.search(reason, relay.log())


def test_failover_and_connection_reuse(relay, upstream, tenantName):
    """The first upstream refuses connections, the second takes both messages over one connection."""
    account = relay.addTenant(tenantName, f"smtp://127.0.0.1:{closedPort()}", upstreamURL(upstream, ca=ca(relay)))
    with relay.connect(account) as client:
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
        client.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    assert len(upstream.waitForMessages(2)) == 2
    assert upstream.connections == 1
