"""
Round trips and conformance through a running relay, with real clients
(smtplib, swaks, curl) and a real upstream server: MAIL and the first RCPT
go upstream in one write, the body as BDAT chunks byte-exact, refusals at
MAIL, DATA and a chunk come back where docs/design.md §2 says, SMTPUTF8 and
DSN are passed on, a dead webhook fails over.
"""

from __future__ import annotations

import shutil
import smtplib
import subprocess

import pytest

from tests.support.relay import splitTrace, upstreamURL
from tests.support.upstream import UpstreamServer, closedPort

MESSAGE = b"From: a@example.com\r\nSubject: conformance\r\n\r\nhello\r\n"
# Stuffed dots at every place they can be, and lines of the longest length allowed (998 octets and CRLF).
TRICKY = (
    b"From: a@example.com\r\nSubject: dots\r\n\r\n"
    + b".leading dot\r\n..two dots\r\n.\r\n"
    + (b"x" * 998 + b"\r\n") * 3
    + b".\r\nend\r\n"
)


def ca(relay) -> str:
    return str(relay.ca.cert)


@pytest.mark.parametrize("extensions", [(), ("CHUNKING",)], ids=["pipelining", "chunking"])
def test_mail_goes_with_the_first_rcpt(relay, upstreamCert, tenantName, extensions):
    """The upstream receives MAIL and the first RCPT in one read; with CHUNKING there is no DATA, only BDAT."""
    with UpstreamServer(tls=upstreamCert, extensions=extensions) as up:
        account = relay.addTenant(tenantName, upstreamURL(up, ca=ca(relay)))
        with relay.connect(account) as client:
            assert client.sendmail("a@example.com", ["b@example.net", "c@example.net"], MESSAGE) == {}
        [message] = up.waitForMessages(1)
        batches = up.batches(0)
        assert ["MAIL", "RCPT"] in batches
        verbs = up.verbs(0)
        if extensions:
            assert "DATA" not in verbs and "BDAT" in verbs and message.via == "BDAT"
        else:
            assert "DATA" in verbs and message.via == "DATA"


@pytest.mark.parametrize("extensions", [(), ("CHUNKING",)], ids=["data", "bdat"])
def test_tricky_body_byte_exact(relay, upstreamCert, tenantName, extensions):
    """Stuffed dots and 998-octet lines arrive byte-exact, through DATA and through BDAT."""
    with UpstreamServer(tls=upstreamCert, extensions=extensions) as up:
        account = relay.addTenant(tenantName, upstreamURL(up, ca=ca(relay)))
        with relay.connect(account) as client:
            assert client.sendmail("a@example.com", ["b@example.net"], TRICKY) == {}
        [message] = up.waitForMessages(1)
        assert splitTrace(message.data)[1] == TRICKY


def test_data_refusal_after_the_dot(relay, upstreamCert, tenantName):
    """The upstream refusing DATA: the client had our 354, and gets the refusal after its dot."""
    with UpstreamServer(tls=upstreamCert) as up:
        account = relay.addTenant(tenantName, upstreamURL(up, ca=ca(relay)))
        up.setReply("DATA", "554 5.3.0 No DATA today", times=1)
        with relay.connect(account) as client:
            client.mail("a@example.com")
            client.rcpt("b@example.net")
            assert client.docmd("DATA")[0] == 354
            code, text = _finishData(client, MESSAGE)
            assert code == 554 and text.startswith(b"5.3.0 No DATA today (queue id ")
            assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}  # the session goes on
        assert len(up.waitForMessages(1)) == 1


def _finishData(client: smtplib.SMTP, message: bytes) -> tuple[int, bytes]:
    """Send a message after a 354 already received, and read the final reply."""
    client.send(message + b".\r\n")
    return client.getreply()


def test_chunk_refusal_after_the_dot(relay, upstreamCert, tenantName):
    """A BDAT chunk the upstream refuses: the rest is not sent, the refusal is the client's reply after its dot."""
    with UpstreamServer(tls=upstreamCert, extensions=("CHUNKING",)) as up:
        account = relay.addTenant(tenantName, upstreamURL(up, ca=ca(relay)))
        up.setReply("BDAT", "552 5.3.4 Enough", times=1)
        big = b"From: a@example.com\r\n\r\n" + (b"y" * 998 + b"\r\n") * 2000
        with relay.connect(account) as client:
            client.mail("a@example.com")
            client.rcpt("b@example.net")
            code, text = client.data(big)
        assert code == 552 and text.startswith(b"5.3.4 Enough (queue id ")
        assert up.messages == []


def test_smtputf8_and_dsn_passed_on(relay, upstreamCert, tenantName):
    """SMTPUTF8, RET, ENVID, NOTIFY and ORCPT reach an upstream that offers them, unchanged."""
    with UpstreamServer(tls=upstreamCert, extensions=("SMTPUTF8", "DSN")) as up:
        account = relay.addTenant(tenantName, upstreamURL(up, ca=ca(relay)))
        with relay.connect(account) as client:
            client.mail("a@example.com", ["SMTPUTF8", "RET=HDRS", "ENVID=Q1"])
            assert (
                client.rcpt("jösé@bücher.example", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@example.net"])[0] == 250
            )
            assert client.data(MESSAGE)[0] == 250
        [message] = up.waitForMessages(1)
        assert set(message.mailOptions) == {"SMTPUTF8", "RET=HDRS", "ENVID=Q1"}
        assert message.recipients == ("jösé@bücher.example",)
        assert message.rcptOptions == (("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@example.net"),)
        assert b"with UTF8SMTPSA" in message.data


def test_smtputf8_refused_towards_an_upstream_without_it(relay, upstreamCert, tenantName):
    """A UTF-8 transaction towards an upstream without SMTPUTF8: 553 5.6.7 at RCPT; DSN is dropped, the mail goes."""
    with UpstreamServer(tls=upstreamCert) as up:
        account = relay.addTenant(tenantName, upstreamURL(up, ca=ca(relay)))
        with relay.connect(account) as client:
            client.mail("a@example.com", ["SMTPUTF8"])
            assert client.rcpt("jösé@bücher.example")[:2] == (
                553,
                b"5.6.7 The upstream does not accept internationalised mail (no SMTPUTF8)",
            )
            client.rset()
            client.mail("a@example.com", ["RET=FULL"])
            assert client.rcpt("b@example.net", ["NOTIFY=NEVER"])[0] == 250
            assert client.data(MESSAGE)[0] == 250
        [message] = up.waitForMessages(1)
        assert message.mailOptions == () and message.rcptOptions == ((),)


def test_postmaster(relay, upstreamCert, tenantName):
    """RCPT TO:<postmaster> is accepted and relayed as it was written."""
    with UpstreamServer(tls=upstreamCert) as up:
        account = relay.addTenant(tenantName, upstreamURL(up, ca=ca(relay)))
        with relay.connect(account) as client:
            assert client.sendmail("a@example.com", ["postmaster"], MESSAGE) == {}
        assert up.waitForMessages(1)[0].recipients == ("postmaster",)


def test_dead_webhook_fails_over(relay, upstreamCert, tenantName):
    """A webhook that cannot be reached fails over to the next upstream, as a dead SMTP server does."""
    with UpstreamServer(tls=upstreamCert) as up:
        account = relay.addTenant(tenantName, f"http://127.0.0.1:{closedPort()}/hook", upstreamURL(up, ca=ca(relay)))
        with relay.connect(account) as client:
            assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
        assert len(up.waitForMessages(1)) == 1


def test_curl_multiple_recipients(relay, upstreamCert, tenantName, tmp_path):
    """curl's SMTP client (STARTTLS, AUTH, several recipients) relays one message to all of them."""
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed (.ci/run installs it)")
    with UpstreamServer(tls=upstreamCert) as up:
        account = relay.addTenant(tenantName, upstreamURL(up, ca=ca(relay)))
        body = tmp_path / "message.eml"
        body.write_bytes(MESSAGE)
        command = [
            "curl", "--silent", "--show-error", "--ssl-reqd", "--cacert", ca(relay),
            f"smtp://localhost:{relay.port}", "--mail-from", "a@example.com",
            "--mail-rcpt", "b@example.net", "--mail-rcpt", "c@example.net", "--mail-rcpt", "d@example.net",
            "--user", f"{account.username}:{account.password}", "--upload-file", str(body),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=60)
        [message] = up.waitForMessages(1)
        assert message.recipients == ("b@example.net", "c@example.net", "d@example.net")
        assert splitTrace(message.data)[1] == MESSAGE


def test_swaks_multiple_recipients(relay, upstreamCert, tenantName):
    """swaks with pipelining and several recipients: one message, every recipient, the upstream's 250."""
    with UpstreamServer(tls=upstreamCert) as up:
        account = relay.addTenant(tenantName, upstreamURL(up, ca=ca(relay)))
        result = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{relay.port}", "--tls", "--pipeline", "--auth", "PLAIN",
             "--auth-user", account.username, "--auth-password", account.password,
             "--from", "a@example.com", "--to", "b@example.net,c@example.net", "--h-Subject", "swaks"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        [message] = up.waitForMessages(1)
        assert message.recipients == ("b@example.net", "c@example.net")
        assert ["MAIL", "RCPT"] in up.batches(0)
