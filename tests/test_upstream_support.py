"""
Tests for the test support code: the scriptable upstream SMTP server and the
test certificates, exercised with the standard library's smtplib and raw
sockets.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import stat
import threading
import time

import pytest

from tests.support.certs import makeCA, makeSelfSigned
from tests.support.upstream import UpstreamServer, closedPort

HOST = "127.0.0.1"
MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return makeCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def serverCert(ca, tmp_path_factory):
    return ca.issue(tmp_path_factory.mktemp("server"), "upstream")


@pytest.fixture
def up():
    with UpstreamServer() as server:
        yield server


def connect(server: UpstreamServer, timeout: float = 5.0) -> smtplib.SMTP:
    client = smtplib.SMTP(HOST, server.port, timeout=timeout)
    client.ehlo("client.test")
    return client


class RawClient:
    """A bare SMTP client, for exact control over the bytes on the wire."""

    def __init__(self, port: int):
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """Read one whole (possibly multi-line) reply."""
        lines = []
        while not lines or lines[-1][3:4] == b"-":
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise EOFError(b"".join(lines) + self.buffer)
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line)
        return b"\r\n".join(lines)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def startTLS(self, context: ssl.SSLContext, hostname: str = "localhost") -> None:
        self.sock = context.wrap_socket(self.sock, server_hostname=hostname)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(up):
    client = RawClient(up.port)
    assert client.reply() == b"220 upstream.test ESMTP"
    client.command(b"EHLO client.test")
    yield client
    client.close()


# -- protocol ---------------------------------------------------------------


def test_plainDelivery(up):
    """A message sent with smtplib is recorded with its envelope, verbatim."""
    with smtplib.SMTP(HOST, up.port, timeout=5) as client:
        assert client.ehlo("client.test")[0] == 250
        assert client.sendmail("a@example.com", ["b@example.com", "c@example.com"], MESSAGE) == {}
    [message] = up.waitForMessages(1)
    assert (message.sender, message.recipients) == ("a@example.com", ("b@example.com", "c@example.com"))
    assert message.data == message.raw == MESSAGE
    assert (message.tls, message.user, message.connection, message.completed) == (False, None, 0, True)
    assert message.helo == "client.test"
    assert message.reply == "250 2.0.0 Ok: queued as 0"
    up.waitUntil(lambda s: "QUIT" in s.verbs(0), what="QUIT")
    assert up.verbs(0) == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    assert up.connections == 1


def test_ehloAdvertisesExtensions(up):
    """EHLO lists the extensions; STARTTLS and AUTH only when configured."""
    client = connect(up)
    assert client.esmtp_features.keys() == {"pipelining", "size", "8bitmime", "enhancedstatuscodes"}
    assert client.esmtp_features["size"] == str(up.maxSize)
    assert client.helo("old.test")[0] == 250
    client.quit()


def test_sessionCommands(raw, up):
    """RSET and NOOP are answered and recorded; sequence errors are refused."""
    assert raw.command(b"RCPT TO:<b@example.com>").startswith(b"503 5.5.1")
    assert raw.command(b"MAIL FROM:<>").startswith(b"250 2.1.0")
    assert raw.command(b"MAIL FROM:<a@example.com>").startswith(b"503 5.5.1")
    assert raw.command(b"DATA").startswith(b"554 5.5.1")
    assert raw.command(b"RSET") == b"250 2.0.0 Ok"
    assert raw.command(b"NOOP") == b"250 2.0.0 Ok"
    assert raw.command(b"MAIL FROM:<a@example.com> SIZE=999999999").startswith(b"552 5.3.4")
    assert raw.command(b"BOGUS").startswith(b"500 5.5.2")
    raw.send(b"NOOP\n")
    assert raw.reply() == b"500 5.5.2 Bare LF in command line"
    assert up.commands[0][-3:] == ["MAIL FROM:<a@example.com> SIZE=999999999", "BOGUS", "NOOP"]
    assert up.verbs(0) == ["EHLO", "RCPT", "MAIL", "MAIL", "DATA", "RSET", "NOOP", "MAIL", "BOGUS", "NOOP"]


def test_pipelining(raw, up):
    """MAIL, RCPT and DATA sent at once get one reply each, in order."""
    raw.send(b"MAIL FROM:<a@example.com> BODY=8BITMIME\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<>\r\nDATA\r\n")
    assert [raw.reply()[:3] for _ in range(4)] == [b"250", b"250", b"501", b"354"]
    raw.send(MESSAGE + b".\r\nQUIT\r\n")
    assert raw.reply().startswith(b"250 2.0.0")
    assert raw.reply() == b"221 2.0.0 Bye"
    [message] = up.messages
    assert message.recipients == ("b@example.com",)
    assert message.mailOptions == ("BODY=8BITMIME",)


def test_dotStuffing(raw, up):
    """The raw record keeps the wire's dot-stuffing; data removes it."""
    wire = b"..leading\r\n...\r\nmid.dle\r\n..\r\nbare\n.\r\nend\r\n"
    raw.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert [raw.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    raw.send(wire + b".\r\n")
    assert raw.reply().startswith(b"250")
    [message] = up.messages
    assert message.raw == wire
    assert message.data == b".leading\r\n..\r\nmid.dle\r\n.\r\nbare\n.\r\nend\r\n"  # no line starts after bare LF


def test_emptyMessage(raw, up):
    """A message with no content at all is recorded as empty."""
    for line in (b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>", b"DATA"):
        raw.command(line)
    assert raw.command(b".").startswith(b"250")
    assert up.messages[0].raw == up.messages[0].data == b""


def test_smtplibStuffsDots(up):
    """smtplib's stuffed dots arrive stuffed and are recorded un-stuffed."""
    body = b"Subject: dots\r\n\r\n.one\r\n.\r\n..two\r\n"
    with connect(up) as client:
        client.sendmail("a@example.com", ["b@example.com"], body)
    [message] = up.waitForMessages(1)
    assert message.raw == b"Subject: dots\r\n\r\n..one\r\n..\r\n...two\r\n"
    assert message.data == body


# -- TLS and AUTH -----------------------------------------------------------


def test_startTLS(ca, serverCert):
    """STARTTLS upgrades with the CA's certificate; EHLO then omits it."""
    with UpstreamServer(tls=serverCert) as up, connect(up) as client:
        assert client.has_extn("starttls")
        assert client.starttls(context=ca.clientContext())[0] == 220
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        assert up.messages[0].tls
        assert up.plaintextAfterStartTLS == b""
        assert up.serverNames == [None]  # smtplib sends no SNI for an IP address


def test_implicitTLS(ca, serverCert):
    """implicitTLS speaks TLS from connect and sees the SNI name."""
    with UpstreamServer(tls=serverCert, implicitTLS=True) as up:
        with smtplib.SMTP_SSL("localhost", up.port, context=ca.clientContext(), timeout=5) as client:
            client.ehlo("client.test")
            assert not client.has_extn("starttls")
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        assert up.messages[0].tls
        assert up.serverNames == ["localhost"]


def test_plaintextAfterStartTLS(ca, serverCert):
    """Bytes pipelined after STARTTLS are recorded and discarded."""
    with UpstreamServer(tls=serverCert) as up:
        client = RawClient(up.port)
        client.reply()
        client.command(b"EHLO client.test")
        client.send(b"STARTTLS\r\nMAIL FROM:<evil@example.com>\r\n")
        assert client.reply() == b"220 2.0.0 Ready to start TLS"
        client.startTLS(ca.clientContext())
        assert client.command(b"MAIL FROM:<a@example.com>").startswith(b"503")  # EHLO again first
        assert client.command(b"EHLO client.test").startswith(b"250")
        client.close()
        assert up.plaintextAfterStartTLS == b"MAIL FROM:<evil@example.com>\r\n"


def test_scriptedPlaintextAfterSTARTTLSReply(ca, serverCert):
    """A multi-line STARTTLS override lets the server inject plaintext after its 220."""
    with UpstreamServer(tls=serverCert) as up:
        up.setReply("STARTTLS", "220 2.0.0 go ahead\n250 injected")
        client = RawClient(up.port)
        client.reply()
        client.command(b"EHLO client.test")
        assert client.command(b"STARTTLS") == b"220 2.0.0 go ahead"
        assert client.reply() == b"250 injected"
        client.startTLS(ca.clientContext())
        assert client.command(b"NOOP") == b"250 2.0.0 Ok"
        client.close()


@pytest.mark.parametrize("kind", ["selfSigned", "wrongHost", "expired"])
def test_untrustedCertificates(kind, ca, tmp_path):
    """Certificates the CA did not sign, or for another host, or expired, fail verification."""
    cert = {
        "selfSigned": lambda: makeSelfSigned(tmp_path),
        "wrongHost": lambda: ca.issue(tmp_path, "wrong", hostnames=["wrong.invalid"], ips=[]),
        "expired": lambda: ca.issue(tmp_path, "old", expired=True),
    }[kind]()
    with UpstreamServer(tls=cert) as up, connect(up) as client:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=ca.clientContext())
        up.waitUntil(lambda s: len(s.tlsErrors) == 1, 2, "the failed handshake")


def test_certificateFiles(ca, serverCert):
    """Keys are private files; the chain holds the leaf then the CA."""
    for key in (ca.key, serverCert.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    chain = serverCert.chain.read_bytes()
    assert chain.count(b"BEGIN CERTIFICATE") == 2
    assert chain.endswith(ca.cert.read_bytes())


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("initial", [True, False])
def test_auth(mechanism, initial, ca, serverCert):
    """AUTH PLAIN and LOGIN, with or without an initial response, log the user in."""
    with UpstreamServer(tls=serverCert, auth=("user", "s3cret")) as up, connect(up) as client:
        client.starttls(context=ca.clientContext())
        client.ehlo("client.test")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        client.user, client.password = "user", "s3cret"
        authenticator = getattr(client, f"auth_{mechanism.lower()}")
        assert client.auth(mechanism, authenticator, initial_response_ok=initial)[0] == 235
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        assert up.messages[0].user == "user"


def test_authFailures(ca, serverCert):
    """Wrong credentials get 535 and MAIL stays refused until AUTH succeeds."""
    with UpstreamServer(tls=serverCert, auth=("user", "s3cret")) as up, connect(up) as client:
        assert not client.has_extn("auth")  # not offered before TLS
        assert client.docmd("AUTH", "PLAIN AHVzZXIAczNjcmV0")[0] == 538
        client.starttls(context=ca.clientContext())
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            client.login("user", "wrong")
        assert failure.value.smtp_code == 535
        assert client.docmd("MAIL", "FROM:<a@example.com>")[0] == 530
        assert client.docmd("AUTH", "LOGIN")[0] == 334
        assert client.docmd("*")[0] == 501


def test_insecureAuthAndRequireTLS(serverCert):
    """allowInsecureAuth offers AUTH in plaintext; requireTLS refuses MAIL before STARTTLS."""
    with UpstreamServer(auth=("user", "pw"), allowInsecureAuth=True) as up, connect(up) as client:
        client.login("user", "pw")
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        assert (up.messages[0].user, up.messages[0].tls) == ("user", False)
    with UpstreamServer(tls=serverCert, requireTLS=True) as up, connect(up) as client:
        assert client.docmd("MAIL", "FROM:<a@example.com>")[0] == 530


# -- faults -----------------------------------------------------------------


def test_replyOverrides(up):
    """Scripted replies for MAIL (first only), a matched RCPT and EOD are sent."""
    up.setReply("MAIL", "451 4.3.0 try later", nth=1)
    up.setReply("RCPT", "550 5.1.1 no such user", match="Bad@Example.com")
    with connect(up) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        assert refused.value.smtp_code == 451
        refusals = client.sendmail("a@example.com", ["b@example.com", "bad@example.com"], MESSAGE)
        assert refusals == {"bad@example.com": (550, b"5.1.1 no such user")}
        up.setReply("EOD", "554 5.6.0 rejected", times=1)
        with pytest.raises(smtplib.SMTPDataError) as rejected:
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        assert rejected.value.smtp_code == 554
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    assert [t.reply[:3] for t in up.transactions] == ["250", "554", "250"]
    assert [m.recipients for m in up.messages] == [("b@example.com",), ("b@example.com",)]


def test_greetingRefused(up):
    """A scripted 554 greeting refuses the session; commands then get 503."""
    up.setReply("CONNECT", "554 5.3.2 go away")
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP(HOST, up.port, timeout=5)
    assert refused.value.smtp_code == 554
    client = RawClient(up.port)
    assert client.reply() == b"554 5.3.2 go away"
    assert client.command(b"EHLO client.test").startswith(b"503")
    assert client.command(b"QUIT").startswith(b"221")
    client.close()


def test_421ClosesConnection(up):
    """A 421 reply is followed by the server closing the connection."""
    up.setReply("MAIL", "421 4.3.2 shutting down")
    with connect(up) as client:
        with pytest.raises(smtplib.SMTPSenderRefused):
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_delay(up):
    """A delay holds back the end-of-data reply; the message is then accepted."""
    up.setDelay("EOD", 0.3)
    with connect(up) as client:
        started = time.monotonic()
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        assert time.monotonic() - started >= 0.3
    assert len(up.messages) == 1


def test_hang():
    """A hung end-of-data reply times the client out; close still returns fast."""
    up = UpstreamServer().start()
    up.setHang("EOD")
    client = connect(up, timeout=0.3)
    with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected)):
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    started = time.monotonic()
    up.close()
    assert time.monotonic() - started < 1
    [transaction] = up.transactions
    assert (transaction.completed, transaction.reply, up.messages) == (True, None, [])
    client.close()


def test_dropAfterReply(up):
    """dropAfter closes the connection right after the 354."""
    up.setDropAfter("DATA")
    with connect(up) as client:
        assert client.docmd("MAIL", "FROM:<a@example.com>")[0] == 250
        assert client.docmd("RCPT", "TO:<b@example.com>")[0] == 250
        assert client.docmd("DATA")[0] == 354
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    assert up.transactions == []


def test_dropAfterBytes(raw, up):
    """dropAfter with afterBytes cuts the DATA phase short without a reply."""
    up.setDropAfter("DATA", afterBytes=10)
    for line in (b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>", b"DATA"):
        raw.command(line)
    raw.send(b"line one\r\nline two\r\nline three\r\n")
    with pytest.raises(EOFError):
        raw.reply()
    up.waitUntil(lambda s: len(s.transactions) == 1)
    [transaction] = up.transactions
    assert transaction.raw.startswith(b"line one\r\nline two\r\n")
    assert (transaction.completed, transaction.reply, up.aborted, up.messages) == (False, None, 0, [])


def test_dropWithReset(raw, up):
    """dropAfter with reset ends the connection with a TCP reset."""
    up.setDropAfter("NOOP", reset=True)
    raw.send(b"NOOP\r\n")
    with pytest.raises(ConnectionResetError):
        for _ in range(10):
            raw.reply()


def test_garbage(up):
    """setGarbage answers with a line that is no SMTP reply."""
    up.setGarbage("NOOP")
    with connect(up) as client:
        assert client.noop()[0] == -1  # smtplib's code for an unparsable reply


def test_clientAbortsData(raw, up):
    """A client that disconnects mid-DATA is counted as aborted, with the partial content."""
    for line in (b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>", b"DATA"):
        raw.command(line)
    raw.send(b"Subject: cut\r\n\r\npart")
    raw.close()
    up.waitUntil(lambda s: s.aborted == 1, what="the abort")
    [transaction] = up.transactions
    assert (transaction.completed, transaction.raw) == (False, b"Subject: cut\r\n\r\npart")


def test_closedPort():
    """closedPort gives a loopback port that refuses connections."""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, closedPort()), timeout=1).close()


def test_cleanShutdown(ca, serverCert):
    """close cuts idle and mid-handshake connections and leaves no thread behind."""
    up = UpstreamServer(tls=serverCert, implicitTLS=True).start()
    idle = [socket.create_connection((HOST, up.port), timeout=1) for _ in range(3)]
    up.waitUntil(lambda s: s.connections == 3)
    started = time.monotonic()
    up.close()
    assert time.monotonic() - started < 1
    assert not [t for t in threading.enumerate() if t.name.startswith(f"upstream-{up.port}")]
    for sock in idle:
        sock.close()


def test_waitForMessagesTimesOut(up):
    """waitForMessages fails with a clear message when nothing arrives in time."""
    with pytest.raises(AssertionError, match=r"timed out after 0.1s waiting for 1 message"):
        up.waitForMessages(1, timeout=0.1)


def test_faultValidation(up):
    """Unknown reply points and misplaced options are refused at once."""
    with pytest.raises(ValueError, match="unknown reply point"):
        up.setReply("EDO", "250 ok")
    with pytest.raises(ValueError):
        up.setDropAfter("MAIL", afterBytes=3)
    with pytest.raises(ValueError):
        UpstreamServer(requireTLS=True)


def test_overlongCommandLine(raw):
    """A command line past the limit gets 500 and the connection is closed."""
    raw.send(b"NOOP " + b"x" * 5000)
    assert raw.reply() == b"500 5.5.2 Line too long"
    with pytest.raises(EOFError):
        raw.reply()
